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
    """Feed bytes, get back the ``(headers, body)`` parts they complete.

    A part that declares its Content-Length (Orthanc's and the gateway's
    do) is copied once, straight into a body of that size, as its bytes
    arrive; the boundary must follow it, else the part is read again by
    looking for the boundary. Parts without a length are cut at the boundary.
    Bodies are ``bytes``; with ``writable=True`` a sized body comes as the
    ``bytearray`` it was filled into (no copy)."""

    def __init__(self, boundary: bytes, max_sized: int = 1 << 30, writable: bool = False):
        self.delim = b"--" + boundary
        self.writable = writable
        self.max_sized = max_sized  # a larger declared length is not allocated up front
        self.buf = bytearray()  # bytes not yet in a body
        self.in_part = False
        self.done = False
        self.headers: dict = {}
        self.body: bytearray | None = None  # a sized part's body, filling
        self.filled = 0
        self.search_from = 0  # where to look for the boundary in buf (unsized)

    def feed(self, chunk) -> list[tuple[dict, bytes]]:
        out: list = []
        if self.done:
            return out
        if self.body is not None and not self.buf:
            chunk = self._fill(chunk)  # most bytes of a sized part skip buf
        self.buf += chunk
        while not self.done and self._step(out):
            pass
        return out

    def _fill(self, chunk):
        """Copy what the sized body still lacks from ``chunk``; the rest."""
        n = min(len(self.body) - self.filled, len(chunk))
        if not n:
            return chunk
        with memoryview(chunk) as view:
            self.body[self.filled:self.filled + n] = view[:n]
        self.filled += n
        return chunk[n:] if n < len(chunk) else b""

    def _step(self, out: list) -> bool:
        """Take one step (headers, or a body); False when more bytes are needed."""
        buf, delim = self.buf, self.delim
        if not self.in_part:
            i = buf.find(delim)
            if i < 0 or len(buf) < i + len(delim) + 2:
                return False
            after = i + len(delim)
            if buf[after:after + 2] == b"--":
                self.done = True
                return False
            end_headers = buf.find(b"\r\n\r\n", after)
            if end_headers < 0:
                return False
            self.headers = _parse_headers(bytes(buf[after:end_headers]))
            del buf[:end_headers + 4]
            self.in_part, self.search_from = True, 0
            length = self.headers.get("content-length", "")
            if length.isdigit() and int(length) <= self.max_sized:
                self.body, self.filled = bytearray(int(length)), 0
                rest = self._fill(bytes(buf))
                buf[:] = rest
            return True
        if self.body is not None:
            follow = b"\r\n" + delim
            if self.filled < len(self.body) or len(buf) < len(follow):
                return False
            if buf.startswith(follow):
                out.append((self.headers, self.body if self.writable else bytes(self.body)))
                del buf[:2]
                self.in_part = False
            else:  # the declared length was wrong: cut at the boundary instead
                buf[:0] = self.body
            self.body = None
            return True
        i = buf.find(b"\r\n" + delim, self.search_from)
        if i < 0:
            self.search_from = max(0, len(buf) - len(delim) - 2)
            return False
        out.append((self.headers, bytes(buf[:i])))
        del buf[:i + 2]
        self.in_part = False
        return True

    def close(self) -> None:
        if self.in_part:
            raise ValueError("the multipart answer ended in the middle of a part")
        if not self.done:
            raise ValueError("the multipart answer ended before its closing boundary")


def iter_parts(chunks: Iterable[bytes], boundary: bytes,
               writable: bool = False) -> Iterator[tuple[dict, bytes]]:
    """Yield ``(headers, body)`` for every part of the stream of ``chunks``
    (see :class:`PartParser` for ``writable``)."""
    parser = PartParser(boundary, writable=writable)
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
