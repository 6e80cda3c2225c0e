"""The coordinator's only door for sites: it passes Flower's Fleet API and
refuses everything else.

Flower's SuperLink serves the Fleet API (``/v1/fleet/...``, what SuperNodes
speak), the Control API (``/v1/control/...``: submit runs, register node
keys, with no login in the open-source edition) and the runtime API on one
port. So the SuperLink listens on loopback only (its port closed to every
local account but the federation service's), and sites reach this proxy:
TLS with the federation's certificate, ``POST /v1/fleet/<name>`` passed to
the SuperLink unchanged (the node's signature headers included), anything
else answered 404 without reaching it.

``record``, if given, is called with (path, request body, response body)
for every exchange passed on: the tests' recording proxy is this one.
"""

from __future__ import annotations

import logging
import re
import ssl
from typing import Callable

from tornado import httpclient, httpserver, web

FLEET = re.compile(r"^/v1/fleet/[a-z][a-z0-9-]{0,63}$")
MAX_BODY = 1 << 30  # a model's weights, chunked by Flower into objects
DROP = {"host", "content-length", "connection", "transfer-encoding", "keep-alive",
        "proxy-connection", "upgrade", "te", "trailer"}


class FleetHandler(web.RequestHandler):
    def initialize(self, upstream: str, client_ssl: ssl.SSLContext,
                   record: Callable | None) -> None:
        self.upstream, self.client_ssl, self.record = upstream, client_ssl, record

    def log_exception(self, typ, value, tb):  # the error's type; no bodies, no headers
        if not isinstance(value, web.HTTPError):
            logging.getLogger("imaginghub.federation").error(
                "fleet proxy: %s on %s", typ.__name__, self.request.path[:80])

    async def post(self, _path):
        path = self.request.path
        if not FLEET.match(path) or self.request.query:
            raise web.HTTPError(404)
        headers = {k: v for k, v in self.request.headers.get_all() if k.lower() not in DROP}
        try:
            res = await httpclient.AsyncHTTPClient().fetch(
                self.upstream + path, method="POST", body=self.request.body, headers=headers,
                ssl_options=self.client_ssl, raise_error=False, request_timeout=600,
                decompress_response=False)
        except OSError:
            raise web.HTTPError(502) from None
        if self.record is not None:
            self.record(path, self.request.body, res.body or b"")
        self.set_status(res.code if res.code != 599 else 502)
        for k, v in res.headers.get_all():
            if k.lower() not in DROP and k.lower() not in ("server", "date"):
                self.set_header(k, v)
        if res.body:
            self.write(res.body)

    async def get(self, _path):
        raise web.HTTPError(404)

    put = delete = patch = head = options = get


def make_app(upstream: str, ca_file: str, record: Callable | None = None) -> web.Application:
    httpclient.AsyncHTTPClient.configure(None, max_body_size=MAX_BODY)
    client_ssl = ssl.create_default_context(cafile=ca_file)
    return web.Application([(r"(.*)", FleetHandler,
                             {"upstream": upstream.rstrip("/"), "client_ssl": client_ssl,
                              "record": record})])


def listen(app: web.Application, host: str, port: int, cert: str, key: str):
    """Serve ``app`` with TLS (certificate and key files) on host:port."""
    server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ssl.load_cert_chain(cert, key)
    server = httpserver.HTTPServer(app, ssl_options=server_ssl, max_body_size=MAX_BODY,
                                   xheaders=False)
    server.listen(port, host)
    return server


def main(argv=None) -> None:
    import argparse
    import asyncio
    import signal

    p = argparse.ArgumentParser(description="imaginghub's Fleet API proxy for sites")
    p.add_argument("--upstream", required=True, help="the SuperLink's https address")
    p.add_argument("--ca", required=True, help="the CA that signed the SuperLink's certificate")
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    a = p.parse_args(argv)

    async def serve():
        listen(make_app(a.upstream, a.ca), a.host, a.port, a.cert, a.key)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
