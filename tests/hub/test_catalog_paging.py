"""Sorting and paging of the catalog (no stack needed: the DuckDB catalog on
its own), against a sort in Python: ties, missing values, both directions,
pages in the middle and past the end, with and without a text search (the
two query plans)."""

from __future__ import annotations

import datetime as dt
import random

import pytest

from imaginghub.hub.services.data.catalog import Catalog, Query


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    rng = random.Random(7)
    c = Catalog(tmp_path_factory.mktemp("catalog") / "catalog.duckdb")
    rows = []
    for i in range(3000):
        rows.append({
            "series_uid": f"1.2.826.0.1.{rng.randrange(10**9)}.{i}",
            "modality": rng.choice(["CT", "MR", "PT", None]),
            # few distinct values: many ties; some missing
            "study_date": (dt.date(2000, 1, 1) + dt.timedelta(days=rng.randrange(40))
                           if rng.random() > 0.2 else None),
            "instances": rng.choice([1, 2, 3, None]),
            "series_description": rng.choice(["Lung window", "brain T1", "", None]),
            "projects": [rng.choice(["a", "b"])],
        })
    c.upsert(rows)
    return c, rows


def _expected(rows, sort: str, keep) -> list[str]:
    col, desc = sort.lstrip("-"), sort.startswith("-")
    present = sorted((r for r in rows if keep(r) and r[col] is not None),
                     key=lambda r: (r[col], r["series_uid"]) if not desc else r["series_uid"])
    if desc:  # value descending, UID ascending within a value
        present = sorted(present, key=lambda r: r[col], reverse=True)
    missing = sorted((r for r in rows if keep(r) and r[col] is None),
                     key=lambda r: r["series_uid"])
    return [r["series_uid"] for r in present + missing]


@pytest.mark.parametrize("sort", ["-study_date", "study_date", "instances", "-instances",
                                  "series_uid"])
@pytest.mark.parametrize("text", ["", "lung"])
def test_pages_are_slices_of_the_full_order(catalog, sort, text):
    c, rows = catalog

    def keep(r):
        return "a" in r["projects"] and r["modality"] in ("CT", "MR") and (
            not text or text in (r["series_description"] or "").lower())

    expected = _expected(rows, sort, keep)
    assert len(expected) > 150
    for offset, limit in [(0, 50), (37, 50), (len(expected) - 10, 50), (len(expected), 5),
                          (0, 1000)]:
        q = Query.parse({"filters": {"modality": ["CT", "MR"]}, "text": text, "sort": sort,
                         "offset": offset, "limit": limit, "facets": ["modality"]})
        answer = c.search(q, {"a"})
        assert answer["total"] == len(expected)
        got = [r["series_uid"] for r in answer["rows"]]
        assert got == expected[offset:offset + limit], (sort, text, offset)
        for r in answer["rows"]:
            assert r["projects"] == ["a"]
            assert r["study_date"] is None or isinstance(r["study_date"], str)
