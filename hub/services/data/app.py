"""The data service's web application: DICOMweb gateway and project API.

Every request is authenticated by JupyterHub (the caller's token, checked
through ``HubAuth`` with a short cache) and authorised by the caller's
projects: a user's JupyterHub groups ``project-NAME``; the CLI's admin
service and, when they ask with the header ``X-Imaginghub-Scope: all``,
admin users see everything. Anything outside the caller's projects answers
exactly what an unknown UID answers, without asking the archive.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlencode

import httpx
from jupyterhub.services.auth import HubAuth
from tornado import web

from ....kernels.query import archive_filters, keep
from ..identity import Caller, Users, identify
from ..web import ServiceHandler
from . import answers, splice
from .db import Store
from .errors import CohortError

log = logging.getLogger("imaginghub.data")

UID = r"[0-9][0-9.]{0,63}"  # a DICOM UID: digits and dots, at most 64
NOT_FOUND = {"message": "Not Found"}
# QIDO attributes that would count what the caller may not see
_STUDY_COUNTS = ("00201206", "00201208", "00080061")  # series, instances, modalities
SMALL_ANSWER = 8 * 1024**2  # answers up to this size are read, larger ones spliced
_PASS_HEADERS = ("content-type", "content-length", "content-location", "etag", "last-modified")
_HOST = re.compile(r"^[A-Za-z0-9.\-]+(:[0-9]{1,5})?$|^\[[0-9a-fA-F:.]+\](:[0-9]{1,5})?$")
# WADO-RS paths answered with DICOM files as stored (no addresses inside):
# these may be relayed unread.
_BINARY = re.compile(r"^(/instances/[0-9.]+)?$")
_FRAMES = re.compile(r"^/instances/(?P<sop>[0-9.]+)/frames/[0-9,]+$")


class Context:
    """What the handlers share: archive client, store, hub auth, group cache."""

    def __init__(self, archive_url: str, archive_auth, store: Store, hub_auth: HubAuth,
                 cache_seconds: float = 10.0, max_stow_bytes: int = 256 * 1024**2,
                 archive_storage=None, catalog=None, thumbnails=None):
        """``archive_storage``: the archive's storage directory when the
        gateway may read series from it (see :mod:`.storage`)."""
        self.max_stow_bytes = max_stow_bytes
        self.archive_url = archive_url.rstrip("/")
        self.public_prefix = "/services/data/dicom-web"  # set by make_app
        self.own_host = "127.0.0.1"
        self.archive = httpx.AsyncClient(
            auth=archive_auth, timeout=httpx.Timeout(120, connect=5),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32))
        self.store = store
        self.hub_auth = hub_auth
        self.users = Users(hub_auth, cache_seconds)
        user, password = archive_auth
        self.archive_basic = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
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
        if archive_storage is not None:
            from .storage import StorageReader

            self.storage = StorageReader(archive_storage, self.archive, self.archive_url)


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
        return await self.ctx.archive.get(f"{self.ctx.archive_url}{path}", params=params,
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
        return answers.Rewriter((self.ctx.archive_url + "/dicom-web").encode(), public.encode())

    def refuse(self, refused: answers.Refused):
        raise web.HTTPError(refused.status, reason=refused.reason)


class QidoHandler(BaseHandler):
    """QIDO-RS at any level; results filtered to the caller's projects."""

    async def get(self, level: str, study: str | None = None, series: str | None = None):
        self._action = f"qido-{level}"
        self._uids = [u for u in (study, series) if u]
        scope = self.caller.scope
        if scope is not None:
            if series and not self.ctx.store.is_visible(scope, study, series):
                return self._json([])
            if study and not series and not self.ctx.store.series_of_study(scope, study):
                return self._json([])
        params = {k: self.get_arguments(k) for k in self.request.arguments}
        limit = _int(params.pop("limit", [None])[0])
        offset = _int(params.pop("offset", [None])[0]) or 0
        filters = {k: v[-1] for k, v in params.items()
                   if k not in ("includefield", "fuzzymatching")}
        sent, exact = archive_filters(filters)
        query = [(k, v) for k, v in (sent or {}).items()]
        query += [("includefield", v) for v in params.get("includefield", [])]
        if level in ("series", "instances") and scope is not None:
            query.append(("includefield", "0020000E"))
        path = self.request.path.split("/dicom-web", 1)[1]
        r = await self.ctx.archive.get(
            f"{self.ctx.archive_url}/dicom-web{path}?{urlencode(query, safe='*?,')}",
            headers={"Accept": "application/dicom+json"})
        if r.status_code == 204 or not r.content:
            return self._json([])
        if r.status_code != 200:
            self.refuse(answers.archive_error(r.status_code))
        found = json.loads(self.rewriter().all(r.content))
        records = [rec for rec in found if keep(rec, exact)] if exact else found
        if scope is not None:
            records = self._visible(level, records, scope)
        end = offset + limit if limit else None
        self._json(records[offset:end])

    def _visible(self, level: str, records: list[dict], scope: set[str]) -> list[dict]:
        store = self.ctx.store
        if level == "studies":
            counts = store.visible_studies(scope, (_v(r, "0020000D") for r in records))
            out = []
            for rec in records:
                study = _v(rec, "0020000D")
                if study not in counts:
                    continue
                if counts[study] != _int(_v(rec, "00201206")):
                    for tag in _STUDY_COUNTS:  # would reveal series outside the projects
                        rec.pop(tag, None)
                out.append(rec)
            return out
        visible = store.visible_series(scope, (_v(r, "0020000E") for r in records))
        return [rec for rec in records if _v(rec, "0020000E") in visible]

    def _json(self, records):
        self.set_header("Content-Type", "application/dicom+json")
        self.finish(json.dumps(records))


