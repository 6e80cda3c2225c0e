"""Incremental parsing of ``multipart/related`` bodies (RFC 2046), the
envelope of WADO-RS answers: parts are yielded as soon as they are complete,
so decoding overlaps with the transfer."""

from __future__ import annotations

from collections.abc import Iterable, Iterator


def boundary_of(content_type: str) -> bytes:
    for param in content_type.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.strip().lower() == "boundary":
            return value.strip().strip('"').encode()
    raise ValueError(f"no boundary in Content-Type {content_type!r}")


def iter_parts(chunks: Iterable[bytes], boundary: bytes) -> Iterator[tuple[dict, bytes]]:
    """Yield ``(headers, body)`` for every part of the stream of ``chunks``."""
    delim = b"--" + boundary
    buf = bytearray()
    pos = 0  # start of the unconsumed part of buf
    in_part = False
    search_from = 0
    body_start = 0
    headers: dict = {}
    for chunk in chunks:
        buf += chunk
        while True:
            if not in_part:
                i = buf.find(delim, pos)
                if i < 0:
                    break
                after = i + len(delim)
                if len(buf) < after + 2:
                    break
                if buf[after:after + 2] == b"--":
                    return
                end_headers = buf.find(b"\r\n\r\n", after)
                if end_headers < 0:
                    break
                headers = _parse_headers(bytes(buf[after:end_headers]))
                body_start = end_headers + 4
                length = headers.get("content-length")
                in_part = True
                search_from = body_start + int(length) if length else body_start
            i = buf.find(b"\r\n" + delim, max(search_from, body_start))
            if i < 0:
                search_from = max(body_start, len(buf) - len(delim) - 2)
                break
            with memoryview(buf) as view:
                body = bytes(view[body_start:i])
            yield headers, body
            in_part = False
            pos = i + 2
            # Drop what is consumed so the buffer stays about one part long.
            del buf[:pos]
            pos = 0
    if in_part:
        raise ValueError("the multipart answer ended in the middle of a part")


def _parse_headers(raw: bytes) -> dict:
    out = {}
    for line in raw.split(b"\r\n"):
        if b":" in line:
            k, _, v = line.partition(b":")
            out[k.strip().lower().decode()] = v.strip().decode()
    return out
