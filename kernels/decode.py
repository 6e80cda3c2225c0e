"""From a DICOM instance to frames: geometry, rescale and pixels.

Uncompressed little-endian pixel data is read straight from the stored bytes
(no copy); everything else goes through pydicom's decoders (pylibjpeg with
libjpeg, openjpeg and RLE plugins), which cover JPEG baseline and lossless,
JPEG-LS, JPEG 2000 and RLE.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from .errors import CorruptData, NotAVolume
from .volume import Frame

_RAW_LE = {ExplicitVRLittleEndian, ImplicitVRLittleEndian}


def _first(seq_owner, keyword):
    seq = getattr(seq_owner, keyword, None) if seq_owner is not None else None
    return seq[0] if seq else None


def _group(per_frame, shared, keyword):
    """A functional group item: the frame's own, else the shared one."""
    return _first(per_frame, keyword) or _first(shared, keyword)


def _floats(value, n):
    if value is None:
        return None
    vals = [float(v) for v in value]
    return np.array(vals) if len(vals) == n else None


def frames_of(ds: Dataset) -> list[Frame]:
    """The geometry of every frame of ``ds`` (classic or enhanced multi-frame),
    each with its source: ``(SOPInstanceUID, frame number)``."""
    frames = _geometry(ds)
    sop_uid = ds.get("SOPInstanceUID")
    if sop_uid:
        for number, f in enumerate(frames, start=1):
            f.source = (str(sop_uid), number)
    return frames


def _geometry(ds: Dataset) -> list[Frame]:
    nframes = int(getattr(ds, "NumberOfFrames", 1) or 1)
    per_frame_seq = getattr(ds, "PerFrameFunctionalGroupsSequence", None)
    if per_frame_seq:
        shared = _first(ds, "SharedFunctionalGroupsSequence")
        frames = []
        for item in per_frame_seq:
            pos = _group(item, shared, "PlanePositionSequence")
            ori = _group(item, shared, "PlaneOrientationSequence")
            meas = _group(item, shared, "PixelMeasuresSequence")
            pvt = _group(item, shared, "PixelValueTransformationSequence")
            frames.append(_frame(
                getattr(pos, "ImagePositionPatient", None),
                getattr(ori, "ImageOrientationPatient", None),
                getattr(meas, "PixelSpacing", None),
                getattr(meas, "SliceThickness", None),
                getattr(pvt, "RescaleSlope", None) if pvt is not None else getattr(ds, "RescaleSlope", None),
                getattr(pvt, "RescaleIntercept", None) if pvt is not None else getattr(ds, "RescaleIntercept", None),
                ds,
            ))
        return frames
    frame = _frame(
        getattr(ds, "ImagePositionPatient", None),
        getattr(ds, "ImageOrientationPatient", None),
        getattr(ds, "PixelSpacing", None),
        getattr(ds, "SliceThickness", None),
        getattr(ds, "RescaleSlope", None),
        getattr(ds, "RescaleIntercept", None),
        ds,
    )
    if nframes == 1:
        return [frame]
    # A classic multi-frame image without functional groups: frames stacked
    # along the normal at SpacingBetweenSlices (or the thickness).
    step = float(getattr(ds, "SpacingBetweenSlices", 0) or frame.thickness or 1.0)
    normal = np.cross(frame.orientation[:3], frame.orientation[3:])
    return [
        Frame(frame.position + i * step * normal, frame.orientation, frame.pixel_spacing,
              frame.thickness, frame.slope, frame.intercept)
        for i in range(nframes)
    ]


def _frame(position, orientation, spacing, thickness, slope, intercept, ds) -> Frame:
    pos = _floats(position, 3)
    ori = _floats(orientation, 6)
    if pos is None or ori is None:
        raise NotAVolume(
            f"instance {getattr(ds, 'SOPInstanceUID', '?')} has no image position or "
            "orientation (ImagePositionPatient / ImageOrientationPatient): it cannot be "
            "placed in a volume"
        )
    sp = _floats(spacing, 2)
    return Frame(
        position=pos,
        orientation=ori,
        pixel_spacing=(float(sp[0]), float(sp[1])) if sp is not None else (1.0, 1.0),
        thickness=float(thickness) if thickness not in (None, "") else None,
        slope=float(slope) if slope not in (None, "") else 1.0,
        intercept=float(intercept) if intercept not in (None, "") else 0.0,
    )


def pixels_of(ds: Dataset) -> np.ndarray:
    """Stored pixel values as ``(frames, rows, cols)``, a view of the stored
    bytes where the encoding allows it."""
    if int(getattr(ds, "SamplesPerPixel", 1)) != 1:
        raise NotAVolume(
            f"colour images (SamplesPerPixel={ds.SamplesPerPixel}) are not a scalar volume; "
            "use pacs.retrieve_instance and ds.pixel_array"
        )
    rows, cols = int(ds.Rows), int(ds.Columns)
    nframes = int(getattr(ds, "NumberOfFrames", 1) or 1)
    tsuid = ds.file_meta.TransferSyntaxUID if hasattr(ds, "file_meta") else None
    bits = int(ds.BitsAllocated)
    if tsuid in _RAW_LE and bits in (8, 16, 32) and "PixelData" in ds:
        signed = int(getattr(ds, "PixelRepresentation", 0)) == 1
        dtype = np.dtype(f"<{'i' if signed else 'u'}{bits // 8}")
        count = nframes * rows * cols
        arr = np.frombuffer(ds.PixelData, dtype=dtype, count=count).reshape(nframes, rows, cols)
        stored = int(getattr(ds, "BitsStored", bits))
        if stored < bits:
            shift = bits - stored
            arr = (arr << shift) >> shift if signed else arr & ((1 << stored) - 1)
        return arr
    try:
        arr = ds.pixel_array
    except Exception as e:  # each decoder fails in its own way
        raise CorruptData(
            f"instance {getattr(ds, 'SOPInstanceUID', '?')}: its pixel data "
            f"({getattr(tsuid, 'name', tsuid)}) cannot be decoded: {e}"
        ) from None
    return arr.reshape(nframes, rows, cols)


def frames_and_pixels(ds: Dataset) -> Iterator[tuple[Frame, np.ndarray]]:
    frames = frames_of(ds)
    pixels = pixels_of(ds)
    if len(frames) != pixels.shape[0]:
        raise NotAVolume(
            f"instance {getattr(ds, 'SOPInstanceUID', '?')} describes {len(frames)} frames "
            f"but holds {pixels.shape[0]}"
        )
    yield from zip(frames, pixels)


def decode_pixels(body: bytes) -> np.ndarray:
    """Stored pixel values of one DICOM file, ``(frames, rows, cols)``: what
    a worker process does for a compressed instance."""
    from pydicom import dcmread
    from pydicom.filebase import DicomBytesIO

    return np.array(pixels_of(dcmread(DicomBytesIO(body), force=True)))


def is_compressed(ds: Dataset) -> bool:
    tsuid = ds.file_meta.TransferSyntaxUID if hasattr(ds, "file_meta") else None
    return tsuid is not None and tsuid not in _RAW_LE


_POOL = None


def worker_pool():
    """Processes that decode compressed frames (the decoders hold the GIL, so
    threads would not help). Started once per kernel, on first need."""
    global _POOL
    if _POOL is None:
        import multiprocessing
        import os
        from concurrent.futures import ProcessPoolExecutor

        # forkserver: a kernel has threads (ZeroMQ), which fork would copy half-alive
        _POOL = ProcessPoolExecutor(max_workers=max(1, os.cpu_count() or 1),
                                    mp_context=multiprocessing.get_context("forkserver"))
    return _POOL