class SeriesHandler(BaseHandler):
    """WADO-RS at series level and below: streamed from the archive when the
    series is in one of the caller's projects, 404 otherwise. The archive's
    address in an answer becomes this service's, its errors a short reason,
    and a transfer syntax it cannot safely produce a 406 (see :mod:`.answers`)."""

    async def get(self, study: str, series: str, rest: str | None = None):
        rest = rest or ""
        words = [w for w in (rest or "").split("/") if w and not w[0].isdigit()]
        self._action = "-".join(["wado-series", *words])
        self._uids = [study, series]
        scope = self.caller.scope
        if scope is not None and not self.ctx.store.is_visible(scope, study, series):
            self.not_found()
        accept = self.request.headers.get("Accept", "")
        frames = _FRAMES.match(rest)
        if _BINARY.match(rest) or frames:
            sop = frames.group("sop") if frames else rest.rsplit("/", 1)[-1] or None
            query = {"StudyInstanceUID": study, "SeriesInstanceUID": series,
                     **({"SOPInstanceUID": sop} if sop else {})}
            plan, instances = await self.plan(accept, [query], frames=bool(frames))
            if plan.convert:
                if frames:
                    numbers = [int(n) for n in rest.rsplit("/", 1)[-1].split(",") if n]
                    return await self.send_frames(instances, numbers, study, series, sop)
                return await self.send_converted(instances, plan.target)
            accept = plan.accept
        elif "/bulk/" in rest:
            accept = answers.bulk_accept(accept)
        if not rest and await self._from_storage(study, series, accept):
            return
        await self.stream(f"/dicom-web/studies/{study}/series/{series}{rest}", accept,
                          binary=bool(_BINARY.match(rest)))

    # -- transfer syntaxes (see answers.plan and transcode) ---------------------------
    async def instances(self, queries: list[dict]) -> list[tuple[str, str]]:
        """(archive id, stored transfer syntax) of the instances matching any
        of ``queries``, in instance number order (syntaxes cached per id:
        a stored instance never changes)."""
        found = []
        for query in queries:
            r = await self.ctx.archive.post(f"{self.ctx.archive_url}/tools/find",
                                            json={"Level": "Instance", "Query": query,
                                                  "Expand": True})
            hits = r.json() if r.status_code == 200 else []
            hits.sort(key=lambda h: _int(h.get("MainDicomTags", {}).get("InstanceNumber"))
                      or 0)
            found += [h["ID"] for h in hits]
        cache = self.ctx.syntax_cache
        gate = asyncio.Semaphore(16)

        async def one(instance: str) -> None:
            async with gate:
                m = await self.archive_get(f"/instances/{instance}/metadata/TransferSyntax")
            if m.status_code == 200:
                cache[instance] = m.text.strip()

        await asyncio.gather(*(one(i) for i in found if i not in cache))
        if len(cache) > 500_000:
            cache.clear()
        return [(i, cache.get(i, "")) for i in found]

    async def plan(self, accept: str, queries: list[dict], *, frames: bool = False):
        """(answers.Plan, instances) for a retrieve of what ``queries`` match;
        a 406 when the syntax asked for cannot be had."""
        if answers.asked(accept).as_stored:
            return answers.Plan(accept), []
        instances = await self.instances(queries)
        try:
            return answers.plan(accept, {ts for _, ts in instances}, frames=frames), instances
        except answers.Refused as e:
            self.refuse(e)

    async def _archive_file(self, instance: str) -> bytes:
        r = await self.archive_get(f"/instances/{instance}/file")
        if r.status_code != 200:
            self.refuse(answers.archive_error(r.status_code))
        return r.content

    async def send_converted(self, instances: list[tuple[str, str]], target: str) -> None:
        """The instances, converted by the service to the uncompressed syntax
        ``target``, as one multipart answer (a few at a time, on the workers)."""
        from . import transcode

        if not instances:
            self.not_found()
        loop = asyncio.get_running_loop()
        boundary = uuid.uuid4().hex
        window = 4
        started = False
        for i in range(0, len(instances), window):
            batch = instances[i:i + window]
            files = await asyncio.gather(*(self._archive_file(a) for a, _ in batch))
            try:
                done = await asyncio.gather(*(
                    loop.run_in_executor(transcode.pool(), transcode.convert, data, target)
                    for data in files))
            except Exception as e:
                if started:  # cut off: a client must not take it for the whole answer
                    self.request.connection.close()
                    return
                raise web.HTTPError(406, reason=(
                    f"an instance cannot be converted to {answers.name(target)} ({e}); ask "
                    "for transfer-syntax=* (as stored)")) from None
            if not started:
                self.set_header("Content-Type", 'multipart/related; type="application/dicom";'
                                f" boundary={boundary}")
                started = True
            for data in done:
                self.write(f"--{boundary}\r\nContent-Type: application/dicom; "
                           f"transfer-syntax={target}\r\nContent-Length: {len(data)}"
                           "\r\n\r\n".encode())
                self.write(data)
                self.write(b"\r\n")
            await self.flush()
        self.finish(f"--{boundary}--\r\n".encode())

    async def send_frames(self, instances, numbers, study, series, sop) -> None:
        """Frames of a compressed instance, decoded by the service, as
        uncompressed little-endian pixels."""
        from . import transcode

        if not instances:
            self.not_found()
        data = await self._archive_file(instances[0][0])
        try:
            pixels = await asyncio.get_running_loop().run_in_executor(
                transcode.pool(), transcode.frames, data, numbers)
        except IndexError as e:
            raise web.HTTPError(404, reason=str(e)) from None
        except Exception as e:
            raise web.HTTPError(406, reason=(
                f"these frames cannot be decoded ({type(e).__name__}); ask for "
                "transfer-syntax=* (as stored)")) from None
        boundary = uuid.uuid4().hex
        ts = answers.EXPLICIT_LE
        self.set_header("Content-Type", 'multipart/related; type="application/octet-stream"; '
                        f"transfer-syntax={ts}; boundary={boundary}")
        base = self.rewriter().new.decode()
        for n, frame in zip(numbers, pixels):
            location = f"{base}/studies/{study}/series/{series}/instances/{sop}/frames/{n}"
            self.write(f"--{boundary}\r\nContent-Type: application/octet-stream; "
                       f"transfer-syntax={ts}\r\nContent-Location: {location}\r\n"
                       f"Content-Length: {len(frame)}\r\n\r\n".encode())
            self.write(frame)
            self.write(b"\r\n")
        self.finish(f"--{boundary}--\r\n".encode())

    async def _from_storage(self, study: str, series: str, accept: str) -> bool:
        """Answer a whole series in its stored transfer syntax from the
        archive's files (see :mod:`.storage`); False when that does not apply."""
        from . import storage

        reader = self.ctx.storage
        accept = accept.replace(" ", "").replace('"', "").lower()
        if (reader is None or "range" in self.request.headers or self.request.query
                or accept != "multipart/related;type=application/dicom;transfer-syntax=*"):
            return False
        paths = await reader.series_files(series)
        if not paths:
            return False
        # The stored files name the answer: a kernel that has this series in
        # its cache asks with If-None-Match and gets a 304 in a few ms.
        etag = storage.etag(paths)
        if etag in [t.strip() for t in self.request.headers.get("If-None-Match", "").split(",")]:
            self._action = "wado-series-unchanged"
            self.set_status(304)
            self.set_header("ETag", etag)
            self.finish()
            return True
        loop = asyncio.get_running_loop()
        opened = await loop.run_in_executor(self.ctx.relay_pool, storage.open_all, paths)
        if opened is None:
            return False
        client_fd = os.dup(self.request.connection.stream.socket.fileno())
        self.detach().close()
        self.on_finish()  # the audit entry: tornado will not call it now
        await loop.run_in_executor(self.ctx.relay_pool, storage.send_series, client_fd, opened,
                                   etag)
        return True

    def _archive_headers(self, accept: str) -> dict:
        headers = {"Accept": accept} if accept else {}
        if "range" in self.request.headers:
            headers["Range"] = self.request.headers["range"]
        return headers

    def _passed_headers(self, rheaders: dict, rewriter: answers.Rewriter) -> dict:
        return {k: (rewriter.all(v.encode("latin-1")).decode("latin-1")
                    if k == "content-location" else v)
                for k, v in rheaders.items() if k in _PASS_HEADERS}

    async def stream(self, path: str, accept: str, *, binary: bool = False):
        """Forward the archive's answer. A large 200 of DICOM files (a series,
        a study, an instance: ``binary``; they carry no addresses) is handed
        over in the kernel: the client's socket is detached from tornado and
        the archive's bytes are spliced into it (no copy through Python: the
        gateway's CPU per series load drops from about 0.35 s to a few ms). A
        small answer of known length (metadata, a frame, an error) is read,
        its addresses rewritten, and answered on the kept-alive connection.
        Other large or chunked answers are streamed through httpx, rewritten
        as they pass."""
        headers = self._archive_headers(accept)
        query = self.request.query
        target = f"/{path.lstrip('/')}" + (f"?{query}" if query else "")
        loop = asyncio.get_running_loop()
        pool = self.ctx.relay_pool
        try:
            sock, status, rheaders, leftover = await loop.run_in_executor(
                pool, splice.open_get, self.ctx.archive_url, target, headers,
                self.ctx.archive_basic)
        except OSError:
            raise web.HTTPError(502, reason="the archive did not answer") from None
        length = splice.body_length(rheaders)
        if status >= 400 or length is None or (
                not binary and (length < 0 or length > SMALL_ANSWER)):
            sock.close()
            if status == 404:
                self.not_found()
            if status >= 400:
                self.refuse(answers.archive_error(status))
            return await self._stream_httpx(path, headers, rewrite=not binary)
        rewriter = self.rewriter()
        passed = self._passed_headers(rheaders, rewriter)
        if status == 200 and (length < 0 or length > SMALL_ANSWER):
            head = "HTTP/1.1 200 OK\r\n" + "".join(
                f"{k}: {v}\r\n" for k, v in passed.items()) + "Connection: close\r\n\r\n"
            client_fd = os.dup(self.request.connection.stream.socket.fileno())
            self.detach().close()
            self.on_finish()  # the audit entry: tornado will not call it now
            await loop.run_in_executor(pool, splice.relay, sock, client_fd,
                                       head.encode("latin-1") + leftover,
                                       length if length < 0 else len(head) + length)
            return
        try:
            body = await loop.run_in_executor(pool, splice.read_body, sock, leftover, length)
        except OSError:
            raise web.HTTPError(502, reason="the archive broke off its answer") from None
        self.set_status(status)
        for k, v in passed.items():
            if k != "content-length":
                self.set_header(k, v)
        self.finish(body if binary else rewriter.all(body))

    async def _stream_httpx(self, path: str, headers: dict, *, rewrite: bool = True):
        query = self.request.query
        url = f"{self.ctx.archive_url}{path}" + (f"?{query}" if query else "")
        request = self.ctx.archive.build_request("GET", url, headers=headers)
        r = await self.ctx.archive.send(request, stream=True)
        rewriter = self.rewriter()
        try:
            if r.status_code == 404:
                self.not_found()
            if r.status_code >= 400:
                self.refuse(answers.archive_error(r.status_code))
            self.set_status(r.status_code)
            for k, v in self._passed_headers({k.lower(): v for k, v in r.headers.items()},
                                   rewriter).items():
                if not (rewrite and k == "content-length"):
                    self.set_header(k, v)
            # Forward as it comes, flushing every few MB: memory stays bounded
            # (the client's pace holds the archive back) without a flush per
            # small network read.
            pending = 0
            async for chunk in r.aiter_raw(1 << 20):
                self.write(rewriter.feed(chunk) if rewrite else chunk)
                pending += len(chunk)
                if pending >= 4 << 20:
                    await self.flush()
                    pending = 0
            if rewrite:
                self.write(rewriter.close())
        finally:
            await r.aclose()


