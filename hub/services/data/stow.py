"""STOW-RS through the gateway: every instance is checked before the archive
sees it, and every stored series belongs to a project.

- Each part must be a complete DICOM file with Study, Series and SOP
  Instance UIDs that can be stored safely (digits and dots, at most 64);
  anything else is refused with a reason. What breaks only the letter of
  the standard (a UID component with a leading zero, a value that does not
  fit its VR) is stored, with warnings.
- A part may add to a series only if that series is new or already in the
  target project; a series of another project (or of none) is refused, with
  the same reason whether it exists or not.
- New series are put into the project *before* their instances are
  forwarded, and taken out again if the archive answers that it stored none
  of them (without an answer they stay): a stored instance never lacks a
  project.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import warnings
from dataclasses import dataclass, field
from io import BytesIO

from pydicom import dcmread

# Failure reasons (PS3.18 / PS3.4 C-STORE status codes) and their text.
CANNOT_UNDERSTAND = 0xC000
NOT_AUTHORIZED = 0x0124
PROCESSING_FAILURE = 0x0110
DATASET_DOES_NOT_MATCH = 0xB007  # a WarningReason: stored, though not as the standard says
REASONS = {
    CANNOT_UNDERSTAND: "not a complete DICOM file with UIDs that can be stored",
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
    warnings: list[str] = field(default_factory=list)  # stored all the same


def inspect(index: int, body: bytes) -> Part:
    """Parse one part completely; note what makes it unfit to store, and
    what is wrong but stored all the same (vendors' files as they are)."""
    part = Part(index, body)
    with warnings.catch_warnings(record=True) as caught, _quiet_pydicom():
        warnings.simplefilter("always")
        try:
            ds = dcmread(BytesIO(body), force=False)
            missing = _missing_pixel_bytes(ds)
            if missing:
                part.problem = f"truncated pixel data ({missing} bytes missing)"
                part.code = CANNOT_UNDERSTAND
                return part
            part.study = str(ds.get("StudyInstanceUID", "") or "")
            part.series = str(ds.get("SeriesInstanceUID", "") or "")
            part.sop = str(ds.get("SOPInstanceUID", "") or "")
            part.sop_class = str(ds.get("SOPClassUID", "") or "")
            for element in ds.iterall():  # every value read once: what pydicom warns of
                element.value  # noqa: B018
        except Exception as e:  # pydicom raises many kinds for broken input
            part.problem = f"not a readable DICOM file ({type(e).__name__})"
            part.code = CANNOT_UNDERSTAND
            return part
        finally:
            for w in caught:
                text = _short(str(w.message))
                if text not in part.warnings:
                    part.warnings.append(text)
    for name, uid in (("SOPInstanceUID", part.sop), ("SeriesInstanceUID", part.series),
                      ("StudyInstanceUID", part.study)):
        problem = uid_problem(name, uid)
        if problem:
            part.problem, part.code = problem, CANNOT_UNDERSTAND
            return part
        if not _STANDARD_UID.match(uid):
            # said once, in these words (pydicom's "Invalid value for VR UI" goes)
            part.warnings = [w for w in part.warnings if repr(uid) not in w]
            part.warnings.append(f"{name} {uid!r} breaks the standard's UID rules (a "
                                 "component with a leading zero): stored as it is")
    if not part.sop_class:
        part.warnings.append("no SOPClassUID")
    return part


_UID_CHARACTERS = re.compile(r"^[0-9][0-9.]{0,63}$")
_STANDARD_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")  # PS3.5 9.1


def uid_problem(name: str, uid: str) -> str:
    """Why the UID ``name`` cannot be stored safely ("" when it can): empty,
    over 64 characters, or not digits and dots. A leading zero in a
    component breaks the letter of PS3.5 but is stored (vendors write them)."""
    if not uid:
        return f"no {name}"
    if len(uid) > 64:
        return f"{name} {uid[:70]!r}... is longer than 64 characters"
    if not _UID_CHARACTERS.match(uid) or ".." in uid or uid.endswith("."):
        return f"invalid {name} {uid!r} (a UID is digits and dots)"
    return ""


def _short(text: str) -> str:
    """A pydicom warning without its link to the standard."""
    return re.sub(r"\s*Please see <[^>]*>.*$", "", text.strip()).strip()


_inspecting = threading.local()


class _NotWhileInspecting(logging.Filter):
    """Drops pydicom's log records of the thread inspecting a part: pydicom
    logs each warning as well as warning it, and the part keeps it once."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_inspecting, "on", False)


logging.getLogger("pydicom").addFilter(_NotWhileInspecting())


@contextlib.contextmanager
def _quiet_pydicom():
    _inspecting.on = True
    try:
        yield
    finally:
        _inspecting.on = False


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


def mark_warnings(answer: dict, stored: list[Part]) -> int:
    """Give each stored instance that came with warnings its WarningReason
    (B007, the data set does not match its SOP class: stored as it is) in
    the answer's ReferencedSOPSequence; how many were marked. The warnings'
    texts stay in the uploader's own report (``imaginghub ingest``): values
    they quote could be a patient's."""
    warned = {p.sop for p in stored if p.warnings}
    marked = 0
    for item in answer.get("00081199", {}).get("Value", []):
        if (item.get("00081155", {}).get("Value") or [None])[0] in warned:
            item["00081196"] = {"vr": "US", "Value": [DATASET_DOES_NOT_MATCH]}
            marked += 1
    return marked


def failed_item(part: Part) -> dict:
    """An item of the STOW answer's FailedSOPSequence."""
    return {
        "00081150": {"vr": "UI", "Value": [part.sop_class]} if part.sop_class else {"vr": "UI"},
        "00081155": {"vr": "UI", "Value": [part.sop]} if part.sop else {"vr": "UI"},
        "00081197": {"vr": "US", "Value": [part.code]},
    }
