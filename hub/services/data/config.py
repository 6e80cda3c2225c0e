"""The data service's settings and the archive it talks to (light: read by
``imaginghub up``, ``imaginghub config`` and the CLI without the service's
dependencies)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from traitlets import Bool, Integer, Unicode, validate
from traitlets import TraitError

from ...errors import ConfigError
from ...safeio import read_secret
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
    archive_url = Unicode("", help="""
        The DICOMweb root of the site's own archive, the one under which it
        answers /studies (QIDO-RS, WADO-RS and STOW-RS), e.g.
        https://pacs.example.org/dcm4chee-arc/aets/DCM4CHEE/rs. Empty: the
        embedded Orthanc that imaginghub up runs. With an archive of the
        site's, up starts no archive of its own, the gateway streams every
        answer from it (no file access; the archive is asked only for what
        it stores, and a transfer syntax a client names is made by the
        gateway, as for the embedded archive) and the catalog follows it
        with the qido feed. Users' code must not reach it other than through the
        gateway: give it credentials that only the service holds
        (archive_username, archive_password_file) or close it to the users'
        machines.""").tag(config=True)
    archive_username = Unicode("", help="""
        The user the gateway authenticates as at archive_url (HTTP Basic).
        Empty: no credentials are sent.""").tag(config=True)
    archive_password_file = Unicode("", help="""
        A file whose first line is archive_username's password (a Kubernetes
        Secret mounted as a file, or one the admin wrote): readable by the
        service account and by no other account (e.g. root:imaginghub
        0640).""").tag(config=True)
    archive_ca_file = Unicode("", help="""
        A file of CA certificates (PEM) that the archive's TLS certificate
        is checked against, for a site's own certificate authority. Empty:
        the system's (Debian: /etc/ssl/certs, update-ca-certificates).""").tag(config=True)
    read_archive_files = Bool(True, help="""
        Read the embedded archive's files directly for whole series (the
        fast path): the service and Orthanc share this machine's disk. False
        streams every series through the archive's DICOMweb. Ignored with
        archive_url.""").tag(config=True)
    feed = Unicode("", help="""
        How the service learns what arrived in the archive and what left it:
        an archive feed by its name in the entry-point group
        imaginghub.archive_feeds (orthanc: Orthanc's change feed; qido:
        QIDO-RS polled, for any DICOMweb archive). Empty: orthanc for the
        embedded archive, qido with archive_url. Its settings are its
        class's (c.OrthancFeed, c.QidoFeed; c.ArchiveFeed for
        both).""").tag(config=True)

    def feed_name(self) -> str:
        """The feed this site uses (``feed``, or the default for its archive)."""
        return self.feed or ("qido" if self.archive_url else "orthanc")

    @validate("archive_url")
    def _check_url(self, proposal) -> str:
        url = proposal["value"].strip().rstrip("/")
        if url:
            u = urlsplit(url)
            if u.scheme not in ("http", "https") or not u.hostname or u.query or u.fragment:
                raise TraitError(
                    f"c.DataService.archive_url = {proposal['value']!r} is not the http(s) "
                    "address of a DICOMweb root (e.g. https://pacs.example.org/dicom-web)")
            if u.username or u.password:
                raise TraitError(
                    "c.DataService.archive_url must not carry credentials: set "
                    "archive_username and archive_password_file instead")
        return url


@dataclass(frozen=True)
class ArchiveEndpoint:
    """Where the service finds the archive: its DICOMweb root and
    credentials, and for the embedded Orthanc its REST root (None for any
    other archive: nothing Orthanc-specific is then asked of it)."""

    dicomweb: str
    auth: tuple[str, str] | None
    orthanc: str | None = None
    ca_file: str | None = None

    @property
    def embedded(self) -> bool:
        return self.orthanc is not None

    def tls(self) -> ssl.SSLContext:
        """What the archive's certificate is checked with: the system's CAs,
        or the site's (``c.DataService.archive_ca_file``)."""
        try:
            return ssl.create_default_context(cafile=self.ca_file or None)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"c.DataService.archive_ca_file {self.ca_file} is not a file of "
                              f"PEM certificates ({e})") from None

    def probe(self, timeout: float = 10) -> None:
        """A QIDO-RS search for one study: a ConfigError saying what is
        wrong when the archive cannot be reached, refuses the credentials
        or is not a DICOMweb root."""
        import httpx

        url = f"{self.dicomweb}/studies"
        try:
            r = httpx.get(url, params={"limit": 1}, auth=self.auth, timeout=timeout,
                          verify=self.tls(), headers={"Accept": "application/dicom+json"})
        except httpx.HTTPError as e:
            raise ConfigError(f"the archive at {self.dicomweb} cannot be reached "
                              f"({type(e).__name__}: {e}): is it running, and is "
                              "c.DataService.archive_url its DICOMweb root?") from None
        if r.status_code in (401, 403):
            raise ConfigError(
                f"the archive at {self.dicomweb} refused imaginghub's credentials (HTTP "
                f"{r.status_code}): check c.DataService.archive_username and the password in "
                "c.DataService.archive_password_file")
        if r.status_code not in (200, 204):
            raise ConfigError(
                f"the archive at {self.dicomweb} answered HTTP {r.status_code} to a QIDO-RS "
                "search of /studies: is c.DataService.archive_url its DICOMweb root (the "
                "address under which it answers /studies)?")


def archive_endpoint(home) -> ArchiveEndpoint:
    """The site's archive: ``c.DataService.archive_url`` with its
    credentials, else the embedded Orthanc (its port in state.json, its
    password in secrets/)."""
    from ... import orthanc

    conf = DataService(config=home.config())
    if conf.archive_url:
        auth = None
        if conf.archive_username:
            if not conf.archive_password_file:
                raise ConfigError("c.DataService.archive_username is set without "
                                  "archive_password_file: name the file that holds its password")
            auth = (conf.archive_username, read_secret(Path(conf.archive_password_file),
                                                        "c.DataService.archive_password_file",
                                                        "the archive's password"))
        elif conf.archive_password_file:
            raise ConfigError("c.DataService.archive_password_file is set without "
                              "archive_username: name the user it is the password of")
        return ArchiveEndpoint(conf.archive_url, auth, ca_file=conf.archive_ca_file or None)
    port = home.load_state().get("orthanc_http_port")
    if not port:
        raise ConfigError(f"the embedded archive's port is not in {home.state_file}: start the "
                          "workspace with 'imaginghub up'")
    rest = f"http://127.0.0.1:{port}"
    return ArchiveEndpoint(f"{rest}/dicom-web",
                           (orthanc.ARCHIVE_USER, home.secret("archive_password")), rest)


