"""The data service's client of the archive sends a GET once more when the
archive closed the kept-alive connection under it (Orthanc's web server does
so after a moment of idleness; a request sent just then gets no answer).
The server here answers the first request of each connection and closes the
connection on the second without a word: the race, made certain."""

from __future__ import annotations

import asyncio
import socket
import threading

import httpx
import pytest

from imaginghub.hub.services.data.base import ArchiveTransport


@pytest.fixture
def closing_server():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    counts = {"connections": 0}

    def serve(conn):
        with conn:
            for n in range(2):
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                if n == 1:
                    return  # the second request on this connection: closed, unanswered
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
                             b"Connection: keep-alive\r\n\r\nok")

    def accept():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            counts["connections"] += 1
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}", counts
    listener.close()


def two(url: str, transport, method: str = "GET"):
    async def go():
        async with httpx.AsyncClient(transport=transport, timeout=10) as client:
            first = await client.request(method, f"{url}/a")
            second = await client.request(method, f"{url}/b")
            return first.text, second.text
    return asyncio.run(go())


def test_a_get_is_sent_again_on_a_fresh_connection(closing_server):
    url, counts = closing_server
    with pytest.raises(httpx.RemoteProtocolError):  # what a plain client meets
        two(url, httpx.AsyncHTTPTransport())
    counts["connections"] = 0
    assert two(url, ArchiveTransport()) == ("ok", "ok")
    assert counts["connections"] == 2


def test_anything_but_get_is_not(closing_server):
    url, _ = closing_server
    with pytest.raises(httpx.RemoteProtocolError):
        two(url, ArchiveTransport(), method="POST")
