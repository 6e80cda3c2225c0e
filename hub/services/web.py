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
