"""Series answers read straight from the embedded archive's storage area.

When the gateway runs beside the Orthanc it manages (the embedded stack:
same machine, storage compression off), a WADO-RS series request in the
stored transfer syntax is answered from the archive's own files with
``sendfile``: Orthanc is asked only which files make the series (two small
REST calls, the file names cached per instance), and the bytes go from the
page cache to the client's socket without Orthanc or Python touching them.
The answer is byte for byte what Orthanc's DICOMweb plugin sends (the stored
files as parts of a ``multipart/related`` answer).

Every file is opened before the answer starts, so an instance deleted in
between cannot cut an answer short; if anything does not fit (a compressed
attachment, a missing file), the caller falls back to relaying Orthanc's own
answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import uuid
from pathlib import Path

import httpx

log = logging.getLogger("imaginghub.data")

_MAX_CACHED = 500_000  # instance -> file name entries kept (about 100 bytes each)


class StorageReader:
    def __init__(self, root: Path, archive: httpx.AsyncClient, archive_url: str):
        self.root = Path(root)
        self.archive = archive
        self.url = archive_url.rstrip("/")
        self._files: dict[str, str] = {}  # Orthanc instance id -> attachment uuid

    async def series_files(self, series_uid: str) -> list[Path] | None:
        """The stored files of a series, or None when they cannot be used."""
        r = await self.archive.post(f"{self.url}/tools/lookup", content=series_uid)
        found = [x["ID"] for x in r.json() if x.get("Type") == "Series"] if r.is_success else []
        if len(found) != 1:
            return None
        r = await self.archive.get(f"{self.url}/series/{found[0]}")
        if not r.is_success:
            return None
        instances = r.json().get("Instances", [])
        unknown = [i for i in instances if i not in self._files]
        if len(self._files) + len(unknown) > _MAX_CACHED:
            self._files.clear()
        gate = asyncio.Semaphore(16)

        async def learn(instance: str) -> None:
            async with gate:
                r = await self.archive.get(f"{self.url}/instances/{instance}/attachments/dicom/info")
            info = r.json() if r.is_success else {}
            if info.get("Uuid") and info.get("CompressedMD5") == info.get("UncompressedMD5"):
                self._files[instance] = info["Uuid"]

        await asyncio.gather(*(learn(i) for i in unknown))
        names = [self._files.get(i) for i in instances]
        if not names or None in names:
            return None
        return [self.root / n[:2] / n[2:4] / n for n in names]


def etag(paths: list[Path]) -> str:
    """An entity tag for a series answer: the names of its stored files
    (Orthanc gives every stored file a new name, so any added, removed or
    re-stored instance, in any transfer syntax, changes it)."""
    digest = hashlib.sha256("\n".join(sorted(p.name for p in paths)).encode()).hexdigest()
    return f'"{digest[:40]}"'


def open_all(paths: list[Path]) -> list[tuple[int, int]] | None:
    """Open every file (fd, size); None, with nothing left open, if one fails."""
    opened: list[tuple[int, int]] = []
    try:
        for p in paths:
            fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
            opened.append((fd, os.fstat(fd).st_size))
        return opened
    except OSError:
        close_all(opened)
        return None


def close_all(opened: list[tuple[int, int]]) -> None:
    for fd, _ in opened:
        os.close(fd)


def send_series(dst_fd: int, opened: list[tuple[int, int]], etag: str | None = None) -> int:
    """Answer with the opened files as one ``multipart/related`` DICOM body
    (with its length), then close them and the client's socket."""
    boundary = uuid.uuid4().hex
    heads = [f"--{boundary}\r\nContent-Type: application/dicom\r\nContent-Length: {size}"
             "\r\n\r\n".encode() for _, size in opened]
    tail = f"--{boundary}--\r\n".encode()
    length = sum(len(h) + size + 2 for h, (_, size) in zip(heads, opened)) + len(tail)
    head = ("HTTP/1.1 200 OK\r\nContent-Type: multipart/related; "
            f'type="application/dicom"; boundary={boundary}\r\n'
            f"Content-Length: {length}\r\n" + (f"ETag: {etag}\r\n" if etag else "")
            + "Connection: close\r\n\r\n").encode()
    os.set_blocking(dst_fd, True)
    dst = socket.socket(fileno=dst_fd)
    sent = 0
    try:
        # Corked: the small part headers leave in the same packets as the files.
        dst.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
        dst.sendall(head)
        for part_head, (fd, size) in zip(heads, opened):
            dst.sendall(part_head)
            offset = 0
            while offset < size:
                n = os.sendfile(dst_fd, fd, offset, size - offset)
                if n == 0:
                    raise ConnectionError("a stored file ended early")
                offset += n
            dst.sendall(b"\r\n")
            sent += size
        dst.sendall(tail)
        dst.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)
    except OSError as e:  # the client went away
        log.info("series answer stopped after %d bytes (%s)", sent, type(e).__name__)
    finally:
        close_all(opened)
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        dst.close()
    return sent
