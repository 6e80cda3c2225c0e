"""The embedded archive: Orthanc with its DICOMweb plugin (Debian packages).

Orthanc 1.10 binds HTTP and DICOM on every interface and has no option to
bind to loopback only, so the configuration written here keeps it safe
otherwise: HTTP only from localhost (``RemoteAccessAllowed`` false) and
behind generated credentials, DIMSE only from the modalities listed in
modalities.json, each of which may C-ECHO and C-STORE and nothing else unless the
admin allows C-FIND, C-MOVE or C-GET for it. In multi-user mode local users'
processes cannot open either port at all (:mod:`.portguard`). HTTP
compression is off: with it on, every WADO-RS answer is gzipped on the fly,
30 times slower on loopback. The archive is never asked to convert between
transfer syntaxes (it crashed here doing so, with and without the GDCM
plugin): the data service converts what it must (services/data/transcode.py).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from traitlets import Integer, Unicode
from traitlets.config import Configurable

from .errors import ConfigError

ORTHANC_CANDIDATES = ("/usr/sbin/Orthanc", "/usr/bin/Orthanc")
PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc/plugins")
# The plugins the archive needs, and the Debian package of each.
PLUGINS = {"libOrthancDicomWeb.so": "orthanc-dicomweb"}
ARCHIVE_USER = "imaginghub"
# What a modality may do unless the admin says more: echo and store.
MODALITY_FLAGS = ("AllowFind", "AllowMove", "AllowGet")


def find_orthanc() -> tuple[str, list[str]]:
    """Paths of the Orthanc binary and its plugins, or a ConfigError that
    says how to install what is missing."""
    exe = next((p for p in ORTHANC_CANDIDATES if Path(p).exists()), None) or shutil.which("Orthanc")
    plugins, missing = [], []
    for name, package in PLUGINS.items():
        found = next((f"{d}/{name}" for d in PLUGIN_DIRS if Path(d, name).exists()), None)
        if found:
            plugins.append(found)
        else:
            missing.append(package)
    if not exe or missing:
        packages = (["orthanc"] if not exe else []) + missing
        raise ConfigError(
            f"the archive needs the Debian package{'s' if len(packages) > 1 else ''} "
            f"{', '.join(packages)}: install with 'sudo apt-get install {' '.join(packages)}' "
            "(or run 'make up', which does it).")
    return exe, plugins


class Archive(Configurable):
    """The embedded archive (Orthanc): its DICOM side. Its DICOM peers are
    managed with 'imaginghub modalities' (kept in modalities.json). With
    c.DataService.archive_url (the site's own archive) there is no embedded
    archive, and these settings are unused."""

    aet = Unicode("IMAGINGHUB", help="""
        The archive's own AE title (what modalities call; a called AE title
        that names a project, such as ONCOLOGY, stores into that
        project).""").tag(config=True)
    dicom_port = Integer(4242, help="""
        The archive's DICOM (DIMSE) port, on every interface: modalities
        store to it. Only the modalities listed with 'imaginghub modalities
        add' may use it. 'imaginghub up --dicom-port N' overrides it for one
        start.""").tag(config=True)


def modality_entry(name: str, spec) -> dict:
    """Orthanc's entry of a modality from modalities.json: ``{"AET", "Host",
    "Port"}`` plus ``AllowFind``, ``AllowMove`` and ``AllowGet`` (false unless
    given; the old form ``[AET, host, port]`` allows echo and store only)."""
    if isinstance(spec, list) and len(spec) == 3:
        spec = {"AET": spec[0], "Host": spec[1], "Port": spec[2]}
    if not (isinstance(spec, dict) and {"AET", "Host", "Port"} <= set(spec)):
        raise ConfigError(f"modality {name!r} must be {{\"AET\", \"Host\", \"Port\"}} with "
                          f"optional AllowFind, AllowMove, AllowGet; got {spec!r}: fix "
                          "modalities.json or use 'imaginghub modalities add'")
    entry = {"AET": str(spec["AET"]), "Host": str(spec["Host"]), "Port": int(spec["Port"]),
             "AllowEcho": True, "AllowStore": True}
    for flag in MODALITY_FLAGS:
        entry[flag] = bool(spec.get(flag, False))
    return entry


@dataclass
class OrthancSettings:
    http_port: int
    dicom_port: int
    password: str
    aet: str = "IMAGINGHUB"
    # {"NAME": {"AET", "Host", "Port", "AllowFind", ...}}: the only DIMSE peers.
    modalities: dict | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"


def write_config(settings: OrthancSettings, directory: Path, plugins: list[str]) -> Path:
    """Write ``orthanc.json`` (0600: it holds the archive's password)."""
    from .state import make_dir, write_private

    storage = make_dir(directory / "db")
    modalities = {name: modality_entry(name, spec)
                  for name, spec in (settings.modalities or {}).items()}
    config = {
        "Name": "imaginghub",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "StorageCompression": False,
        "Plugins": plugins,
        "HttpPort": settings.http_port,
        "HttpServerEnabled": True,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {ARCHIVE_USER: settings.password},
        "HttpCompressionEnabled": False,
        "KeepAlive": True,
        "TcpNoDelay": True,
        "HttpThreadsCount": 16,
        "HttpTimeout": 60,
        "DicomServerEnabled": True,
        "DicomAet": settings.aet,
        "DicomPort": settings.dicom_port,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": False,
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowFind": False,
        "DicomAlwaysAllowMove": False,
        "DicomAlwaysAllowGet": False,
        "DicomCheckModalityHost": True,
        "DicomModalities": modalities,
        # Modalities added through the REST API are kept in modalities.json
        # (written into this file at every start), not in the database.
        "DicomModalitiesInDatabase": False,
        "ExecuteLuaEnabled": False,
        "RestApiWriteToFileSystemEnabled": False,
        "OverwriteInstances": False,
        "StableAge": 5,
        "SaveJobs": False,
        "DicomWeb": {
            "Enable": True,
            "Root": "/dicom-web/",
            "EnableWado": True,
            "Ssl": False,
            "Host": f"127.0.0.1:{settings.http_port}",
            "StudiesMetadata": "Full",
            "SeriesMetadata": "Full",
        },
    }
    path = directory / "orthanc.json"
    write_private(path, json.dumps(config, indent=2) + "\n")
    return path


def managed(settings: OrthancSettings, directory: Path, log_path: Path, account=None):
    """A :class:`~imaginghub.hub.process.Managed` Orthanc configured in
    ``directory`` (config and storage), ready when its DICOMweb answers; run
    as ``account`` (the service account) when given."""
    import httpx

    from .process import Managed

    exe, plugins = find_orthanc()
    config = write_config(settings, directory, plugins)
    auth = (ARCHIVE_USER, settings.password)

    def ready() -> bool:
        with httpx.Client(base_url=settings.url, auth=auth, timeout=10) as c:
            return (c.get("/system").status_code == 200
                    and c.get("/dicom-web/studies?limit=1").status_code == 200)

    return Managed("the archive (Orthanc)", [exe, str(config)], log_path=log_path, ready=ready,
                   account=account)
