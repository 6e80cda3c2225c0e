"""A throwaway Orthanc for benchmarks, configured exactly as `imaginghub up` does."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

import httpx

from imaginghub.hub import orthanc
from imaginghub.hub.process import Managed
from imaginghub.hub.state import free_port


@contextlib.contextmanager
def running_archive():
    exe, plugin = orthanc.find_orthanc()
    with tempfile.TemporaryDirectory() as d:
        settings = orthanc.OrthancSettings(http_port=free_port(), dicom_port=free_port(),
                                           password="bench")
        config = orthanc.write_config(settings, Path(d), plugin)
        auth = (orthanc.ARCHIVE_USER, settings.password)
        proc = Managed("orthanc", [exe, str(config)], log_path=Path(d) / "orthanc.log",
                       ready=lambda: httpx.get(f"{settings.url}/system", auth=auth).status_code == 200)
        proc.start()
        try:
            proc.wait_ready(60)
            yield settings, auth
        finally:
            proc.stop()
