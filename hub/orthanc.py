"""The embedded archive: Orthanc with its DICOMweb plugin (Debian packages).

Orthanc 1.10 binds HTTP and DICOM on every interface and has no option to
bind to loopback only, so the configuration written here keeps it safe
otherwise: HTTP only from localhost (``RemoteAccessAllowed`` false) and
behind generated credentials, DIMSE C-STORE only from the modalities listed
in the settings. HTTP compression is off: with it on, every WADO-RS answer
is gzipped on the fly, 30 times slower on loopback.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

ORTHANC_CANDIDATES = ("/usr/sbin/Orthanc", "/usr/bin/Orthanc")
PLUGIN_CANDIDATES = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/plugins/libOrthancDicomWeb.so",
)
ARCHIVE_USER = "imaginghub"


def find_orthanc() -> tuple[str, str]:
    """Paths of the Orthanc binary and its DICOMweb plugin, or a ConfigError
    that says how to install them."""
    exe = next((p for p in ORTHANC_CANDIDATES if Path(p).exists()), None) or shutil.which("Orthanc")
    plugin = next((p for p in PLUGIN_CANDIDATES if Path(p).exists()), None)
    if not exe or not plugin:
        missing = "Orthanc" if not exe else "its DICOMweb plugin"
        raise ConfigError(
            f"{missing} is not installed. Install the archive with "
            "'sudo apt-get install orthanc orthanc-dicomweb' (or run 'make up', which does it)."
        )
    return exe, plugin


@dataclass
class OrthancSettings:
    http_port: int
    dicom_port: int
    password: str
    aet: str = "IMAGINGHUB"
    # {"NAME": ["AET", "host", port]}: the only peers allowed to C-STORE.
    modalities: dict | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"


def write_config(settings: OrthancSettings, directory: Path, plugin: str) -> Path:
    """Write ``orthanc.json`` (0600: it holds the archive's password)."""
    from .state import write_private

    storage = directory / "db"
    storage.mkdir(parents=True, exist_ok=True)
    for name, spec in (settings.modalities or {}).items():
        if not (isinstance(spec, list) and len(spec) == 3):
            raise ConfigError(
                f"modality {name!r} must be [AET, host, port], got {spec!r}: fix settings.json"
            )
    config = {
        "Name": "imaginghub",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "StorageCompression": False,
        "Plugins": [plugin],
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
        "DicomCheckModalityHost": True,
        "DicomModalities": settings.modalities or {},
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


def managed(settings: OrthancSettings, directory: Path, log_path: Path):
    """A :class:`~imaginghub.hub.process.Managed` Orthanc configured in
    ``directory`` (config and storage), ready when its DICOMweb answers."""
    import httpx

    from .process import Managed

    exe, plugin = find_orthanc()
    config = write_config(settings, directory, plugin)
    auth = (ARCHIVE_USER, settings.password)

    def ready() -> bool:
        with httpx.Client(base_url=settings.url, auth=auth, timeout=10) as c:
            return (c.get("/system").status_code == 200
                    and c.get("/dicom-web/studies?limit=1").status_code == 200)

    return Managed("the archive (Orthanc)", [exe, str(config)], log_path=log_path, ready=ready)
