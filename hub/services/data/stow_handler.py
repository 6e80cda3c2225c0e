"""STOW-RS through the gateway: the request's body streamed in after the
caller and the project are checked, cut into instances as it arrives (the
rules are :mod:`.stow`'s)."""

from __future__ import annotations

import json
import logging

from tornado import web

from .base import BaseHandler, int_or_none

log = logging.getLogger("imaginghub.data")

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

    def write_error(self, status_code, **kwargs):
        # Refused before its body was read: tornado closes the connection
        # after the answer, so the client must not send on it again (seen: a
        # kernel's next upload met "Server disconnected").
        if self.request.method == "POST":
            self.set_header("Connection", "close")
        super().write_error(status_code, **kwargs)

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
        declared = int_or_none(self.request.headers.get("Content-Length"))
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
            answered = False
            try:
                boundary = "imaginghub-stow"
                r = await self.ctx.archive.post(
                    f"{self.ctx.dicomweb}/studies",
                    content=stow.multipart_body(accepted, boundary),
                    headers={"Content-Type": "multipart/related; type=\"application/dicom\"; "
                                             f"boundary={boundary}",
                             "Accept": "application/dicom+json"})
                answered = True
                answer = (json.loads(self.rewriter().all(r.content))
                          if r.status_code in (200, 202) and r.content else {})
                stored = {item["00081155"]["Value"][0]
                          for item in answer.get("00081199", {}).get("Value", [])}
            finally:
                # Without the archive's answer (it went away mid-upload) some
                # instances may be stored: their series keep the project, so
                # that none is stored without one; an empty entry shows nothing.
                kept = {p.series for p in accepted if p.sop in stored}
                empty = [se for se in fresh if se not in kept] if answered else []
                if empty:
                    store.unassign(project, series_uids=empty)
        for p in accepted:
            if p.sop not in stored:
                p.problem, p.code = stow.REASONS[stow.PROCESSING_FAILURE], stow.PROCESSING_FAILURE
        warned = stow.mark_warnings(answer, [p for p in accepted if p.sop in stored])
        failed = [stow.failed_item(p) for p in parts if p.problem]
        answer.pop("00081198", None)
        if failed:
            answer["00081198"] = {"vr": "SQ", "Value": failed}
        # PS3.18: 202 when some were refused or stored with warnings
        self.set_status(200 if not failed and not warned else 202 if stored else 409)
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
        r = await self.archive_get("/series", params={"SeriesInstanceUID": series},
                                   headers={"Accept": "application/dicom+json"})
        return r.status_code == 200 and bool(r.content) and bool(r.json())
