"""A throwaway Orthanc for benchmarks, configured exactly as `imaginghub up` does."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

from imaginghub.hub import orthanc
from imaginghub.hub.state import free_port


@contextlib.contextmanager
def running_archive():
    with tempfile.TemporaryDirectory() as d:
        settings = orthanc.OrthancSettings(http_port=free_port(), dicom_port=free_port(),
                                           password="bench")
        proc = orthanc.managed(settings, Path(d), Path(d) / "orthanc.log")
        proc.start()
        try:
            proc.wait_ready(60)
            yield settings, (orthanc.ARCHIVE_USER, settings.password)
        finally:
            proc.stop()
