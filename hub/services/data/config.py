"""The data service's settings (light: read by ``imaginghub up`` and
``imaginghub config`` without the service's dependencies)."""

from __future__ import annotations

from traitlets import Bool, Integer, Unicode

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
    feed = Unicode("orthanc", help="""
        How the service learns what arrived in the archive and what left it:
        an archive feed by its name in the entry-point group
        imaginghub.archive_feeds (orthanc: Orthanc's change feed; qido: QIDO-RS
        polled, for any DICOMweb archive). Its settings are its class's
        (c.OrthancFeed, c.QidoFeed; c.ArchiveFeed for both).""").tag(config=True)
