"""What the gateway changes in the archive's answers before a client sees them.

- **Addresses.** Orthanc writes its own address into answers: BulkDataURIs
  and RetrieveURLs in metadata, QIDO-RS and STOW-RS answers, the
  ``Content-Location`` of each frame. A client cannot use it (the archive
  takes only the service's credentials) and should not learn it. Every
  occurrence becomes the data service's public address, as the client
  reached it (through the hub's proxy, or on the service's own port):
  :class:`Rewriter`, also for answers too large to hold.
- **Errors.** The archive's own error bodies never reach a client; its status
  becomes a DICOMweb status with a short reason (:func:`archive_error`).
- **Transfer syntaxes.** Orthanc 1.10 with the GDCM plugin converts any
  stored syntax it can decode into explicit or implicit VR little endian,
  JPEG 2000 lossless and JPEG lossless; asked for JPEG-LS or RLE it crashed
  here on every input tried (JPEG-LS) or on some (RLE), and lossy targets
  fail on 16-bit images (measured, see docs/dependencies.md). So the gateway
  asks the archive only for those safe targets; any other syntax is served
  only where the series is stored in it (the request becomes
  ``transfer-syntax=*``), and is refused with 406 otherwise
  (:func:`negotiate`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

EXPLICIT_LE = "1.2.840.10008.1.2.1"
# What the archive is asked to convert into.
SAFE_TARGETS = {
    EXPLICIT_LE: "explicit VR little endian",
    "1.2.840.10008.1.2": "implicit VR little endian",
    "1.2.840.10008.1.2.4.90": "JPEG 2000 lossless",
    "1.2.840.10008.1.2.4.70": "JPEG lossless (first-order prediction)",
    "1.2.840.10008.1.2.4.57": "JPEG lossless",
}
NAMES = {
    **SAFE_TARGETS,
    "1.2.840.10008.1.2.4.50": "JPEG baseline (lossy)",
    "1.2.840.10008.1.2.4.51": "JPEG extended (lossy)",
    "1.2.840.10008.1.2.4.80": "JPEG-LS lossless",
    "1.2.840.10008.1.2.4.81": "JPEG-LS near-lossless",
    "1.2.840.10008.1.2.4.91": "JPEG 2000 (lossy)",
    "1.2.840.10008.1.2.5": "RLE lossless",
    "1.2.840.10008.1.2.1.99": "deflated explicit VR little endian",
    "1.2.840.10008.1.2.2": "explicit VR big endian",
}
# The syntax a frame's media type means when it names none (PS3.18 8.7.3.5).
MEDIA_DEFAULTS = {
    "application/octet-stream": EXPLICIT_LE,
    "application/dicom": EXPLICIT_LE,
    "image/jp2": "1.2.840.10008.1.2.4.90",
    "image/jpeg": "1.2.840.10008.1.2.4.50",
    "image/jls": "1.2.840.10008.1.2.4.80",
    "image/x-jls": "1.2.840.10008.1.2.4.80",
    "image/x-dicom-rle": "1.2.840.10008.1.2.5",
    "image/dicom-rle": "1.2.840.10008.1.2.5",
}
_TS_PARAM = re.compile(r'(transfer-syntax\s*=\s*)"?([0-9.*]+)"?', re.I)
_TYPE_PARAM = re.compile(r'type\s*=\s*"?([a-z0-9.+-]+/[a-z0-9.+-]+)', re.I)


@dataclass
class Asked:
    """The transfer syntaxes an Accept header asks for."""
    syntaxes: set[str]   # explicit or implied; '*' means as stored

    @property
    def as_stored(self) -> bool:
        return "*" in self.syntaxes

    @property
    def safe(self) -> bool:
        return self.as_stored or bool(self.syntaxes & set(SAFE_TARGETS))


def asked(accept: str) -> Asked:
    """The syntaxes of ``accept`` (each media range: its ``transfer-syntax``
    parameter, else the default of its ``type`` or media type)."""
    out: set[str] = set()
    for media_range in (accept or "").split(","):
        text = media_range.strip()
        if not text:
            continue
        ts = _TS_PARAM.search(text)
        if ts:
            out.add(ts.group(2))
            continue
        inner = _TYPE_PARAM.search(text)
        media = (inner.group(1) if inner else text.split(";", 1)[0]).strip().lower()
        if media in MEDIA_DEFAULTS:
            out.add(MEDIA_DEFAULTS[media])
    return Asked(out or {EXPLICIT_LE})


def as_stored(accept: str) -> str:
    """``accept`` asking for the stored syntax instead."""
    if _TS_PARAM.search(accept):
        return _TS_PARAM.sub(lambda m: m.group(1) + "*", accept)
    return accept + "; transfer-syntax=*"


def name(ts: str) -> str:
    return f"{NAMES[ts]} ({ts})" if ts in NAMES else ts


class Refused(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


def negotiate(accept: str, stored: set[str]) -> str:
    """The Accept header to send the archive for a request that can only be
    served as stored (``stored``: the syntaxes of the instances asked for),
    or :class:`Refused` (406) saying what can be had."""
    wanted = asked(accept).syntaxes
    if stored and len(stored) == 1 and stored <= wanted:
        return as_stored(accept)
    have = ", ".join(sorted(name(s) for s in stored)) or "nothing"
    can = ", ".join(f"{name(s)}" for s in SAFE_TARGETS)
    raise Refused(406, (
        f"the archive cannot send this as {' or '.join(sorted(name(s) for s in wanted))}: "
        f"it is stored as {have}. Ask for transfer-syntax=* (as stored) or one of: {can}"))


def archive_error(status: int, asked_syntax: Asked | None = None) -> Refused:
    """The client's answer for an archive's error ``status`` (its body is
    never passed on)."""
    if status == 400:
        return Refused(400, "the archive refused the request as malformed")
    if status == 406 or (status >= 500 and asked_syntax is not None
                         and not asked_syntax.as_stored
                         and asked_syntax.syntaxes != {EXPLICIT_LE}):
        return Refused(406, "the archive cannot convert this to the transfer syntax asked "
                            "for; ask for transfer-syntax=* (as stored)")
    if status in (401, 403):
        return Refused(502, "the archive refused the data service's credentials")
    if status == 415:
        return Refused(415, "the archive does not take this media type")
    if status >= 500:
        return Refused(502, "the archive failed to answer this request")
    return Refused(status, "the archive could not answer this request")


class Rewriter:
    """Replace the archive's address by the public one in a stream of bytes
    (matches cut between chunks included)."""

    def __init__(self, old: bytes, new: bytes):
        self.old, self.new = old, new
        self.keep = len(old) - 1
        self.tail = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self.tail + chunk
        out, pos = [], 0
        while (i := data.find(self.old, pos)) >= 0:
            out += [data[pos:i], self.new]
            pos = i + len(self.old)
        rest = data[pos:]
        if len(rest) > self.keep:
            out.append(rest[:len(rest) - self.keep])
            rest = rest[len(rest) - self.keep:]
        self.tail = rest
        return b"".join(out)

    def close(self) -> bytes:
        rest, self.tail = self.tail, b""
        return rest

    def all(self, data: bytes) -> bytes:
        return data.replace(self.old, self.new)