class StudyHandler(SeriesHandler):
    """WADO-RS at study level: the whole study when every series in it is
    visible, otherwise only the visible series."""

    async def get(self, study: str, rest: str | None = None):
        rest = rest or ""
        self._action = "wado-study" + (f"-{rest.strip('/')}" if rest else "")
        self._uids = [study]
        scope = self.caller.scope
        accept = self.request.headers.get("Accept", "")
        visible = None if scope is None else self.ctx.store.series_of_study(scope, study)
        if visible is not None and not visible:
            self.not_found()
        if not rest:
            queries = ([{"StudyInstanceUID": study}] if visible is None else
                       [{"StudyInstanceUID": study, "SeriesInstanceUID": s} for s in visible])
            plan, instances = await self.plan(accept, queries)
            if plan.convert:
                return await self.send_converted(instances, plan.target)
            accept = plan.accept
        if scope is None:
            return await self.stream(f"/dicom-web/studies/{study}{rest}", accept,
                                     binary=not rest)
        r = await self.archive_get(f"/dicom-web/studies/{study}/series",
                                   headers={"Accept": "application/dicom+json"})
        in_archive = {_v(rec, "0020000E") for rec in (r.json() if r.status_code == 200 else [])}
        if in_archive and in_archive <= set(visible):
            return await self.stream(f"/dicom-web/studies/{study}{rest}", accept,
                                     binary=not rest)
        if rest == "/metadata":
            out = []
            rewriter = self.rewriter()
            for series in visible:
                r = await self.archive_get(f"/dicom-web/studies/{study}/series/{series}/metadata",
                                           headers={"Accept": "application/dicom+json"})
                if r.status_code == 200:
                    out.extend(json.loads(rewriter.all(r.content)))
            self.set_header("Content-Type", "application/dicom+json")
            return self.finish(json.dumps(out))
        if rest:
            self.not_found()
        await self._reframe(study, visible, accept)

    async def _reframe(self, study: str, series_uids: list[str], accept: str):
        """One multipart answer made of the parts of several series answers."""
        from ....kernels.multipart import boundary_of, iter_parts_async

        boundary = "imaginghub-" + study[-16:]
        accept = accept or 'multipart/related; type="application/dicom"'
        self.set_header("Content-Type",
                        f'multipart/related; type="application/dicom"; boundary={boundary}')
        for series in series_uids:
            request = self.ctx.archive.build_request(
                "GET", f"{self.ctx.archive_url}/dicom-web/studies/{study}/series/{series}",
                headers={"Accept": accept})
            r = await self.ctx.archive.send(request, stream=True)
            try:
                if r.status_code != 200:
                    continue
                inner = boundary_of(r.headers["content-type"])
                async for headers, body in iter_parts_async(r.aiter_raw(1 << 20), inner):
                    ctype = headers.get("content-type", "application/dicom")
                    self.write(f"--{boundary}\r\nContent-Type: {ctype}\r\n\r\n".encode())
                    self.write(body)
                    self.write(b"\r\n")
                    await self.flush()
            finally:
                await r.aclose()
        self.write(f"--{boundary}--\r\n".encode())


