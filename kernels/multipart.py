"""Incremental parsing of ``multipart/related`` bodies (RFC 2046), the
envelope of WADO-RS answers: parts come out as soon as they are complete, so
decoding overlaps with the transfer and at most about one part is buffered."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator


def boundary_of(content_type: str) -> bytes:
    for param in content_type.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.strip().lower() == "boundary":
            return value.strip().strip('"').encode()
    raise ValueError(f"no boundary in Content-Type {content_type!r}")


class PartParser:
    """Feed bytes, get back the ``(headers, body)`` parts they complete."""

    def __init__(self, boundary: bytes):
        self.delim = b"--" + boundary
        self.buf = bytearray()
        self.in_part = False
        self.done = False
        self.body_start = 0
        self.search_from = 0
        self.headers: dict = {}

    def feed(self, chunk: bytes) -> list[tuple[dict, bytes]]:
        out = []
        if self.done:
            return out
        buf, delim = self.buf, self.delim
        buf += chunk
        while True:
            if not self.in_part:
                i = buf.find(delim)
                if i < 0:
                    break
                after = i + len(delim)
                if len(buf) < after + 2:
                    break
                if buf[after:after + 2] == b"--":
                    self.done = True
                    break
                end_headers = buf.find(b"\r\n\r\n", after)
                if end_headers < 0:
                    break
                self.headers = _parse_headers(bytes(buf[after:end_headers]))
                self.body_start = end_headers + 4
                length = self.headers.get("content-length")
                self.search_from = self.body_start + int(length) if length else self.body_start
                self.in_part = True
            i = buf.find(b"\r\n" + delim, max(self.search_from, self.body_start))
            if i < 0:
                self.search_from = max(self.body_start, len(buf) - len(delim) - 2)
                break
            with memoryview(buf) as view:
                body = bytes(view[self.body_start:i])
            out.append((self.headers, body))
            self.in_part = False
            # Drop what is consumed so the buffer stays about one part long.
            del buf[:i + 2]
        return out

    def close(self) -> None:
        if self.in_part:
            raise ValueError("the multipart answer ended in the middle of a part")


def iter_parts(chunks: Iterable[bytes], boundary: bytes) -> Iterator[tuple[dict, bytes]]:
    """Yield ``(headers, body)`` for every part of the stream of ``chunks``."""
    parser = PartParser(boundary)
    for chunk in chunks:
        yield from parser.feed(chunk)
        if parser.done:
            return
    parser.close()


async def iter_parts_async(chunks: AsyncIterable[bytes],
                           boundary: bytes) -> AsyncIterator[tuple[dict, bytes]]:
    parser = PartParser(boundary)
    async for chunk in chunks:
        for part in parser.feed(chunk):
            yield part
        if parser.done:
            return
    parser.close()


def _parse_headers(raw: bytes) -> dict:
    out = {}
    for line in raw.split(b"\r\n"):
        if b":" in line:
            k, _, v = line.partition(b":")
            out[k.strip().lower().decode()] = v.strip().decode()
    return out


def dicom_body(files: list[bytes], boundary: str) -> bytes:
    """A ``multipart/related; type="application/dicom"`` body of DICOM files."""
    b = boundary.encode()
    return b"".join(b"--" + b + b"\r\nContent-Type: application/dicom\r\n\r\n" + f + b"\r\n"
                    for f in files) + b"--" + b + b"--\r\n"
