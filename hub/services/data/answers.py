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
- **Transfer syntaxes.** The archive is asked only for what it stores;
  compressed data asked for uncompressed is converted by the service
  (:mod:`.transcode`), and any other syntax is served only where it is the
  stored one, else refused with 406 and what can be had (:func:`plan`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

EXPLICIT_LE = "1.2.840.10008.1.2.1"
AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'
IMPLICIT_LE = "1.2.840.10008.1.2"
# Uncompressed little endian: the same pixel bytes either way.
UNCOMPRESSED_LE = {EXPLICIT_LE, IMPLICIT_LE}
NAMES = {
    EXPLICIT_LE: "explicit VR little endian",
    IMPLICIT_LE: "implicit VR little endian",
    "1.2.840.10008.1.2.4.90": "JPEG 2000 lossless",
    "1.2.840.10008.1.2.4.91": "JPEG 2000 (lossy)",
    "1.2.840.10008.1.2.4.70": "JPEG lossless (first-order prediction)",
    "1.2.840.10008.1.2.4.57": "JPEG lossless",
    "1.2.840.10008.1.2.4.50": "JPEG baseline (lossy)",
    "1.2.840.10008.1.2.4.51": "JPEG extended (lossy)",
    "1.2.840.10008.1.2.4.80": "JPEG-LS lossless",
    "1.2.840.10008.1.2.4.81": "JPEG-LS near-lossless",
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


def bulk_accept(accept: str) -> str:
    """The Accept header for a bulk data request that Orthanc's plugin 1.7
    takes: it refuses ``multipart/related; type="*/*"``, which dicomweb-client
    sends, and any media type but octet-stream (its only kind of bulk data)."""
    inner = _TYPE_PARAM.search(accept or "")
    if not accept or "*/*" in accept or (inner and inner.group(1).lower() == "*/*") \
            or accept.strip().lower().startswith("multipart/related") and not inner:
        return 'multipart/related; type="application/octet-stream"'
    return accept


def name(ts: str) -> str:
    return f"{NAMES[ts]} ({ts})" if ts in NAMES else ts


class Refused(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


@dataclass
class Plan:
    """How to answer a retrieve: pass it to the archive with ``accept``, or
    convert the stored instances to ``target`` in the service."""
    accept: str
    target: str | None = None

    @property
    def convert(self) -> bool:
        return self.target is not None


def plan(accept: str, stored: set[str], *, frames: bool = False) -> Plan:
    """What to do for ``accept`` when the instances asked for are stored as
    ``stored``: as stored where that is asked for (or the same pixel bytes,
    for frames), converted by the service to an uncompressed syntax, or
    :class:`Refused` (406) saying what can be had."""
    wanted = asked(accept).syntaxes
    if "*" in wanted:
        return Plan(accept)
    if stored and len(stored) == 1 and stored <= wanted:
        return Plan(as_stored(accept))
    if frames and stored and stored <= UNCOMPRESSED_LE and EXPLICIT_LE in wanted:
        return Plan(as_stored(accept))  # raw little-endian pixels either way
    target = next((t for t in (EXPLICIT_LE, IMPLICIT_LE) if t in wanted), None)
    if target is not None and not (frames and target != EXPLICIT_LE):
        return Plan(accept, target)
    have = ", ".join(sorted(name(s) for s in stored)) or "nothing"
    raise Refused(406, (
        f"this cannot be sent as {' or '.join(sorted(name(s) for s in wanted))}: it is "
        f"stored as {have}, and the service converts only to {name(EXPLICIT_LE)}"
        + ("" if frames else f" or {name(IMPLICIT_LE)}")
        + ". Ask for one of those or for transfer-syntax=* (as stored)"))


def archive_error(status: int) -> Refused:
    """The client's answer for an archive's error ``status`` (its body is
    never passed on)."""
    if status == 400:
        return Refused(400, "the archive refused the request as malformed")
    if status == 406:
        return Refused(406, "the archive cannot send this in the transfer syntax asked for; "
                            "ask for transfer-syntax=* (as stored)")
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