@web.stream_request_body
class StowHandler(BaseHandler):
    """STOW-RS into one project: the header ``X-Imaginghub-Project`` names it,
    or the caller's only project. See :mod:`.stow` for what is checked.

    The body is received only after the caller and the project have been
    checked, and only up to the service's limit (``data_max_stow_mb``): a
    request is stored all or nothing per instance, so it is held until every
    part has been inspected; clients send large uploads in several requests
    (``imaginghub ingest`` and ``pacs.store_instances`` do)."""

    _parser = None

    async def prepare(self):
        from ....kernels.multipart import PartParser, boundary_of

        await super().prepare()
        if self.request.method != "POST":
            return
        self._action = "stow"
        self._project = self.target_project()
        try:
            self._parser = PartParser(boundary_of(self.request.headers.get("Content-Type", "")))
        except ValueError as e:
            raise web.HTTPError(400, reason=f"not a multipart/related body: {e}") from None
        self._parts: list = []
        limit = self.ctx.max_stow_bytes
        declared = _int(self.request.headers.get("Content-Length"))
        if declared is not None and declared > limit:
            raise web.HTTPError(413, reason=(
                f"the request is {declared / 2**20:.0f} MiB; this archive takes at most "
                f"{limit / 2**20:.0f} MiB per STOW-RS request: send the instances in "
                "several requests"))
        self.request.connection.set_max_body_size(limit)

    def data_received(self, chunk: bytes) -> None:
        # Parts are cut out and inspected as they arrive: the request's bytes
        # are held once, as the parts' bodies.
        from . import stow

        if self._parser is not None:
            for _, body in self._parser.feed(chunk):
                self._parts.append(stow.inspect(len(self._parts), body))

    async def post(self, study: str | None = None):
        from . import stow

        project = self._project
        try:
            self._parser.close()
        except ValueError as e:
            raise web.HTTPError(400, reason=f"not a multipart/related body: {e}") from None
        parts = self._parts
        if not parts:
            raise web.HTTPError(400, reason="the request holds no DICOM instances")
        for p in parts:
            if not p.problem and study and p.study != study:
                p.problem, p.code = f"not of study {study}", stow.CANNOT_UNDERSTAND
        store = self.ctx.store
        fresh: dict[str, str] = {}
        allowed: set[str] = set()
        for series in {p.series for p in parts if not p.problem}:
            owners = store.projects_of(series)
            if project in owners:
                allowed.add(series)
            elif not owners and not await self.archive_has_series(series):
                allowed.add(series)
                fresh[series] = next(p.study for p in parts if p.series == series)
        for p in parts:
            if not p.problem and p.series not in allowed:
                p.problem, p.code = stow.REASONS[stow.NOT_AUTHORIZED], stow.NOT_AUTHORIZED
        accepted = [p for p in parts if not p.problem]
        self._uids = sorted({p.series for p in parts if p.series})[:100]
        answer: dict = {}
        stored: set[str] = set()
        if accepted:
            store.assign([(st, se) for se, st in fresh.items()], project, by=self.caller.name)
            try:
                boundary = "imaginghub-stow"
                r = await self.ctx.archive.post(
                    f"{self.ctx.archive_url}/dicom-web/studies",
                    content=stow.multipart_body(accepted, boundary),
                    headers={"Content-Type": "multipart/related; type=\"application/dicom\"; "
                                             f"boundary={boundary}",
                             "Accept": "application/dicom+json"})
                answer = (json.loads(self.rewriter().all(r.content))
                          if r.status_code in (200, 202) and r.content else {})
                stored = {item["00081155"]["Value"][0]
                          for item in answer.get("00081199", {}).get("Value", [])}
            finally:
                kept = {p.series for p in accepted if p.sop in stored}
                empty = [se for se in fresh if se not in kept]
                if empty:
                    store.unassign(project, series_uids=empty)
        for p in accepted:
            if p.sop not in stored:
                p.problem, p.code = stow.REASONS[stow.PROCESSING_FAILURE], stow.PROCESSING_FAILURE
        failed = [stow.failed_item(p) for p in parts if p.problem]
        answer.pop("00081198", None)
        if failed:
            answer["00081198"] = {"vr": "SQ", "Value": failed}
        self.set_status(200 if not failed else 202 if stored else 409)
        self.set_header("Content-Type", "application/dicom+json")
        self.finish(json.dumps(answer))

    def target_project(self) -> str:
        from ...users import validate_project
        from ...errors import ConfigError

        named = self.request.headers.get("X-Imaginghub-Project", "").strip()
        if not named:
            if len(self.caller.projects) != 1:
                raise web.HTTPError(400, reason=(
                    "say which project to store into (header X-Imaginghub-Project, or "
                    "pacs.store_instances(..., project=NAME)): you are in "
                    f"{len(self.caller.projects)} projects"))
            return next(iter(self.caller.projects))
        try:
            project = validate_project(named)
        except ConfigError as e:
            raise web.HTTPError(400, reason=str(e)) from None
        if project not in self.caller.projects and not self.caller.all_projects:
            raise web.HTTPError(403, reason=f"you are not a member of project {project}")
        return project

    async def archive_has_series(self, series: str) -> bool:
        r = await self.archive_get("/dicom-web/series", params={"SeriesInstanceUID": series},
                                   headers={"Accept": "application/dicom+json"})
        return r.status_code == 200 and bool(r.content) and bool(r.json())


