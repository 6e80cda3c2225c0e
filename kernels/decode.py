"""From a DICOM instance to frames: geometry, rescale and pixels.

Uncompressed little-endian pixel data is read straight from the stored bytes
(no copy); everything else goes through pydicom's decoders (pylibjpeg with
libjpeg, openjpeg and RLE plugins), which cover JPEG baseline and lossless,
JPEG-LS, JPEG 2000 and RLE.

:func:`quick_frame` is the fast path for the bulk of a series: the common
single-frame, uncompressed, explicit VR little-endian image, whose dozen
attributes that place it in the volume are read without building a pydicom
dataset (about 45 us instead of 0.7 ms per instance, which is most of a
series' load time). pydicom reads the first instance of every series in
full, and :func:`quick_frame` must agree with it there (see
``PACS.load_series``); anything else it does not cover goes to pydicom.
"""

from __future__ import annotations

import struct
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
            "placed in a volume; pacs.load_images(series_uid) loads any image series as "
            "frames"
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
        return _stored_bits(arr, bits, int(getattr(ds, "BitsStored", bits)), signed)
    try:
        arr = ds.pixel_array
    except Exception as e:  # each decoder fails in its own way
        raise CorruptData(
            f"instance {getattr(ds, 'SOPInstanceUID', '?')}: its pixel data "
            f"({getattr(tsuid, 'name', tsuid)}) cannot be decoded: {e}"
        ) from None
    return arr.reshape(nframes, rows, cols)


def _stored_bits(arr: np.ndarray, bits: int, stored: int, signed: bool) -> np.ndarray:
    """Stored values without the bits above BitsStored (sign-extended)."""
    if stored < bits:
        shift = bits - stored
        arr = (arr << shift) >> shift if signed else arr & ((1 << stored) - 1)
    return arr


def frames_and_pixels(ds: Dataset) -> Iterator[tuple[Frame, np.ndarray]]:
    frames = frames_of(ds)
    pixels = pixels_of(ds)
    if len(frames) != pixels.shape[0]:
        raise NotAVolume(
            f"instance {getattr(ds, 'SOPInstanceUID', '?')} describes {len(frames)} frames "
            f"but holds {pixels.shape[0]}"
        )
    yield from zip(frames, pixels)


def decode_instance(body) -> tuple[list[Frame], np.ndarray] | None:
    """The frames and stored values ``(frames, rows, cols)`` of one DICOM
    file, None if it holds no pixel data: what a worker process does for a
    compressed instance."""
    from pydicom import dcmread
    from pydicom.filebase import DicomBytesIO

    ds = dcmread(DicomBytesIO(body), force=True)
    if "PixelData" not in ds:
        return None
    frames, pixels = frames_of(ds), np.asarray(pixels_of(ds))
    if len(frames) != pixels.shape[0]:
        raise NotAVolume(f"instance {getattr(ds, 'SOPInstanceUID', '?')} describes "
                         f"{len(frames)} frames but holds {pixels.shape[0]}")
    return frames, pixels


def stored_compressed(body) -> bool:
    """Whether a DICOM file's transfer syntax (read from its file meta
    information, without pydicom) is anything but uncompressed little endian."""
    try:
        if bytes(body[128:132]) != b"DICM":
            return False
        pos = 132
        while pos + 8 <= len(body):
            tag, _, length, pos = _header(body, pos)
            if tag >> 16 != 2:
                return False
            if tag == 0x00020010:
                syntax = bytes(body[pos:pos + length]).rstrip(b"\0 ").decode("ascii")
                return syntax not in _RAW_LE
            pos += length
    except (struct.error, UnicodeDecodeError):
        pass
    return False


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


# -- the fast path ---------------------------------------------------------
_EXPLICIT_LE = ExplicitVRLittleEndian.encode()
# explicit VRs whose length is 4 bytes after 2 reserved ones (PS3.5 7.1.2)
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR",
             b"UT", b"UV"}
_TAG = struct.Struct("<HH")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
# the attributes that place a single-frame image and scale its values
_WANTED = {0x00080018: "SOPInstanceUID", 0x00180050: "SliceThickness",
           0x00200032: "ImagePositionPatient", 0x00200037: "ImageOrientationPatient",
           0x00280002: "SamplesPerPixel", 0x00280008: "NumberOfFrames", 0x00280010: "Rows",
           0x00280011: "Columns", 0x00280030: "PixelSpacing", 0x00280100: "BitsAllocated",
           0x00280101: "BitsStored", 0x00280103: "PixelRepresentation",
           0x00281052: "RescaleIntercept", 0x00281053: "RescaleSlope",
           0x52009229: "SharedFunctionalGroupsSequence",
           0x52009230: "PerFrameFunctionalGroupsSequence"}


