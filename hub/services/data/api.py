"""The data service's REST API (``/services/data/api``): projects and
what belongs to them, the catalog, cohorts, thumbnails."""

from __future__ import annotations

import asyncio
import json
import logging

from tornado import web

from ....kernels.query import first_value
from .base import BaseHandler, int_or_none
from .errors import CohortError

log = logging.getLogger("imaginghub.data")

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
            r = await self.archive_get("/series", params={"SeriesInstanceUID": uid},
                                       headers={"Accept": "application/dicom+json"})
            found = r.json() if r.status_code == 200 and r.content else []
            if found:
                pairs.append((first_value(found[0], "0020000D"), uid))
            else:
                unknown.append(uid)
        for uid in studies:
            r = await self.archive_get(f"/studies/{uid}/series",
                                       headers={"Accept": "application/dicom+json"})
            found = r.json() if r.status_code == 200 and r.content else []
            pairs.extend((uid, first_value(rec, "0020000E")) for rec in found)
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

        base = f"/studies/{study}/series/{series}"
        r = await self.archive_get(f"{base}/instances",
                                   headers={"Accept": "application/dicom+json"})
        found = r.json() if r.status_code == 200 and r.content else []
        if not found:
            self.not_found()
        found.sort(key=lambda rec: int_or_none(first_value(rec, "00200013")) or 0)
        sop = first_value(found[len(found) // 2], "00080018")
        r = await self.archive_get(f"{base}/instances/{sop}", headers={
            "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
        if r.status_code != 200:
            self.not_found()
        parts = iter_parts([r.content], boundary_of(r.headers.get("content-type", "")))
        return next(body for _, body in parts)
