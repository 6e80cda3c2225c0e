"""Compressed instances and frames sent uncompressed, made by the data
service (pydicom with pylibjpeg's decoders, in worker processes).

DICOMweb clients and web viewers ask for the default syntax (explicit VR
little endian) unless told otherwise. The archive should not be asked to
convert: Orthanc 1.10 crashed here when asked for JPEG-LS or RLE, and with
the orthanc-gdcm 1.5 plugin loaded it also crashed rendering a 12-bit JPEG
(measured, see docs/dependencies.md). So the gateway asks the archive only
for what it stores, and converts compressed data itself: to explicit or
implicit VR little endian, keeping every UID (the conversion is lossless).
Any other syntax is served only where it is the stored one.
"""

from __future__ import annotations

import io
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
# What the service makes from any syntax pydicom can decode.
TARGETS = {EXPLICIT_LE: "explicit VR little endian", IMPLICIT_LE: "implicit VR little endian"}

_POOL: ProcessPoolExecutor | None = None


def pool() -> ProcessPoolExecutor:
    """Worker processes for decoding (the decoders hold the GIL); forkserver:
    the service has threads, which a fork would copy half-way."""
    global _POOL
    if _POOL is None:
        _POOL = ProcessPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1)),
                                    mp_context=multiprocessing.get_context("forkserver"))
    return _POOL


def stored_syntax(data: bytes) -> str:
    import pydicom

    return str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta
               .TransferSyntaxUID)


def convert(data: bytes, target: str) -> bytes:
    """The instance ``data`` (a DICOM file) in the uncompressed syntax
    ``target``, its UIDs kept; as is when it is in ``target`` already."""
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data))
    ts = ds.file_meta.TransferSyntaxUID
    if ts == target:
        return data
    if ts.is_compressed:
        ds.decompress(generate_instance_uid=False)
    buf = io.BytesIO()
    if target == IMPLICIT_LE:
        ds.file_meta.TransferSyntaxUID = IMPLICIT_LE
        ds.save_as(buf, implicit_vr=True, little_endian=True, enforce_file_format=True)
    else:
        ds.file_meta.TransferSyntaxUID = EXPLICIT_LE
        ds.save_as(buf, implicit_vr=False, little_endian=True, enforce_file_format=True)
    return buf.getvalue()


class NotWanted(ValueError):
    """An instance stored in a syntax not asked for, with no uncompressed
    syntax asked for either."""

    def __init__(self, stored: str):
        super().__init__(f"stored as {stored}")
        self.stored = stored


def into(data: bytes, wanted: set[str], target: str | None) -> tuple[str, bytes]:
    """(syntax, file): the instance ``data`` as it is when its syntax is
    ``wanted``, else converted to the uncompressed ``target``."""
    ts = stored_syntax(data)
    if ts in wanted:
        return ts, data
    if target not in TARGETS:
        raise NotWanted(ts)
    return target, convert(data, target)


def frames(data: bytes, numbers: list[int]) -> list[bytes]:
    """Frames ``numbers`` (1-based) of the instance ``data`` as uncompressed
    little-endian pixel bytes (colour as RGB, interleaved)."""
    import pydicom
    from pydicom.pixels import pixel_array

    ds = pydicom.dcmread(io.BytesIO(data))
    count = int(getattr(ds, "NumberOfFrames", 1) or 1)
    out = []
    for n in numbers:
        if not 1 <= n <= count:
            raise IndexError(f"frame {n} of an instance with {count} frame(s)")
        arr = pixel_array(ds, index=n - 1 if count > 1 else None)
        out.append(arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes())
    return out