def _header(body, pos: int) -> tuple[int, bytes, int, int]:
    """An explicit VR little-endian element's tag, VR, value length and
    where its value starts."""
    group, element = _TAG.unpack_from(body, pos)
    vr = bytes(body[pos + 4:pos + 6])
    if vr in _LONG_VRS:
        return group << 16 | element, vr, _U32.unpack_from(body, pos + 8)[0], pos + 12
    return group << 16 | element, vr, _U16.unpack_from(body, pos + 6)[0], pos + 8


class _NotCovered(Exception):
    """The instance is outside the fast path; pydicom reads it."""


def quick_frame(body) -> tuple[Frame, np.ndarray] | None:
    """The frame and its stored values (a view of ``body``) of a single-frame,
    uncompressed, explicit VR little-endian DICOM file, or None for anything
    else (then pydicom reads it)."""
    try:
        found, pixels_at, pixels_length = _scan(body)
    except (_NotCovered, struct.error, UnicodeDecodeError, ValueError):
        return None
    if any(k in found for k in ("SharedFunctionalGroupsSequence",
                                "PerFrameFunctionalGroupsSequence")):
        return None
    if int(found.get("NumberOfFrames") or 1) != 1 or found.get("SamplesPerPixel", 1) != 1:
        return None
    rows, cols, bits = found.get("Rows"), found.get("Columns"), found.get("BitsAllocated")
    if not rows or not cols or bits not in (8, 16, 32):
        return None
    if pixels_length < rows * cols * bits // 8:
        return None  # truncated: pydicom says what is wrong
    try:
        frame = _frame(*(_split(found.get(k)) for k in (
            "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")),
            found.get("SliceThickness"), found.get("RescaleSlope"),
            found.get("RescaleIntercept"), None)
    except (NotAVolume, ValueError):
        return None  # pydicom raises the message that names the instance
    frame.source = (found.get("SOPInstanceUID", ""), 1)
    signed = found.get("PixelRepresentation", 0) == 1
    dtype = np.dtype(f"<{'i' if signed else 'u'}{bits // 8}")
    arr = np.frombuffer(body, dtype=dtype, count=rows * cols, offset=pixels_at)
    return frame, _stored_bits(arr.reshape(rows, cols), bits,
                               found.get("BitsStored", bits), signed)


def _split(value: str | None):
    return value.split("\\") if value else None


def _scan(body) -> tuple[dict, int, int]:
    """The wanted attributes (strings, or ints for US) and where the pixel
    data lie; raises _NotCovered where the fast path does not apply."""
    if bytes(body[128:132]) != b"DICM":
        raise _NotCovered
    found: dict = {}
    pos, end, syntax = 132, len(body), None
    while pos + 8 <= end:
        tag, vr, length, pos = _header(body, pos)
        if tag >> 16 == 2:  # file meta: always explicit VR little endian
            if tag == 0x00020010:
                syntax = bytes(body[pos:pos + length]).rstrip(b"\0 ")
        elif syntax != _EXPLICIT_LE:
            raise _NotCovered  # implicit VR, big endian, compressed
        elif tag == 0x7FE00010:
            if length == _UNDEFINED or pos + length > end:
                raise _NotCovered
            return found, pos, length
        elif length == _UNDEFINED:
            if vr != b"SQ":
                raise _NotCovered
            if tag in _WANTED:
                found[_WANTED[tag]] = True
            pos = _after_sequence(body, pos, end)
            continue
        elif tag in _WANTED:
            if vr == b"US":
                found[_WANTED[tag]] = _U16.unpack_from(body, pos)[0]
            elif vr == b"SQ":
                found[_WANTED[tag]] = True
            else:
                found[_WANTED[tag]] = bytes(body[pos:pos + length]).rstrip(b"\0 ").decode("ascii")
        pos += length
    raise _NotCovered  # no pixel data


def _after_sequence(body, pos: int, end: int) -> int:
    """Where a sequence of undefined length that starts at ``pos`` ends."""
    while pos + 8 <= end:
        group, element = _TAG.unpack_from(body, pos)
        length = _U32.unpack_from(body, pos + 4)[0]
        pos += 8
        tag = group << 16 | element
        if tag == _SEQUENCE_END:
            return pos
        if tag != _ITEM:
            raise _NotCovered
        pos = _after_item(body, pos, end) if length == _UNDEFINED else pos + length
    raise _NotCovered


def _after_item(body, pos: int, end: int) -> int:
    """Where an item of undefined length that starts at ``pos`` ends."""
    while pos + 8 <= end:
        group, element = _TAG.unpack_from(body, pos)
        if (group << 16 | element) == _ITEM_END:
            return pos + 8
        _, vr, length, pos = _header(body, pos)
        if length == _UNDEFINED:
            if vr != b"SQ":
                raise _NotCovered
            pos = _after_sequence(body, pos, end)
        else:
            pos += length
    raise _NotCovered
