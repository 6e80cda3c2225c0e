"""What the services' web applications share: the base handler, which maps
the services' errors to answers once.

A handler raises a :class:`ServiceError` (or one of its subpackage's roots,
:class:`~.data.errors.DataServiceError` and
:class:`~.jobs.errors.JobServiceError`); the base handler answers its HTTP
status with ``{"message": reason}`` and logs one line, not a traceback.
tornado's own ``HTTPError`` is answered the same way; anything else is a
500 with a generic message (its traceback goes to the service's log).
"""

from __future__ import annotations

import json
import logging

from tornado import web

from ..errors import ImagingHubError

log = logging.getLogger("imaginghub.services")


class ServiceError(ImagingHubError):
    """The root of the services' errors: a reason meant for the caller, and
    the HTTP status it is answered with (``status``, per class or per
    error)."""

    status = 500

    def __init__(self, reason: str, status: int | None = None):
        super().__init__(reason)
        self.reason = reason
        if status is not None:
            self.status = status


class ServiceHandler(web.RequestHandler):
    """The services' base handler: no Server header, errors as JSON."""

    def set_default_headers(self):
        self.clear_header("Server")

    def body(self) -> dict:
        """The request's JSON object, or 400 saying what it is not."""
        try:
            value = json.loads(self.request.body or b"{}")
        except ValueError:
            raise web.HTTPError(400, reason="the body must be JSON") from None
        if not isinstance(value, dict):
            raise web.HTTPError(400, reason="the body must be a JSON object")
        return value

    def send(self, value, status: int = 200):
        """Answer ``value`` as JSON."""
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(value))

    def error_body(self, status: int) -> dict:
        """The body of an error answer (the data service answers one body per
        status, so a forbidden UID reads exactly as an unknown one)."""
        return {"message": self._reason}

    def write_error(self, status_code, **kwargs):
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ServiceError):
            self.set_status(exc.status, reason=_phrase(exc.reason))
            status_code = exc.status
        elif status_code >= 500 and not isinstance(exc, web.HTTPError):
            self.set_status(status_code, reason="the service failed; its log says why")
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(self.error_body(status_code)))

    def log_exception(self, typ, value, tb):
        if isinstance(value, ServiceError):
            log.info("%s %s: %d %s", self.request.method, self.request.path, value.status,
                     value.reason)
            return
        super().log_exception(typ, value, tb)


def _phrase(reason: str) -> str:
    """An HTTP reason phrase: one line of Latin-1."""
    line = " ".join(reason.split())
    return line.encode("latin-1", "replace").decode("latin-1")


def api_routes(prefix: str, routes: list[tuple[str, type]], ctx, not_found: type) -> list:
    """A service's routes: each ``(path, handler)`` at ``PREFIX/api/PATH``
    (``path`` a regular expression), then ``not_found`` for the rest of
    ``PREFIX``; every handler is given ``ctx``."""
    api, kwargs = prefix.rstrip("/") + "/api", {"ctx": ctx}
    return [*((f"{api}/{path}", handler, kwargs) for path, handler in routes),
            (rf"{prefix.rstrip('/')}/(.*)", not_found, kwargs)]


class ThreadedServer:
    """A web application served on loopback in a thread of its own (with
    its own event loop), next to a foreground command's other work: the
    federation's APIs, which ``coordinator start`` and ``site start`` serve
    for as long as they run. ``make_context()`` and ``make_app(context)``
    are called in that thread (an error there, the port taken, ... is
    raised here); the context's ``aclose()``, when it has one, is awaited
    there once the server stops."""

    def __init__(self, make_context, make_app, port: int, name: str):
        import asyncio
        import threading

        self.port = port
        self._make_context, self._make_app = make_context, make_app
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        import asyncio

        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            ctx = self._make_context()
            server = self._make_app(ctx).listen(self.port, address="127.0.0.1")
        except BaseException as e:  # said to the caller
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            server.stop()
            close = getattr(ctx, "aclose", None)
            if close is not None:
                loop.run_until_complete(close())
            loop.close()

    def stop(self) -> None:
        if self._loop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
