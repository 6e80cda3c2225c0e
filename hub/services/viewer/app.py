"""The viewer service's web application.

- ``/services/viewer/...``: the OHIF app's ``index.html`` for every path
  (the app routes in the browser), once the user is logged in with the hub's
  OAuth (HubOAuth, its cookie scoped to this path).
- The app's own files at the site's root paths (``/app.bundle.*.js``,
  ``/assets/``, ...: it was built for the public path ``/``), routed here by
  the hub's proxy; they are the public app, no data. ``/app-config.js`` is
  made here (:mod:`.app_config`).
- ``/services/viewer/dicom-web/s/XSRF/...`` (and a cohort's
  ``/services/viewer/cohorts/P/NAME/dicom-web/s/XSRF/...``): the app's
  DICOMweb requests, forwarded to the data service with the user's OAuth
  token. XSRF is the page's XSRF token: the request is the user's only with
  the cookie and the token together (JupyterHub's own check), so a script
  of another page of the hub's origin cannot read through the viewer.

Why forward, not a token for the data service in the browser: the
browser's cookie is scoped to this path and holds a token that the data
service checks exactly as a kernel's (the user, their projects), so the app
sees what the user's code sees and nothing is added to the data service;
the token never reaches the page's JavaScript, and only GET passes (the
viewer reads; STOW is refused here with a 405 saying where to store).
"""

from __future__ import annotations

import json
import os
import logging
import re
from pathlib import Path
from urllib.parse import quote

import httpx
from jupyterhub.services.auth import HubOAuth, HubOAuthCallbackHandler, HubOAuthenticated
from tornado import web
from tornado.iostream import StreamClosedError

from ..data import answers
from ..web import ServiceHandler
from .app_config import COHORT_PATH, app_config_js
from .config import PREFIX

log = logging.getLogger("imaginghub.viewer")

# Headers of the data service's answers that the browser gets.
PASSED = ("Content-Type", "Content-Length", "Content-Location", "ETag", "Last-Modified",
          "Cache-Control", "Content-Disposition")
# What the page may load and talk to: this origin only. Inline scripts and
# eval are the app's own (its index.html, its WebAssembly codecs).
CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline' 'unsafe-eval' blob:; "
       "worker-src 'self' blob:; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self' data: blob:; "
       "media-src 'self' blob:; object-src 'none'; frame-ancestors 'self'; base-uri 'self'")
MAX_COHORT_PAGES = 50  # 50 x 1000 series: the largest cohort the data service keeps


class Context:
    """What the handlers share: the app's files, the data service's address."""

    def __init__(self, app_dir: Path, data_url: str, hub_auth: HubOAuth, title: str):
        self.app_dir = app_dir
        self.data_url = data_url.rstrip("/")  # .../services/data
        self.hub_auth = hub_auth
        self.title = title
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(300, connect=10))
        index = app_dir / "index.html"
        self.index = index.read_bytes() if index.is_file() else None


class ViewerHandler(HubOAuthenticated, ServiceHandler):
    def initialize(self, ctx: Context):
        self.ctx = ctx

    def set_default_headers(self):
        super().set_default_headers()
        self.set_header("Content-Security-Policy", CSP)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "same-origin")


class PageHandler(ViewerHandler):
    """The app's page, for any path under the prefix (its router's)."""

    @web.authenticated
    def get(self, path: str = ""):
        self.xsrf_token  # sets the _xsrf cookie the app's configuration reads
        self.set_header("Cache-Control", "no-store")
        if self.ctx.index is None:
            self.set_status(503)
            self.set_header("Content-Type", "text/plain; charset=utf-8")
            self.finish(f"The OHIF viewer app is not installed in {self.ctx.app_dir}: run "
                        "'make setup' in imaginghub's checkout (it fetches the app once from "
                        "the npm registry), or set c.ViewerService.app_dir.\n")
            return
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(self.ctx.index)


