"""The data service's settings (light: read by ``imaginghub up`` and
``imaginghub config`` without the service's dependencies)."""

from __future__ import annotations

from traitlets import Bool, Float, Integer, Unicode

from .. import HubService


class DataService(HubService):
    """The data service: the DICOMweb gateway (the only door to the
    archive), projects, the catalog and cohorts."""

    db_url = Unicode("", help="""
        The service's database (projects, cohorts, tags, audit), as an
        SQLAlchemy URL such as postgresql+psycopg://user@host/db. Empty:
        SQLite in the state directory. $IMAGINGHUB_DATA_DB_URL, when set,
        wins.""").tag(config=True)
    max_stow_mb = Integer(256, help="""
        The largest STOW-RS upload through the gateway, in MiB (larger ones
        are refused with 413 before they are read).""").tag(config=True)
    read_archive_files = Bool(True, help="""
        Read the embedded archive's files directly for whole series (the
        fast path): the service and Orthanc share this machine's disk. False
        streams every series through the archive's DICOMweb.""").tag(config=True)
    catalog_full_sync_hours = Float(24, help="""
        How often the catalog re-reads every series of the archive (on top
        of the change feed, which sees new series within seconds); also once
        at start.""").tag(config=True)
