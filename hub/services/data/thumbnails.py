"""One small picture per series: the middle image (middle frame of a
multi-frame image or cine), in colour where it is colour, grey windowed as
its header says (its window or VOI LUT, else the 1st to 99th percentile),
at most 128 pixels on its longer side, PNG.
Made once from the archive, kept in the service's folder, served by the
catalog API to whoever may see the series."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

SIZE = 128


def render(dicom: bytes) -> bytes:
    """PNG bytes of one DICOM instance's middle frame, as ``view(images)``
    shows it (:meth:`Instance.display`): colour in colour (palette and YBR
    too), grey through the header's window or VOI LUT, else the 1st to 99th
    percentile, MONOCHROME1 inverted."""
    from PIL import Image

    from ....kernels.images import instance_from_bytes

    inst = instance_from_bytes(dicom)
    if inst is None:
        raise ValueError("the instance has no pixel data")
    middle = inst.frames // 2
    window = None
    if not inst.color and inst.window is None and (
            inst.display_header is None or "VOILUTSequence" not in inst.display_header):
        lo, hi = np.percentile(inst.pixels[middle], [1, 99])
        window = ((lo + hi) / 2, max(float(hi - lo), 1e-6))
    shown = inst.display(middle, window)
    image = Image.fromarray(shown, "RGB" if shown.ndim == 3 else "L")
    image.thumbnail((SIZE, SIZE))
    out = io.BytesIO()
    image.save(out, "PNG", optimize=True)
    return out.getvalue()


class ThumbnailStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def path(self, series_uid: str) -> Path:
        return self.root / f"{series_uid}.png"

    def get(self, series_uid: str) -> bytes | None:
        try:
            return self.path(series_uid).read_bytes()
        except OSError:
            return None

    def put(self, series_uid: str, png: bytes) -> None:
        tmp = self.root / f".{series_uid}.{os.getpid()}.tmp"
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
            f.write(png)  # patient images: readable by the service alone
        os.replace(tmp, self.path(series_uid))