class AppConfigHandler(ViewerHandler):
    def get(self):
        self.set_header("Content-Type", "application/javascript; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.finish(app_config_js(self.ctx.title))


class AppFileHandler(web.StaticFileHandler):
    """The app's files at the root paths it was built for (no data in them)."""

    def set_default_headers(self):
        self.clear_header("Server")
        self.set_header("X-Content-Type-Options", "nosniff")

    def set_extra_headers(self, path):
        if re.search(r"\.[0-9a-f]{16}\.(js|wasm|woff2)$|^[0-9a-f]{16}\.(wasm|woff2)$", path):
            self.set_header("Cache-Control", "public, max-age=31536000, immutable")
        else:
            self.set_header("Cache-Control", "no-cache")


class DicomWebHandler(ViewerHandler):
    """The app's DICOMweb requests, to the data service as the user."""

    def _token(self, xsrf: str) -> str:
        # JupyterHub's XSRF check reads the header; the app sends it in the path
        self.request.headers["X-XSRFToken"] = xsrf
        if not self.current_user:
            raise web.HTTPError(401, reason="log in to the hub: open /services/viewer/")
        return self.ctx.hub_auth.get_token(self)

    async def get(self, project: str | None, ref: str | None, xsrf: str, rest: str):
        token = self._token(xsrf)
        proto = "https" if self.request.headers.get(
            "X-Forwarded-Proto", self.request.protocol).split(",")[0].strip() == "https" \
            else "http"
        host = self.request.host
        headers = {"Authorization": f"token {token}", "Host": host, "X-Forwarded-Proto": proto,
                   "Accept": self.request.headers.get("Accept", "*/*")}
        public = f"{proto}://{host}"
        rewriter = answers.Rewriter(f"{public}/services/data/dicom-web".encode(),
                                    f"{public}{PREFIX}/dicom-web/s/{quote(xsrf, safe='')}".encode())
        if project is not None and rest.rstrip("/") == "studies":
            return await self._cohort_studies(project, ref, headers, rewriter)
        url = f"{self.ctx.data_url}/dicom-web/{quote(rest, safe='/,')}"
        if self.request.query:
            url += "?" + self.request.query
        try:
            async with self.ctx.http.stream("GET", url, headers=headers) as r:
                self.set_status(r.status_code)
                kind = r.headers.get("Content-Type", "")
                if "json" in kind:  # metadata, searches: their addresses become ours
                    body = rewriter.all(await r.aread())
                    self._pass_headers(r, skip=("Content-Length",))
                    self.finish(body)
                    return
                self._pass_headers(r)
                async for chunk in r.aiter_raw():
                    self.write(chunk)
                    await self.flush()
                self.finish()
        except httpx.TransportError:
            if self._headers_written:
                raise  # cut off in the middle: the browser sees a broken answer
            raise web.HTTPError(503, reason="the data service did not answer: try again, "
                                            "or ask the site's admin") from None
        except StreamClosedError:
            pass  # the browser went away (a scrolled-past frame)

    def _pass_headers(self, r: httpx.Response, skip=()):
        for name in PASSED:
            if name in r.headers and name not in skip:
                self.set_header(name, r.headers[name])

    async def _cohort_studies(self, project: str, ref: str, headers: dict, rewriter):
        """A study search within a cohort: the data service's answer (the
        user's projects) kept to the studies of the cohort's series."""
        studies = await self._cohort_study_uids(project, ref, headers)
        args = [(k, v) for k, vs in self.request.query_arguments.items()
                for v in (x.decode() for x in vs) if k not in ("limit", "offset")]
        r = await self.ctx.http.get(f"{self.ctx.data_url}/dicom-web/studies",
                                    params=args, headers=headers)
        if r.status_code != 200:
            self.set_status(r.status_code)
            self._pass_headers(r)
            self.finish(r.content)
            return
        records = [rec for rec in json.loads(rewriter.all(r.content))
                   if (rec.get("0020000D", {}).get("Value") or [None])[0] in studies]
        offset, limit = self.get_argument("offset", "0"), self.get_argument("limit", "")
        offset = int(offset) if offset.isdigit() else 0
        end = offset + int(limit) if limit.isdigit() and int(limit) else None
        self.set_header("Content-Type", "application/dicom+json")
        self.finish(json.dumps(records[offset:end]))

    async def _cohort_study_uids(self, project: str, ref: str, headers: dict) -> set[str]:
        api = f"{self.ctx.data_url}/api"
        auth = {"Authorization": headers["Authorization"]}
        r = await self.ctx.http.get(f"{api}/cohorts/{project}/{quote(ref, safe='@')}",
                                    headers=auth)
        if r.status_code != 200:
            raise web.HTTPError(404, reason=f"no cohort {project}/{ref} that you may see")
        series = r.json()["series"]
        studies: set[str] = set()
        for start in range(0, min(len(series), 1000 * MAX_COHORT_PAGES), 1000):
            page = await self.ctx.http.post(f"{api}/catalog/query", headers=auth, json={
                "filters": {"series_uid": series[start:start + 1000]}, "limit": 1000})
            page.raise_for_status()
            studies.update(row["study_uid"] for row in page.json()["rows"])
        return studies

    async def _refuse(self, *args):
        raise web.HTTPError(405, reason="the viewer only reads: store DICOM with pacs.store "
                                        "in a notebook, or 'imaginghub ingest'")

    post = put = delete = patch = _refuse


def make_app(ctx: Context) -> web.Application:
    p = PREFIX
    k = {"ctx": ctx}
    cohort = rf"(?:/{COHORT_PATH})?"
    names = "|".join(re.escape(n) for n in _root_names(ctx.app_dir))
    routes = [
        (rf"{p}/oauth_callback", HubOAuthCallbackHandler),
        (rf"{p}{cohort}/dicom-web/s/([^/]+)/(.*)", DicomWebHandler, k),
        (r"/app-config\.js", AppConfigHandler, k),
        (rf"{p}/?(.*)", PageHandler, k),
    ]
    if names:
        routes.insert(-1, (rf"/((?:{names})(?:/.*)?)", AppFileHandler,
                           {"path": str(ctx.app_dir)}))
    return web.Application(routes, hub_auth=ctx.hub_auth, cookie_secret=os.urandom(32),
                           log_function=_log_request)


def _root_names(app_dir: Path) -> list[str]:
    from .config import root_entries

    return [n for n in root_entries(app_dir) if n != "app-config.js"]


def _log_request(handler: web.RequestHandler) -> None:
    """Access lines without query strings (searches carry patient names) and
    without XSRF tokens."""
    r = handler.request
    path = re.sub(r"/dicom-web/s/[^/]+", "/dicom-web/s/...", r.path)
    log.debug("%d %s %s %.1fms", handler.get_status(), r.method, path,
              1000 * r.request_time())
