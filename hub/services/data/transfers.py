"""The three ways a retrieve reaches the client: a whole series from the
embedded archive's files (sendfile, :mod:`.storage`), a large answer relayed
socket to socket (:mod:`.splice`, for an archive reached over plain HTTP),
anything else streamed through httpx (with the archive's address
rewritten, :mod:`.answers`): for any archive but the embedded one, only
the last two, and over HTTPS only the last."""

from __future__ import annotations

import asyncio
import logging
import os
from urllib.parse import urlsplit

from tornado import web

from . import answers, splice
from .base import BaseHandler

log = logging.getLogger("imaginghub.data")

SMALL_ANSWER = 8 * 1024**2  # answers up to this size are read, larger ones spliced
_PASS_HEADERS = ("content-type", "content-length", "content-location", "etag", "last-modified")


class Transfers(BaseHandler):
    """The transfer paths of the WADO-RS handlers."""

    async def _from_storage(self, study: str, series: str, accept: str) -> bool:
        """Answer a whole series in its stored transfer syntax from the
        archive's files (see :mod:`.storage`); False when that does not apply."""
        from . import storage

        reader = self.ctx.storage
        accept = accept.replace(" ", "").replace('"', "").lower()
        if (reader is None or "range" in self.request.headers or self.request.query
                or accept != "multipart/related;type=application/dicom;transfer-syntax=*"):
            return False
        paths = await reader.series_files(series)
        if not paths:
            return False
        # The stored files name the answer: a kernel that has this series in
        # its cache asks with If-None-Match and gets a 304 in a few ms.
        etag = storage.etag(paths)
        if etag in [t.strip() for t in self.request.headers.get("If-None-Match", "").split(",")]:
            self._action = "wado-series-unchanged"
            self.set_status(304)
            self.set_header("ETag", etag)
            self.finish()
            return True
        loop = asyncio.get_running_loop()
        opened = await loop.run_in_executor(self.ctx.relay_pool, storage.open_all, paths)
        if opened is None:
            return False
        client_fd = os.dup(self.request.connection.stream.socket.fileno())
        self.detach().close()
        self.on_finish()  # the audit entry: tornado will not call it now
        await loop.run_in_executor(self.ctx.relay_pool, storage.send_series, client_fd, opened,
                                   etag)
        return True

    def _archive_headers(self, accept: str) -> dict:
        headers = {"Accept": accept} if accept else {}
        if "range" in self.request.headers:
            headers["Range"] = self.request.headers["range"]
        return headers

    def _passed_headers(self, rheaders: dict, rewriter: answers.Rewriter) -> dict:
        return {k: (rewriter.all(v.encode("latin-1")).decode("latin-1")
                    if k == "content-location" else v)
                for k, v in rheaders.items() if k in _PASS_HEADERS}

    async def stream(self, path: str, accept: str, *, binary: bool = False):
        """Forward the archive's answer. A large 200 of DICOM files (a series,
        a study, an instance: ``binary``; they carry no addresses) is handed
        over in the kernel: the client's socket is detached from tornado and
        the archive's bytes are spliced into it (no copy through Python: the
        gateway's CPU per series load drops from about 0.35 s to a few ms). A
        small answer of known length (metadata, a frame, an error) is read,
        its addresses rewritten, and answered on the kept-alive connection.
        Other large or chunked answers are streamed through httpx, rewritten
        as they pass."""
        headers = self._archive_headers(accept)
        root = urlsplit(self.ctx.dicomweb)
        if root.scheme != "http":  # the relay speaks plain HTTP: TLS goes through httpx
            return await self._stream_httpx(path, headers, rewrite=not binary)
        query = self.request.query
        target = f"{root.path}/{path.lstrip('/')}" + (f"?{query}" if query else "")
        loop = asyncio.get_running_loop()
        pool = self.ctx.relay_pool
        try:
            sock, status, rheaders, leftover = await loop.run_in_executor(
                pool, splice.open_get, self.ctx.dicomweb, target, headers,
                self.ctx.archive_basic)
        except OSError:
            raise web.HTTPError(502, reason="the archive did not answer") from None
        length = splice.body_length(rheaders)
        if status >= 400 or length is None or (
                not binary and (length < 0 or length > SMALL_ANSWER)):
            sock.close()
            if status == 404:
                self.not_found()
            if status >= 400:
                self.refuse(answers.archive_error(status))
            return await self._stream_httpx(path, headers, rewrite=not binary)
        rewriter = self.rewriter()
        passed = self._passed_headers(rheaders, rewriter)
        if status == 200 and (length < 0 or length > SMALL_ANSWER):
            head = "HTTP/1.1 200 OK\r\n" + "".join(
                f"{k}: {v}\r\n" for k, v in passed.items()) + "Connection: close\r\n\r\n"
            client_fd = os.dup(self.request.connection.stream.socket.fileno())
            self.detach().close()
            self.on_finish()  # the audit entry: tornado will not call it now
            await loop.run_in_executor(pool, splice.relay, sock, client_fd,
                                       head.encode("latin-1") + leftover,
                                       length if length < 0 else len(head) + length)
            return
        try:
            body = await loop.run_in_executor(pool, splice.read_body, sock, leftover, length)
        except OSError:
            raise web.HTTPError(502, reason="the archive broke off its answer") from None
        self.set_status(status)
        for k, v in passed.items():
            if k != "content-length":
                self.set_header(k, v)
        self.finish(body if binary else rewriter.all(body))

    async def _stream_httpx(self, path: str, headers: dict, *, rewrite: bool = True):
        query = self.request.query
        url = f"{self.ctx.dicomweb}{path}" + (f"?{query}" if query else "")
        request = self.ctx.archive.build_request("GET", url, headers=headers)
        r = await self.ctx.archive.send(request, stream=True)
        rewriter = self.rewriter()
        try:
            if r.status_code == 404:
                self.not_found()
            if r.status_code >= 400:
                self.refuse(answers.archive_error(r.status_code))
            self.set_status(r.status_code)
            for k, v in self._passed_headers({k.lower(): v for k, v in r.headers.items()},
                                   rewriter).items():
                if not (rewrite and k == "content-length"):
                    self.set_header(k, v)
            # Forward as it comes, flushing every few MB: memory stays bounded
            # (the client's pace holds the archive back) without a flush per
            # small network read.
            pending = 0
            async for chunk in r.aiter_raw(1 << 20):
                self.write(rewriter.feed(chunk) if rewrite else chunk)
                pending += len(chunk)
                if pending >= 4 << 20:
                    await self.flush()
                    pending = 0
            if rewrite:
                self.write(rewriter.close())
        finally:
            await r.aclose()