class ProjectsHandler(BaseHandler):
    """GET: the projects the caller sees, with their sizes."""

    async def get(self):
        self._action = "projects-list"
        summary = self.ctx.store.project_summary()
        names = set(summary) if self.caller.all_projects else set(self.caller.projects)
        if self.caller.admin and self.caller.all_projects:
            names |= set(self.caller.projects)
        out = [{"name": n, "member": n in self.caller.projects,
                **summary.get(n, {"studies": 0, "series": 0})} for n in sorted(names)]
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"projects": out}))


class ProjectSeriesHandler(BaseHandler):
    """POST ``{"series": [...], "studies": [...]}`` to put series (or every
    series of studies) into a project, or to ``.../remove`` to take them out.
    Admins only."""

    async def post(self, project: str, remove: str | None = None):
        from ...users import validate_project

        self._action = "projects-remove" if remove else "projects-add"
        if not self.caller.admin:
            raise web.HTTPError(403, reason="only admins change what belongs to a project")
        try:
            body = json.loads(self.request.body or b"{}")
            series = [str(u) for u in body.get("series", [])]
            studies = [str(u) for u in body.get("studies", [])]
            project = validate_project(project)
        except Exception as e:
            raise web.HTTPError(400, reason=f"expected JSON with 'series' and/or 'studies' "
                                            f"lists of UIDs ({e})") from None
        self._uids = (series + studies)[:100]
        if remove:
            n = self.ctx.store.unassign(project, series_uids=series, study_uids=studies)
            await self._catalog_projects(series, studies)
            return self._json({"removed": n})
        pairs, unknown = [], []
        for uid in series:
            r = await self.archive_get("/dicom-web/series", params={"SeriesInstanceUID": uid},
                                       headers={"Accept": "application/dicom+json"})
            found = r.json() if r.status_code == 200 and r.content else []
            if found:
                pairs.append((_v(found[0], "0020000D"), uid))
            else:
                unknown.append(uid)
        for uid in studies:
            r = await self.archive_get(f"/dicom-web/studies/{uid}/series",
                                       headers={"Accept": "application/dicom+json"})
            found = r.json() if r.status_code == 200 and r.content else []
            pairs.extend((uid, _v(rec, "0020000E")) for rec in found)
            if not found:
                unknown.append(uid)
        added = self.ctx.store.assign(pairs, project, by=self.caller.name)
        await self._catalog_projects([se for _, se in pairs], [])
        self._json({"added": added, "already": len(pairs) - added, "unknown": unknown})

    async def _catalog_projects(self, series: list[str], studies: list[str]) -> None:
        """The catalog shows the series' new projects at once."""
        if self.ctx.catalog_sync is not None:
            await asyncio.get_running_loop().run_in_executor(
                self.ctx.query_pool, self.ctx.catalog_sync.update_projects, series, studies)

    def _json(self, data):
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data))


