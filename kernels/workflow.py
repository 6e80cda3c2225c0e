"""Helpers of the workflow notebooks (``notebooks/workflows``): the series a
run's parameters select, what the archive says about each, file checksums.

A workflow notebook takes either ``cohort`` (a saved cohort's reference,
with ``project`` when several of your projects have a cohort of that name)
or ``series`` (a list of SeriesInstanceUIDs).
"""

from __future__ import annotations

import hashlib
import os

NOTHING_SELECTED = ('nothing to process: set the parameter cohort (a cohort reference such as '
                    '"lung-ct@2") or series (a list of SeriesInstanceUIDs)')


def resolve_series(cohort: str = "", project: str = "", series=(), catalog=None):
    """The series UIDs that a run's parameters select, and the cohort they
    come from: ``(uids, cohort)``, ``cohort`` being None for a list of UIDs.

    ``series`` may also be one string of UIDs separated by commas or spaces.
    ``catalog`` looks the cohort up (default: the one the environment sets up).
    Raises ValueError when neither or both are given, or the cohort is empty.
    """
    if isinstance(series, str):
        series = series.replace(",", " ").split()
    uids = list(dict.fromkeys(u for u in (str(s).strip() for s in series or ()) if u))
    if cohort and uids:
        raise ValueError("give either cohort or series, not both")
    if uids:
        return uids, None
    if not cohort:
        raise ValueError(NOTHING_SELECTED)
    if catalog is None:
        from .catalog import Catalog

        catalog = Catalog.from_env()
    found = catalog.cohort(cohort, project=project or None)
    if not found.series:
        raise ValueError(f"cohort {found.project}/{found.ref} has no series")
    return list(found.series), found


def series_record(pacs, series_uid: str) -> dict:
    """``{"study_uid", "modality", "description"}`` of a series, from the
    archive's QIDO-RS record; raises NotFound for a series you cannot see."""
    record = pacs.find_series(series_uid)

    def value(tag):
        v = record.get(tag, {}).get("Value")
        return str(v[0]) if v else ""

    return {"study_uid": value("0020000D"), "modality": value("00080060"),
            "description": value("0008103E")}


def sha256_of(path: str | os.PathLike) -> str:
    """The hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def series_hash(series) -> str:
    """SHA-256 of the sorted, newline-joined series UIDs: a cohort's
    ``series_hash``, what a run records of the series it read."""
    return hashlib.sha256("\n".join(sorted(set(series))).encode()).hexdigest()
