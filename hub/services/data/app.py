"""The data service's web application: DICOMweb gateway and project API.

Every request is authenticated by JupyterHub (the caller's token, checked
through ``HubAuth`` with a short cache) and authorised by the caller's
projects: a user's JupyterHub groups ``project-NAME``; the CLI's admin
service and, when they ask with the header ``X-Imaginghub-Scope: all``,
admin users see everything. Anything outside the caller's projects answers
exactly what an unknown UID answers, without asking the archive.

The handlers live by concern: :mod:`.base` (context, base handler),
:mod:`.qido`, :mod:`.wado` with :mod:`.transfers`, :mod:`.stow_handler`
(STOW-RS) and :mod:`.api` (projects, catalog, cohorts, thumbnails); this
module puts them on their routes.
"""

from __future__ import annotations

import logging

from tornado import web

from .api import (CatalogHandler, CohortHandler, ProjectSeriesHandler, ProjectsHandler,
                  ThumbnailHandler)
from .base import UID, BaseHandler, Context
from .qido import QidoHandler
from .stow_handler import StowHandler
from .wado import SeriesHandler, StudyHandler

log = logging.getLogger("imaginghub.data")

__all__ = ["Context", "make_app"]


class DicomWebRootHandler(QidoHandler, StowHandler):
    """``/studies``: QIDO-RS search (GET) and STOW-RS (POST)."""

    async def get(self):
        await QidoHandler.get(self, "studies")

    async def post(self):
        await StowHandler.post(self)


class StudyRouteHandler(StudyHandler, StowHandler):
    """``/studies/{study}``: WADO-RS (GET) and STOW-RS into that study (POST)."""

    async def post(self, study: str, rest: str | None = None):
        if rest:
            self.not_found()
        await StowHandler.post(self, study)


class NotFoundHandler(BaseHandler):
    async def get(self, *args):
        self._action = "unknown-path"
        self.not_found()

    post = put = delete = get


def _log_request(handler: web.RequestHandler) -> None:
    """Tornado's access log without the query string: queries carry patient names."""
    r = handler.request
    log.debug("%d %s %s %.1fms", handler.get_status(), r.method, r.path,
              1000 * r.request_time())


def make_app(ctx: Context, prefix: str) -> web.Application:
    p = prefix.rstrip("/") + "/dicom-web"
    ctx.public_prefix = p
    k = {"ctx": ctx}
    api = prefix.rstrip("/") + "/api"
    return web.Application([
        (rf"{p}/studies/?", DicomWebRootHandler, k),
        (rf"{p}/(?P<level>series|instances)", QidoHandler, k),
        (rf"{p}/studies/(?P<study>{UID})/(?P<level>series|instances)", QidoHandler, k),
        (rf"{p}/studies/(?P<study>{UID})/series/(?P<series>{UID})/(?P<level>instances)",
         QidoHandler, k),
        (rf"{p}/studies/(?P<study>{UID})/series/(?P<series>{UID})"
         rf"(?P<rest>/metadata|/rendered|/thumbnail|/instances/{UID}(?:/[A-Za-z0-9/,]*)?)?",
         SeriesHandler, k),
        (rf"{p}/studies/(?P<study>{UID})(?P<rest>/metadata|/rendered)?", StudyRouteHandler, k),
        (rf"{api}/projects", ProjectsHandler, k),
        (rf"{api}/catalog/(?P<action>query|tags|import-idc|sync)", CatalogHandler, k),
        (rf"{api}/cohorts", CohortHandler, k),
        (rf"{api}/thumbnails/(?P<series>{UID})", ThumbnailHandler, k),
        (rf"{api}/cohorts/(?P<project>[a-z0-9][a-z0-9_-]{{0,62}})"
         r"/(?P<ref>[^/]{1,80})", CohortHandler, k),  # names checked by the handler
        (rf"{api}/projects/(?P<project>[a-z0-9][a-z0-9_-]{{0,62}})/series(?P<remove>/remove)?",
         ProjectSeriesHandler, k),
        (r".*", NotFoundHandler, k),
    ], log_function=_log_request)