class CatalogHandler(BaseHandler):
    """The catalog (see :mod:`.catalog`), within the caller's projects.

    - ``POST .../catalog/query``: a query (JSON), answered with the total,
      a page of rows and facet counts.
    - ``POST .../catalog/tags``: ``{"series": [...], "project": P, "tag": T,
      "remove": false}``: tag series of a project you are in.
    - ``POST .../catalog/import-idc``: ``{"project": "idc"}``: admins load
      IDC's index of about a million series as a metadata-only collection.
    - ``POST .../catalog/sync``: admins re-crawl the archive (QIDO-RS).
    """

    async def post(self, action: str):
        self._action = f"catalog-{action}"
        if self.ctx.catalog is None:
            raise web.HTTPError(503, reason="this data service runs without a catalog")
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            raise web.HTTPError(400, reason="the body must be JSON") from None
        loop = asyncio.get_running_loop()
        if action == "query":
            answer = await loop.run_in_executor(self.ctx.query_pool, self._query, body)
        elif action == "tags":
            answer = await loop.run_in_executor(self.ctx.query_pool, self._tag, body)
        elif action == "import-idc":
            answer = await self._import_idc(body)
        elif action == "sync":
            if not self.caller.admin:
                raise web.HTTPError(403, reason="only admins re-crawl the archive")
            if self.ctx.catalog_sync is None:
                raise web.HTTPError(503, reason="the catalog does not follow an archive")
            answer = await self.ctx.catalog_sync.full()
        else:
            self.not_found()
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(answer, default=str))

    def _query(self, body) -> dict:
        from .catalog import Query

        return self.ctx.catalog.search(Query.parse(body), self.caller.scope)

    def _tag(self, body) -> dict:
        from .errors import QueryError

        project = str(body.get("project") or "")
        if project not in self.caller.projects:
            raise web.HTTPError(403, reason=f"you are not a member of project {project!r}")
        series = [str(u) for u in body.get("series") or []]
        if not series:
            raise QueryError("say which series to tag: 'series': [UIDs]")
        self._uids = series[:100]
        if len(self.ctx.catalog.visible_uids(series, {project})) != len(set(series)):
            raise web.HTTPError(404)  # one is not (visibly) in that project
        n = self.ctx.catalog.tag(series, project, str(body.get("tag") or ""), self.caller.name,
                                 remove=bool(body.get("remove")))
        return {"tagged" if not body.get("remove") else "untagged": n}

    async def _import_idc(self, body) -> dict:
        from ...users import validate_project

        if not self.caller.admin:
            raise web.HTTPError(403, reason="only admins import collections")
        import idc_index_data

        project = validate_project(str(body.get("project") or "idc"))
        n = await asyncio.get_running_loop().run_in_executor(
            self.ctx.query_pool, self.ctx.catalog.import_parquet_idc,
            idc_index_data.IDC_INDEX_PARQUET_FILEPATH, project)
        return {"imported": n, "project": project}


