"""Zero-copy relay of an archive answer to a client socket (Linux splice).

Used for the gateway's hot path, WADO-RS answers that the archive delimits by
closing the connection: after the gateway has checked the caller and the
archive's status line, the bytes go from one socket to the other through a
pipe in the kernel, in a worker thread, never through Python buffers.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
from urllib.parse import urlsplit

log = logging.getLogger("imaginghub.data")

CHUNK = 1 << 20


def open_get(base_url: str, target: str, headers: dict, authorization: str | None):
    """Send a GET of ``target`` (a path with its query) to the plain-HTTP
    archive at ``base_url`` on a blocking socket and read its header.
    Returns (socket, status, lower-cased headers, body bytes already read)."""
    u = urlsplit(base_url)
    sock = socket.create_connection((u.hostname, u.port or 80), timeout=5)
    try:
        sock.settimeout(300)
        lines = [f"GET {target} HTTP/1.1", f"Host: {u.netloc.rpartition('@')[2]}",
                 "Connection: close"]
        if authorization:
            lines.append(f"Authorization: {authorization}")
        lines += [f"{k}: {v}" for k, v in headers.items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("the archive closed the connection")
            data += chunk
            if len(data) > 1 << 20:
                raise ConnectionError("the archive's header is too long")
        head, _, leftover = data.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split()[1])
        headers_out = {}
        for line in header_lines:
            k, _, v = line.partition(":")
            headers_out[k.strip().lower()] = v.strip()
        return sock, status, headers_out, leftover
    except BaseException:
        sock.close()
        raise


def body_length(headers: dict) -> int | None:
    """The answer's length: a number, -1 when the archive closes the
    connection to end it, None when it is chunked."""
    if "transfer-encoding" in headers:
        return None
    length = headers.get("content-length")
    return int(length) if length is not None else -1


def read_body(sock: socket.socket, first: bytes, length: int) -> bytes:
    """The rest of an answer of ``length`` bytes (-1: until the archive
    closes); closes the socket."""
    try:
        parts, have = [first], len(first)
        while length < 0 or have < length:
            chunk = sock.recv(CHUNK if length < 0 else min(CHUNK, length - have))
            if not chunk:
                if length < 0:
                    break
                raise ConnectionError("the archive closed the connection mid-answer")
            parts.append(chunk)
            have += len(chunk)
        body = b"".join(parts)
        return body if length < 0 else body[:length]
    finally:
        sock.close()


def relay(src: socket.socket, dst_fd: int, first: bytes, length: int = -1) -> int:
    """Write ``first`` then what ``src`` sends to ``dst_fd``, ``length`` bytes
    in all (``first`` included) or, for -1, until the archive closes; returns
    the bytes relayed. Closes both."""
    src.settimeout(None)  # a socket with a timeout is non-blocking underneath
    os.set_blocking(dst_fd, True)
    dst = socket.socket(fileno=dst_fd)
    total = 0
    r, w = os.pipe()
    try:
        try:  # a 64 KiB pipe would cut the stream into small bursts
            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, CHUNK)
        except OSError:
            pass
        dst.sendall(first)
        total += len(first)
        flags = os.SPLICE_F_MOVE | os.SPLICE_F_MORE
        while length < 0 or total < length:
            want = CHUNK if length < 0 else min(CHUNK, length - total)
            n = os.splice(src.fileno(), w, want, flags=flags)
            if n == 0:
                break
            total += n
            while n:
                n -= os.splice(r, dst_fd, n, flags=flags)
    except OSError as e:  # the client went away, or the archive broke off
        log.info("relay stopped after %d bytes (%s)", total, type(e).__name__)
    finally:
        os.close(r)
        os.close(w)
        src.close()
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        dst.close()
    return total
