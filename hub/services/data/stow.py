"""STOW-RS through the gateway: every instance is checked before the archive
sees it, and every stored series belongs to a project.

- Each part must be a complete DICOM file with valid Study, Series and SOP
  Instance UIDs; anything else is refused with a reason.
- A part may add to a series only if that series is new or already in the
  target project; a series of another project (or of none) is refused, with
  the same reason whether it exists or not.
- New series are put into the project *before* their instances are
  forwarded, and taken out again if the archive stores none of them: a stored
  instance never lacks a project.
"""

from __future__ import annotations

from dataclasses import dataclass
from io import BytesIO

from pydicom import dcmread
from pydicom.uid import UID

# Failure reasons (PS3.18 / PS3.4 C-STORE status codes) and their text.
CANNOT_UNDERSTAND = 0xC000
NOT_AUTHORIZED = 0x0124
PROCESSING_FAILURE = 0x0110
REASONS = {
    CANNOT_UNDERSTAND: "not a complete DICOM file with valid UIDs",
    NOT_AUTHORIZED: "the series belongs to another project",
    PROCESSING_FAILURE: "the archive could not store it",
}


@dataclass
class Part:
    index: int
    body: bytes
    study: str = ""
    series: str = ""
    sop: str = ""
    sop_class: str = ""
    problem: str = ""
    code: int = 0


def inspect(index: int, body: bytes) -> Part:
    """Parse one part completely; note what makes it unfit to store."""
    part = Part(index, body)
    try:
        ds = dcmread(BytesIO(body), force=False)
        missing = _missing_pixel_bytes(ds)
        if missing:
            part.problem, part.code = f"truncated pixel data ({missing} bytes missing)", CANNOT_UNDERSTAND
            return part
        part.study, part.series = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
        part.sop, part.sop_class = str(ds.SOPInstanceUID), str(ds.SOPClassUID)
    except Exception as e:  # pydicom raises many kinds for broken input
        part.problem, part.code = f"not a readable DICOM file ({type(e).__name__})", CANNOT_UNDERSTAND
        return part
    for name, uid in (("StudyInstanceUID", part.study), ("SeriesInstanceUID", part.series),
                      ("SOPInstanceUID", part.sop)):
        if not UID(uid).is_valid:
            part.problem, part.code = f"invalid {name} {uid[:70]!r}", CANNOT_UNDERSTAND
            return part
    return part


def _missing_pixel_bytes(ds) -> int:
    """How many bytes of native pixel data are missing (a truncated file);
    encapsulated data that is cut short already failed to parse."""
    if "PixelData" not in ds or ds.file_meta.TransferSyntaxUID.is_compressed:
        return 0
    expected = (int(ds.Rows) * int(ds.Columns) * int(getattr(ds, "NumberOfFrames", 1) or 1)
                * int(getattr(ds, "SamplesPerPixel", 1)) * int(ds.BitsAllocated)) // 8
    return max(0, expected - len(ds.PixelData))


def multipart_body(parts: list[Part], boundary: str) -> bytes:
    from ....kernels.multipart import dicom_body

    return dicom_body([p.body for p in parts], boundary)


def failed_item(part: Part) -> dict:
    """An item of the STOW answer's FailedSOPSequence."""
    return {
        "00081150": {"vr": "UI", "Value": [part.sop_class]} if part.sop_class else {"vr": "UI"},
        "00081155": {"vr": "UI", "Value": [part.sop]} if part.sop else {"vr": "UI"},
        "00081197": {"vr": "US", "Value": [part.code]},
    }
