"""Cohort queries over IDC's 1,044,191 series: through the data service's
catalog API (HTTP, token check, project scope, DuckDB) and, in the same run,
the equivalent DuckDB SQL straight on idc-index-data's parquet file (five
facet counts and the first page of 50 rows). p50 and p95 per query.

    .venv/bin/python bench/catalog.py [--repeat 30]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import idc_index_data

sys.path.insert(0, str(Path(__file__).parent))
from _stack import IMAGINGHUB, ct_copy, running_stack  # noqa: E402

from imaginghub.kernels.catalog import Catalog  # noqa: E402

FACETS = ["modality", "body_part", "manufacturer", "patient_sex", "collection"]
COLUMN = {"modality": "Modality", "body_part": "BodyPartExamined", "manufacturer": "Manufacturer",
          "patient_sex": "PatientSex", "collection": "collection_id"}
# (name, filters, ranges, text)
QUERIES = [
    ("everything", {}, {}, ""),
    ("CT", {"modality": ["CT"]}, {}, ""),
    ("chest CT or PT, female", {"modality": ["CT", "PT"], "body_part": ["CHEST"],
                                "patient_sex": ["F"]}, {}, ""),
    ("MR 2000-2010, text 't1'", {"modality": ["MR"]},
     {"study_date": ["2000-01-01", "2010-12-31"]}, "t1"),
    ("4 filters + text 'lung'", {"modality": ["CT"], "body_part": ["CHEST", "LUNG"],
                                 "manufacturer": ["SIEMENS", "GE MEDICAL SYSTEMS"]},
     {"study_date": ["2000-01-01", None]}, "lung"),
]


def parquet_sql(filters: dict, ranges: dict, text: str, skip: str | None = None) -> str:
    conds = ["TRUE"]
    for f, values in filters.items():
        if f != skip:
            conds.append(f"{COLUMN[f]} IN ({', '.join(repr(v) for v in values)})")
    for f, (lo, hi) in ranges.items():
        if lo:
            conds.append(f"try_cast(StudyDate AS DATE) >= DATE '{lo}'")
        if hi:
            conds.append(f"try_cast(StudyDate AS DATE) <= DATE '{hi}'")
    if text:
        conds.append(f"(contains(lower(SeriesDescription), '{text}') OR "
                     f"contains(lower(StudyDescription), '{text}'))")
    return " AND ".join(conds)


def on_parquet(con, path: str, filters: dict, ranges: dict, text: str) -> None:
    src = f"read_parquet('{path}')"
    w = parquet_sql(filters, ranges, text)
    con.execute(f"SELECT count(*) FROM {src} WHERE {w}").fetchall()
    con.execute(f"SELECT * FROM {src} WHERE {w} ORDER BY StudyDate DESC NULLS LAST, "
                "SeriesInstanceUID LIMIT 50").fetchall()
    for f in FACETS:
        con.execute(f"SELECT {COLUMN[f]}, count(*) FROM {src} "
                    f"WHERE {parquet_sql(filters, ranges, text, skip=f)} GROUP BY 1").fetchall()


def timed(fn, repeat: int) -> list[float]:
    fn()  # warm
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=30)
    args = ap.parse_args()
    path = idc_index_data.IDC_INDEX_PARQUET_FILEPATH
    with running_stack() as (_, gateway, run):
        home = ["--home", run["home"]]
        t = time.perf_counter()
        subprocess.run([IMAGINGHUB, *home, "catalog", "import-idc", "--project", "idc"],
                       check=True, capture_output=True)
        imported = time.perf_counter() - t
        subprocess.run([IMAGINGHUB, *home, "users", "add", "reader", "--project", "idc"],
                       check=True, capture_output=True)
        token = subprocess.run([IMAGINGHUB, *home, "token", "reader"], check=True,
                               capture_output=True, text=True).stdout.strip()
        api = Catalog(gateway.url.rsplit("/dicom-web", 1)[0] + "/api", token)
        alice = Catalog(api.api, gateway._token)
        con = duckdb.connect()
        ingest = keeps_up(gateway, alice, token)
        print(f"\ncatalog benchmark: IDC index, 1,044,191 series (import {imported:.1f} s); "
              f"5 facets + first page of 50; {args.repeat} runs each, ms")
        print(f"{'query':28} {'matches':>8} | {'API p50':>8} {'p95':>6} {'in DuckDB':>8} | "
              f"{'parquet p50':>11} {'p95':>6}")
        print(ingest)
        for name, filters, ranges, text in QUERIES:
            body = {"filters": filters, "ranges": ranges, "text": text, "facets": FACETS,
                    "limit": 50}
            total = api.query(**body)["total"]
            inside = []
            a = timed(lambda: inside.append(api.query(**body)["took_ms"]), args.repeat)
            p = timed(lambda: on_parquet(con, path, filters, ranges, text), args.repeat)
            q = [statistics.median(a), _p95(a), statistics.median(p), _p95(p)]
            print(f"{name:28} {total:>8} | {1000 * q[0]:8.1f} {1000 * q[1]:6.1f} "
                  f"{statistics.median(inside):8.1f} | {1000 * q[2]:11.1f} {1000 * q[3]:6.1f}")


def keeps_up(gateway, api: Catalog, _token: str) -> str:
    """Store a new 300-instance CT through the gateway and time how long the
    catalog takes to show it with all its instances (the change feed reads a
    series when it appears and when it settles: Orthanc's StableAge, 5 s)."""
    series, datasets = ct_copy(gateway)
    t = time.perf_counter()
    gateway.store_instances(datasets)
    stored = time.perf_counter() - t
    seen = full = None
    while full is None and time.perf_counter() - t < 120:
        rows = api.query(filters={"series_uid": [series]}, limit=1)["rows"]
        now = time.perf_counter() - t
        if rows and seen is None:
            seen = now
        if rows and rows[0]["instances"] == len(datasets):
            full = now
        time.sleep(0.1)
    return (f"ingest of {len(datasets)} instances: stored in {stored:.2f} s "
            f"({len(datasets) / stored:.0f} instances/s); in the catalog after "
            f"{seen or float('nan'):.2f} s, with all its instances after "
            f"{full or float('nan'):.2f} s")


def _p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[18]


if __name__ == "__main__":
    main()