class CohortHandler(BaseHandler):
    """Cohorts of the caller's projects (see :mod:`.cohorts`).

    - ``GET .../cohorts``: every version of every cohort you may see.
    - ``GET .../cohorts/{project}/{name}[@version]``: one version with its series.
    - ``POST .../cohorts/{project}/{name}``: ``{"series": [...]}`` or
      ``{"query": {...}}`` (a catalog query, frozen into its series), and
      ``"note"``: save a new version. Members of the project only; every
      series must be in the project.
    """

    async def get(self, project: str | None = None, ref: str | None = None):
        loop = asyncio.get_running_loop()
        scope = self.caller.scope
        if project is None:
            self._action = "cohorts-list"
            cohorts = await loop.run_in_executor(self.ctx.query_pool, self.ctx.cohorts.list,
                                                 scope)
            return self._json({"cohorts": cohorts})
        self._action = "cohort-get"
        found = await loop.run_in_executor(self.ctx.query_pool, self._get, scope, project, ref)
        if found is None:
            self.not_found()
        self._json(found)

    def _get(self, scope, project, ref):
        return self.ctx.cohorts.get(scope, project, ref)

    async def post(self, project: str, ref: str):
        from .cohorts import parse_ref

        self._action = "cohort-save"
        parse_ref(ref)
        if project not in self.caller.projects:
            raise web.HTTPError(403, reason=f"you are not a member of project {project!r}")
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            raise web.HTTPError(400, reason="the body must be JSON") from None
        answer = await asyncio.get_running_loop().run_in_executor(
            self.ctx.query_pool, self._save, project, ref, body)
        self._uids = [answer["ref"]]
        self._json(answer)

    def _save(self, project: str, ref: str, body: dict) -> dict:
        from .catalog import Query
        from .cohorts import MAX_SERIES

        query = body.get("query") or {}
        if "series" in body:
            series = sorted({str(u) for u in body["series"]})
            seen = self.ctx.catalog.visible_uids(series, {project})
            if len(seen) != len(series):
                raise CohortError(f"{len(series) - len(seen)} of the series are not in "
                                  f"project {project}")
        elif query:
            series = self.ctx.catalog.matching_uids(Query.parse(
                {k: v for k, v in query.items() if k not in ("sort", "limit", "offset",
                                                             "facets")}),
                {project}, MAX_SERIES)
        else:
            raise CohortError("give the cohort's 'series' (UIDs) or the 'query' that "
                              "selects them")
        if not series:
            raise CohortError("the cohort would be empty")
        return self.ctx.cohorts.save(project, ref, series, query, self.caller.name,
                                     str(body.get("note") or ""))

    def _json(self, data):
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data, default=str))


