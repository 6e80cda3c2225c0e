"""One small picture per series: the middle image (middle frame of a
multi-frame image), windowed as its header says (WindowCenter/Width, else
the 1st to 99th percentile), at most 128 pixels on its longer side, PNG.
Made once from the archive, kept in the service's folder, served by the
catalog API to whoever may see the series."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

SIZE = 128


def render(dicom: bytes) -> bytes:
    """PNG bytes of one DICOM instance's middle frame."""
    from PIL import Image
    from pydicom import dcmread

    from ....kernels.decode import pixels_of

    ds = dcmread(io.BytesIO(dicom), force=True)
    if int(getattr(ds, "SamplesPerPixel", 1)) == 3:
        rgb = ds.pixel_array
        frame = rgb[len(rgb) // 2] if rgb.ndim == 4 else rgb
        image = Image.fromarray(np.asarray(frame, np.uint8), "RGB")
    else:
        frames = pixels_of(ds)
        frame = frames[len(frames) // 2].astype(np.float32)
        slope = float(getattr(ds, "RescaleSlope", 1) or 1)
        intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
        frame = frame * slope + intercept
        lo, hi = _window(ds, frame)
        scaled = np.clip((frame - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)
        if str(getattr(ds, "PhotometricInterpretation", "")) == "MONOCHROME1":
            scaled = 255 - scaled
        image = Image.fromarray(scaled, "L")
    image.thumbnail((SIZE, SIZE))
    out = io.BytesIO()
    image.save(out, "PNG", optimize=True)
    return out.getvalue()


def _window(ds, frame: np.ndarray) -> tuple[float, float]:
    """(low, high) from the first WindowCenter/Width, else percentiles."""
    from pydicom.multival import MultiValue

    def first(value):
        return float(value[0]) if isinstance(value, (MultiValue, list, tuple)) else float(value)

    try:
        c, w = first(ds.WindowCenter), first(ds.WindowWidth)
        if w > 0:
            return c - w / 2, c + w / 2
    except (AttributeError, TypeError, ValueError, IndexError):
        pass
    lo, hi = np.percentile(frame, [1, 99])
    return float(lo), float(hi)


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
