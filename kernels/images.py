"""Any image series as frames: radiographs, mammograms, ultrasound cine,
endoscopy and photographs, secondary captures: what is not a volume
(:mod:`.volume`) or need not be one.

An :class:`Images` holds one :class:`Instance` per DICOM instance, each
with its frames as one array, ``(frames, rows, columns)`` or ``(frames,
rows, columns, 3)`` for colour, in the units the header gives them:

- grey values are the stored values with the modality LUT or rescale
  applied (pydicom's ``apply_modality_lut``); MONOCHROME1 stays as stored
  and is inverted only for display, after the window or VOI LUT;
- colour is RGB: YBR_FULL and YBR_FULL_422 are converted by pydicom's
  decoders, PALETTE COLOR goes through its LUTs (``apply_color_lut``);
- a cine's timing comes from Frame Time or Frame Time Vector; its pixel
  spacing from PixelSpacing, ImagerPixelSpacing (at the detector) or the
  ultrasound regions, and the instance says which it used.

Instances are stacked into one array (:attr:`Images.array`) only where
their frame size and photometric interpretation match; otherwise the
series is a list of instances, and the object says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset

from .errors import PACSError

# What display needs of an instance's header (pydicom's VOI functions read it).
_DISPLAY_KEYWORDS = ("PhotometricInterpretation", "BitsStored", "BitsAllocated",
                     "PixelRepresentation", "WindowCenter", "WindowWidth",
                     "VOILUTFunction", "VOILUTSequence", "RescaleSlope", "RescaleIntercept",
                     "RescaleType", "ModalityLUTSequence")
DETECTOR_SPACING = "ImagerPixelSpacing (at the detector)"
_US_REGIONS = "SequenceOfUltrasoundRegions"
_CM_UNITS = 3  # PhysicalUnitsXDirection: cm


class NotStackable(PACSError):
    """The instances of a series differ in frame size or colour."""


@dataclass
class Instance:
    """One DICOM instance's frames and what is needed to show them."""

    sop_uid: str
    number: int | None            # InstanceNumber
    pixels: np.ndarray            # (frames, rows, cols) or (frames, rows, cols, 3)
    photometric: str              # as stored (the pixels are RGB for any colour)
    modality: str = ""
    frame_time_ms: float | None = None         # time between frames, if regular
    frame_starts_ms: np.ndarray | None = None  # each frame's start (cine)
    spacing: tuple[float, float] | None = None  # (between rows, between columns), mm
    spacing_source: str | None = None           # the attribute it came from
    window: tuple[float, float] | None = None   # the header's first (center, width)
    frame_metadata: list[dict] = field(default_factory=list)
    display_header: Dataset | None = field(default=None, repr=False)

    @property
    def frames(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def color(self) -> bool:
        return self.pixels.ndim == 4

    @property
    def size(self) -> tuple[int, int]:
        return int(self.pixels.shape[1]), int(self.pixels.shape[2])

    @property
    def frame_rate(self) -> float | None:
        """Frames per second from the header's timing, if it has any."""
        if self.frame_starts_ms is not None and len(self.frame_starts_ms) > 1:
            step = float(np.median(np.diff(self.frame_starts_ms)))
            return 1000.0 / step if step > 0 else None
        return 1000.0 / self.frame_time_ms if self.frame_time_ms else None

    def display(self, frame: int = 0, window: tuple[float, float] | None = None) -> np.ndarray:
        """Frame ``frame`` as 8-bit for the screen: (rows, cols) grey or
        (rows, cols, 3) RGB. Grey goes through ``window`` (center, width),
        else the header's VOI LUT or window (pydicom's ``apply_voi_lut``),
        else its own range; MONOCHROME1 is inverted after that."""
        pixels = self.pixels[frame]
        if self.color:
            top = float(pixels.max()) if pixels.dtype.kind == "f" else \
                float(np.iinfo(pixels.dtype).max if pixels.max() > 255 else 255)
            return np.clip(pixels.astype(np.float32) * (255.0 / max(top, 1.0)), 0, 255
                           ).astype(np.uint8)
        values, low, high = self._voi(pixels.astype(np.float64), window)
        out = (np.clip((values - low) / max(high - low, 1e-9), 0.0, 1.0) * 255.0)
        if self.photometric == "MONOCHROME1":
            out = 255.0 - out
        return out.astype(np.uint8)

    def _voi(self, values: np.ndarray, window):
        """The values of interest and their output range."""
        if window is not None:
            center, width = window
            return values, center - width / 2, center + width / 2
        header = self.display_header
        if header is not None and ("VOILUTSequence" in header or "WindowWidth" in header):
            from pydicom.pixels import apply_voi_lut

            voi = _without_rescale(header)
            try:
                if "VOILUTSequence" in voi:  # a table: looked up by whole numbers
                    count, first = (int(v) for v in voi.VOILUTSequence[0].LUTDescriptor[:2])
                    values = np.rint(values).astype(np.int64)
                    probe = np.array([first, first + (count or 65536) - 1], np.int64)
                else:
                    probe = np.array([-1e12, 1e12])
                out = np.asarray(apply_voi_lut(values, voi), dtype=np.float64)
                ends = np.asarray(apply_voi_lut(probe, voi), dtype=np.float64)
                low, high = float(ends.min()), float(ends.max())
                if high > low:
                    return out, low, high
            except (ValueError, TypeError, AttributeError, IndexError):
                pass  # a header pydicom cannot apply: the frame's own range
        return values, float(values.min()), float(values.max())


def _without_rescale(header: Dataset) -> Dataset:
    """The header for the VOI step alone: the pixels have had their
    rescale applied already."""
    voi = Dataset()
    for k in _DISPLAY_KEYWORDS:
        if k in header and k not in ("RescaleSlope", "RescaleIntercept", "ModalityLUTSequence"):
            setattr(voi, k, header[k].value)
    return voi


class Images:
    """The instances of an image series (see the module's docstring)."""

    def __init__(self, instances: list[Instance], metadata: dict | None = None):
        self.instances = sorted(instances, key=lambda i: (i.number is None, i.number or 0,
                                                          i.sop_uid))
        self.metadata = dict(metadata or {})

    def __len__(self) -> int:
        return len(self.instances)

    def __getitem__(self, i: int) -> Instance:
        return self.instances[i]

    def __iter__(self):
        return iter(self.instances)

    @property
    def frames(self) -> int:
        return sum(i.frames for i in self.instances)

    @property
    def stackable(self) -> bool:
        """Whether every instance has the same frame size and colour."""
        kinds = {(i.pixels.shape[1:], i.photometric, i.pixels.dtype.kind)
                 for i in self.instances}
        return len(kinds) == 1

    @property
    def array(self) -> np.ndarray:
        """Every frame of the series in one array (instances in
        InstanceNumber order); :class:`NotStackable` when their frame sizes
        or colours differ (then use :attr:`instances`)."""
        if not self.instances:
            raise NotStackable("the series has no images")
        if not self.stackable:
            raise NotStackable(f"{self._kinds()}: the frames do not fit one array; use "
                               "images.instances (one array per instance)")
        if len(self.instances) == 1:
            return self.instances[0].pixels
        return np.concatenate([i.pixels for i in self.instances])

    def _kinds(self) -> str:
        seen: dict[str, int] = {}
        for i in self.instances:
            key = f"{i.size[0]}x{i.size[1]} {i.photometric}"
            seen[key] = seen.get(key, 0) + 1
        return ", ".join(f"{n} x {k}" for k, n in seen.items())

    def locate(self, frame: int) -> tuple[Instance, int]:
        """The instance and its frame index of frame ``frame`` of the series."""
        for inst in self.instances:
            if frame < inst.frames:
                return inst, frame
            frame -= inst.frames
        raise IndexError("frame out of range")

    def __repr__(self) -> str:
        what = self.metadata.get("Modality", "")
        desc = self.metadata.get("SeriesDescription", "")
        if not self.instances:
            return f"<Images {what} {desc!r}: no images>"
        first = self.instances[0]
        parts = [f"{len(self)} instance{'s' * (len(self) != 1)}", f"{self.frames} frames"]
        parts.append(f"{first.size[0]}x{first.size[1]} "
                     + ("colour" if first.color else "grey") + f" ({first.photometric})"
                     if self.stackable else f"a list: {self._kinds()}")
        if first.frame_rate:
            parts.append(f"{first.frame_rate:.1f} frames/s")
        if first.spacing:
            parts.append(f"spacing {first.spacing[0]:.3g} x {first.spacing[1]:.3g} mm "
                         f"({first.spacing_source})")
        return f"<Images {what} {desc!r}: " + ", ".join(parts) + ">"


# -- one instance -----------------------------------------------------------------
def instance_of(ds: Dataset, part: tuple[int, int] | None = None) -> Instance | None:
    """The :class:`Instance` of a dataset with pixel data (None without).
    With ``part`` (start, stop), only those frames are decoded (a worker
    process's share of a long cine); :func:`joined` puts the parts
    together."""
    from pydicom.pixels import apply_color_lut, apply_modality_lut, pixel_array

    if "PixelData" not in ds:
        return None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if part is None or frames == 1:
        arr = ds.pixel_array  # YBR_* to RGB by pydicom's decoders
    else:  # the same decoders, a frame at a time
        arr = np.stack([pixel_array(ds, index=i) for i in range(*part)])
    photometric = str(ds.get("PhotometricInterpretation", ""))
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
        samples = 3
    elif samples == 1:
        arr = apply_modality_lut(arr, ds)
    if frames == 1 or part is not None and arr.ndim == (2 if samples == 1 else 3):
        arr = arr[None]
    if samples == 1 and arr.ndim != 3 or samples == 3 and arr.ndim != 4:
        raise PACSError(f"instance {ds.get('SOPInstanceUID', '?')}: pixels of shape "
                        f"{arr.shape} for {frames} frame(s) of {samples} sample(s)")
    spacing, source = _spacing(ds)
    starts, step = _timing(ds, frames)
    header = Dataset()
    for k in _DISPLAY_KEYWORDS:
        if k in ds:
            setattr(header, k, ds[k].value)
    number = ds.get("InstanceNumber")
    return Instance(
        sop_uid=str(ds.get("SOPInstanceUID", "")),
        number=int(number) if number not in (None, "") else None,
        pixels=np.ascontiguousarray(arr), photometric=photometric,
        modality=str(ds.get("Modality", "")), frame_time_ms=step, frame_starts_ms=starts,
        spacing=spacing, spacing_source=source, window=_window(ds),
        frame_metadata=_per_frame(ds, frames), display_header=header)


def instance_from_bytes(body: bytes, part: tuple[int, int] | None = None) -> Instance | None:
    """:func:`instance_of` a DICOM file's bytes (what a worker process does
    for a compressed instance, or for ``part`` of its frames)."""
    from pydicom import dcmread
    from pydicom.filebase import DicomBytesIO

    return instance_of(dcmread(DicomBytesIO(body), force=True), part)


def joined(parts: list[Instance]) -> Instance:
    """One instance from the parts of its frames, in order."""
    from dataclasses import replace

    if len(parts) == 1:
        return parts[0]
    return replace(parts[0], pixels=np.concatenate([p.pixels for p in parts]))


def _spacing(ds: Dataset) -> tuple[tuple[float, float] | None, str | None]:
    def pair(value):
        try:
            row, col = (float(v) for v in value)
            return (row, col) if row > 0 and col > 0 else None
        except (TypeError, ValueError):
            return None

    measures = None
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared and "PixelMeasuresSequence" in shared[0]:
        measures = shared[0].PixelMeasuresSequence[0]
    for owner, keyword, label in ((ds, "PixelSpacing", "PixelSpacing"),
                                  (measures, "PixelSpacing", "PixelSpacing"),
                                  (ds, "ImagerPixelSpacing", DETECTOR_SPACING)):
        if owner is not None and keyword in owner:
            found = pair(owner.get(keyword))
            if found:
                return found, label
    for region in ds.get("SequenceOfUltrasoundRegions", []) or []:
        if (region.get("PhysicalUnitsXDirection") == _CM_UNITS
                and region.get("PhysicalUnitsYDirection") == _CM_UNITS):
            found = pair([region.get("PhysicalDeltaY"), region.get("PhysicalDeltaX")])
            if found:
                return (found[0] * 10.0, found[1] * 10.0), _US_REGIONS
    return None, None


def _timing(ds: Dataset, frames: int) -> tuple[np.ndarray | None, float | None]:
    """(each frame's start in ms, the regular step) from Frame Time or the
    Frame Time Vector (increments, the first 0)."""
    vector = ds.get("FrameTimeVector")
    if vector is not None and frames > 1:
        steps = np.asarray([float(v) for v in vector], dtype=np.float64)
        if len(steps) == frames:
            starts = np.cumsum(steps)
            starts -= starts[0]
            diffs = np.diff(starts)
            regular = bool(diffs.size) and float(np.ptp(diffs)) < 1e-6
            return starts, float(diffs[0]) if regular else None
    frame_time = ds.get("FrameTime")
    if frame_time not in (None, "") and frames > 1:
        step = float(frame_time)
        if step > 0:
            return np.arange(frames, dtype=np.float64) * step, step
    rate = ds.get("RecommendedDisplayFrameRate") or ds.get("CineRate")
    if rate not in (None, "") and frames > 1 and float(rate) > 0:
        step = 1000.0 / float(rate)
        return np.arange(frames, dtype=np.float64) * step, step
    return None, None


def _window(ds: Dataset) -> tuple[float, float] | None:
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None:
        return None

    def first(v):
        from pydicom.multival import MultiValue

        return float(v[0]) if isinstance(v, (MultiValue, list, tuple)) else float(v)

    try:
        return first(center), first(width)
    except (TypeError, ValueError, IndexError):
        return None


def _per_frame(ds: Dataset, frames: int) -> list[dict]:
    """Each frame's own attributes (an enhanced instance's per-frame
    functional groups, flattened to keywords), and its start time."""
    out: list[dict] = [{} for _ in range(frames)]
    groups = ds.get("PerFrameFunctionalGroupsSequence") or []
    for item, meta in zip(groups, out):
        for element in item:
            if element.VR == "SQ":
                for sub in element.value[:1]:
                    for e in sub:
                        if e.VR != "SQ" and e.keyword:
                            meta[e.keyword] = _plain(e.value)
    starts, _ = _timing(ds, frames)
    if starts is not None:
        for meta, t in zip(out, starts):
            meta["time_ms"] = float(t)
    return out


def _plain(value):
    """A JSON-like value of an element."""
    if isinstance(value, (str, int, float)) or value is None:
        return value
    try:
        return [_plain(v) for v in value]
    except TypeError:
        return str(value)