class ThumbnailHandler(BaseHandler):
    """``GET .../thumbnails/{series}``: the series' small PNG (see
    :mod:`.thumbnails`), made on first request and kept."""

    async def get(self, series: str):
        from . import thumbnails

        self._action = "thumbnail"
        self._uids = [series]
        scope = self.caller.scope
        study = self.ctx.store.study_of(series)
        if study is None or not self.ctx.store.is_visible(scope, study, series):
            self.not_found()
        png = self.ctx.thumbnails.get(series)
        if png is None:
            dicom = await self._middle_instance(study, series)
            loop = asyncio.get_running_loop()
            try:
                png = await loop.run_in_executor(self.ctx.query_pool, thumbnails.render, dicom)
            except Exception as e:  # a broken or unusual image: say so, keep serving
                raise web.HTTPError(422, reason=f"no picture for this series: {e}") from None
            self.ctx.thumbnails.put(series, png)
        self.set_header("Content-Type", "image/png")
        self.set_header("Cache-Control", "private, max-age=86400")
        self.finish(png)

    async def _middle_instance(self, study: str, series: str) -> bytes:
        from ....kernels.multipart import boundary_of, iter_parts

        base = f"/dicom-web/studies/{study}/series/{series}"
        r = await self.archive_get(f"{base}/instances",
                                   headers={"Accept": "application/dicom+json"})
        found = r.json() if r.status_code == 200 and r.content else []
        if not found:
            self.not_found()
        found.sort(key=lambda rec: _int(_v(rec, "00200013")) or 0)
        sop = _v(found[len(found) // 2], "00080018")
        r = await self.archive_get(f"{base}/instances/{sop}", headers={
            "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
        if r.status_code != 200:
            self.not_found()
        parts = iter_parts([r.content], boundary_of(r.headers.get("content-type", "")))
        return next(body for _, body in parts)


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


def _v(record: dict, tag: str):
    v = record.get(tag, {}).get("Value")
    return v[0] if v else None


def _int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


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
