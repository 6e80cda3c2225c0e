"""What the data service's handlers share: the context (the archive's
client, the store, the hub's auth, the pools) and the base handler
(identity, audit, the archive's address rewritten, one error body per
status)."""

from __future__ import annotations

import base64
import logging
import re
from concurrent.futures import ThreadPoolExecutor

import httpx
from jupyterhub.services.auth import HubAuth
from tornado import web

from ..identity import Caller, Users, identify
from ..web import ServiceHandler
from . import answers
from .config import ArchiveEndpoint
from .errors import ArchiveUnreachable
from .db import Store

log = logging.getLogger("imaginghub.data")

UID = r"[0-9][0-9.]{0,63}"  # a DICOM UID: digits and dots, at most 64
NOT_FOUND = {"message": "Not Found"}
_HOST = re.compile(r"^[A-Za-z0-9.\-]+(:[0-9]{1,5})?$|^\[[0-9a-fA-F:.]+\](:[0-9]{1,5})?$")


class ArchiveTransport(httpx.AsyncHTTPTransport):
    """The archive's HTTP transport. Orthanc (CivetWeb) closes a kept-alive
    connection after a moment of idleness; a request sent just as it does is
    met by a closed socket ("Server disconnected without sending a
    response", seen here on a thumbnail's GET). A GET or HEAD is then sent
    once more, on a fresh connection; anything else is not (it may have
    been done)."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await super().handle_async_request(request)
        except httpx.RemoteProtocolError:
            if request.method not in ("GET", "HEAD"):
                raise
            log.info("the archive closed a kept-alive connection under a %s: sent again",
                     request.method)
            return await super().handle_async_request(request)


class Context:
    """What the handlers share: archive client, store, hub auth, group cache."""

    def __init__(self, endpoint: ArchiveEndpoint, store: Store, hub_auth: HubAuth,
                 cache_seconds: float = 10.0, max_stow_bytes: int = 256 * 1024**2,
                 archive_storage=None, catalog=None, thumbnails=None):
        """``endpoint``: the archive (any DICOMweb archive, or the embedded
        Orthanc with its REST root); ``archive_storage``: the embedded
        archive's storage directory when the gateway may read series from it
        (see :mod:`.storage`)."""
        self.max_stow_bytes = max_stow_bytes
        self.endpoint = endpoint
        self.dicomweb = endpoint.dicomweb.rstrip("/")  # the archive's DICOMweb root
        self.orthanc = endpoint.orthanc  # Orthanc's REST root; None: any DICOMweb archive
        self.public_prefix = "/services/data/dicom-web"  # set by make_app
        self.own_host = "127.0.0.1"
        self.archive = httpx.AsyncClient(
            auth=endpoint.auth, timeout=httpx.Timeout(120, connect=5),
            transport=ArchiveTransport(verify=endpoint.tls(),
                                       limits=httpx.Limits(max_connections=64,
                                                           max_keepalive_connections=32)))
        self.store = store
        self.hub_auth = hub_auth
        self.users = Users(hub_auth, cache_seconds)
        self.archive_basic = None
        if endpoint.auth:
            pair = ":".join(endpoint.auth).encode()
            self.archive_basic = "Basic " + base64.b64encode(pair).decode()
        # Threads that relay series answers (one per transfer in flight): the
        # default executor has only a handful on a small machine, which
        # would queue the users' downloads behind each other.
        self.relay_pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="relay")
        self.catalog = catalog
        self.catalog_sync = None  # set by the service once the feed runs
        self.thumbnails = thumbnails
        from .cohorts import Cohorts

        self.cohorts = Cohorts(store)
        # Catalog queries run here (DuckDB works in its own threads, off the loop).
        self.query_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="catalog")
        self.syntax_cache: dict[str, str] = {}  # archive instance id -> stored syntax
        self.storage = None
        if archive_storage is not None and self.orthanc:
            from .storage import StorageReader

            self.storage = StorageReader(archive_storage, self.archive, self.orthanc)


class BaseHandler(ServiceHandler):
    ctx: Context

    def initialize(self, ctx: Context):
        self.ctx = ctx
        self.caller: Caller | None = None
        self._action = ""
        self._uids: list[str] = []

    async def prepare(self):
        self.caller = await identify(self, self.ctx.users, "data")

    def error_body(self, status: int) -> dict:
        # One body per status: a forbidden UID reads exactly as an unknown one.
        return NOT_FOUND if status == 404 else super().error_body(status)

    # The archive down or gone mid-answer is a 502 that says so, not a 500.
    def log_exception(self, typ, value, tb):
        if isinstance(value, httpx.TransportError):
            value = ArchiveUnreachable(type(value).__name__)
            typ = type(value)
        super().log_exception(typ, value, tb)

    def write_error(self, status_code, **kwargs):
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, httpx.TransportError):
            unreachable = ArchiveUnreachable(type(exc).__name__)
            kwargs["exc_info"] = (type(unreachable), unreachable, None)
        super().write_error(status_code, **kwargs)

    def on_finish(self):
        user = self.caller.name if self.caller else getattr(self, "_audit_user", "-")
        projects = sorted(self.caller.projects) if self.caller else []
        action = self._action or f"{self.request.method} {type(self).__name__}"
        status = self.get_status()
        log.info("audit user=%s action=%s projects=%s uids=%s status=%d", user, action,
                 ",".join(projects), ",".join(self._uids), status)
        try:
            self.ctx.store.audit(user, action, projects, self._uids, status)
        except Exception:
            log.exception("could not write the audit entry")

    def not_found(self):
        raise web.HTTPError(404)

    async def archive_get(self, path: str, params=None, headers=None) -> httpx.Response:
        """A GET of ``path`` under the archive's DICOMweb root."""
        return await self.ctx.archive.get(f"{self.ctx.dicomweb}{path}", params=params,
                                          headers=headers)

    def rewriter(self) -> answers.Rewriter:
        """Turns the archive's address in an answer into this service's, as
        the client reached it (see :mod:`.answers`)."""
        proto = self.request.headers.get("X-Forwarded-Proto", self.request.protocol)
        proto = "https" if proto.split(",")[0].strip().lower() == "https" else "http"
        host = self.request.host
        if not _HOST.match(host or ""):
            host = self.ctx.own_host
        public = f"{proto}://{host}{self.ctx.public_prefix}"
        return answers.Rewriter(self.ctx.dicomweb.encode(), public.encode())

    def refuse(self, refused: answers.Refused):
        raise web.HTTPError(refused.status, reason=refused.reason)


def int_or_none(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
