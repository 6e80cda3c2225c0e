"""QIDO-RS through the gateway: answers hold only series of the caller's
projects (and studies built from them)."""

from __future__ import annotations

import json
import logging
from urllib.parse import urlencode

from ....kernels.query import archive_filters, first_value, keep
from . import answers
from .base import BaseHandler, int_or_none

log = logging.getLogger("imaginghub.data")

_STUDY_COUNTS = ("00201206", "00201208", "00080061")  # series, instances, modalities


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
        limit = int_or_none(params.pop("limit", [None])[0])
        offset = int_or_none(params.pop("offset", [None])[0]) or 0
        filters = {k: v[-1] for k, v in params.items()
                   if k not in ("includefield", "fuzzymatching")}
        sent, exact = archive_filters(filters)
        query = [(k, v) for k, v in (sent or {}).items()]
        query += [("includefield", v) for v in params.get("includefield", [])]
        if level in ("series", "instances") and scope is not None:
            query.append(("includefield", "0020000E"))
        path = self.request.path.split("/dicom-web", 1)[1]
        r = await self.ctx.archive.get(
            f"{self.ctx.dicomweb}{path}?{urlencode(query, safe='*?,')}",
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
            counts = store.visible_studies(scope, (first_value(r, "0020000D") for r in records))
            out = []
            for rec in records:
                study = first_value(rec, "0020000D")
                if study not in counts:
                    continue
                if counts[study] != int_or_none(first_value(rec, "00201206")):
                    for tag in _STUDY_COUNTS:  # would reveal series outside the projects
                        rec.pop(tag, None)
                out.append(rec)
            return out
        visible = store.visible_series(scope, (first_value(r, "0020000E") for r in records))
        return [rec for rec in records if first_value(rec, "0020000E") in visible]

    def _json(self, records):
        self.set_header("Content-Type", "application/dicom+json")
        self.finish(json.dumps(records))
