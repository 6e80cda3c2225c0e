"""WADO-RS through the gateway: series, studies (reduced to their visible
series), metadata, instances, frames and rendered images of the caller's
projects, in the transfer syntax asked for (converted by the service when
it must, :mod:`.transcode`)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid

from tornado import web

from ....kernels.query import first_value
from . import answers
from .base import int_or_none
from .transfers import Transfers

log = logging.getLogger("imaginghub.data")

# WADO-RS paths answered with DICOM files as stored (no addresses inside):
# these may be relayed unread.
_BINARY = re.compile(r"^(/instances/[0-9.]+)?$")
_FRAMES = re.compile(r"^/instances/(?P<sop>[0-9.]+)/frames/[0-9,]+$")


class SeriesHandler(Transfers):
    """WADO-RS at series level and below: streamed from the archive when the
    series is in one of the caller's projects, 404 otherwise. The archive's
    address in an answer becomes this service's, its errors a short reason,
    and a transfer syntax it cannot safely produce a 406 (see :mod:`.answers`)."""

    async def get(self, study: str, series: str, rest: str | None = None):
        rest = rest or ""
        words = [w for w in (rest or "").split("/") if w and not w[0].isdigit()]
        self._action = "-".join(["wado-series", *words])
        self._uids = [study, series]
        scope = self.caller.scope
        if scope is not None and not self.ctx.store.is_visible(scope, study, series):
            self.not_found()
        accept = self.request.headers.get("Accept", "")
        frames = _FRAMES.match(rest)
        if _BINARY.match(rest) or frames:
            sop = frames.group("sop") if frames else rest.rsplit("/", 1)[-1] or None
            query = {"StudyInstanceUID": study, "SeriesInstanceUID": series,
                     **({"SOPInstanceUID": sop} if sop else {})}
            plan, instances = await self.plan(accept, [query], frames=bool(frames))
            if plan.convert:
                numbers = [int(n) for n in rest.rsplit("/", 1)[-1].split(",") if n]
                if instances is None:  # any archive: from what it stores
                    path = f"/studies/{study}/series/{series}"
                    if frames:
                        return await self.send_frames(
                            await self._first_stored(f"{path}/instances/{sop}"), numbers, study,
                            series, sop)
                    return await self.send_converted(
                        self._stored_parts([path + (f"/instances/{sop}" if sop else "")]),
                        accept, answers.asked(accept).syntaxes, plan.target)
                if not instances:
                    self.not_found()
                if frames:
                    return await self.send_frames(await self._archive_file(instances[0][0]),
                                                  numbers, study, series, sop)
                return await self.send_converted(self._embedded_files(instances), accept,
                                                 {plan.target}, plan.target)
            accept = plan.accept
        elif "/bulk/" in rest:
            accept = answers.bulk_accept(accept)
        if not rest and await self._from_storage(study, series, accept):
            return
        await self.stream(f"/studies/{study}/series/{series}{rest}", accept,
                          binary=bool(_BINARY.match(rest)))

    # -- transfer syntaxes (see answers.plan and transcode) ---------------------------
    async def instances(self, queries: list[dict]) -> list[tuple[str, str]]:
        """(Orthanc id, stored transfer syntax) of the instances matching any
        of ``queries``, in instance number order (syntaxes cached per id:
        a stored instance never changes). The embedded archive only."""
        found = []
        for query in queries:
            r = await self.ctx.archive.post(f"{self.ctx.orthanc}/tools/find",
                                            json={"Level": "Instance", "Query": query,
                                                  "Expand": True})
            hits = r.json() if r.status_code == 200 else []
            hits.sort(key=lambda h: int_or_none(h.get("MainDicomTags", {}).get("InstanceNumber"))
                      or 0)
            found += [h["ID"] for h in hits]
        cache = self.ctx.syntax_cache
        gate = asyncio.Semaphore(16)

        async def one(instance: str) -> None:
            async with gate:
                m = await self.ctx.archive.get(
                    f"{self.ctx.orthanc}/instances/{instance}/metadata/TransferSyntax")
            if m.status_code == 200:
                cache[instance] = m.text.strip()

        await asyncio.gather(*(one(i) for i in found if i not in cache))
        if len(cache) > 500_000:
            cache.clear()
        return [(i, cache.get(i, "")) for i in found]

    async def plan(self, accept: str, queries: list[dict], *, frames: bool = False):
        """(answers.Plan, instances) for a retrieve of what ``queries`` match;
        a 406 when the syntax asked for cannot be had. As for the embedded
        one, any other archive is asked only for what it stores (archives
        crash converting, see :mod:`.transcode`): a syntax named is then
        made by the service from the stored parts (instances None), each
        part as it comes, one in a wanted syntax passed as it is."""
        wanted = answers.asked(accept)
        if wanted.as_stored:
            return answers.Plan(accept), []
        if not self.ctx.orthanc:
            if frames:  # decoded by the service, or (another syntax) as the archive has them
                explicit = (answers.EXPLICIT_LE in wanted.syntaxes
                            and "multipart/related" in accept.lower())
                return answers.Plan(accept, answers.EXPLICIT_LE if explicit else None), None
            target = next((t for t in (answers.EXPLICIT_LE, answers.IMPLICIT_LE)
                           if t in wanted.syntaxes), None)
            return answers.Plan(accept, target or sorted(wanted.syntaxes)[0]), None
        instances = await self.instances(queries)
        try:
            return answers.plan(accept, {ts for _, ts in instances}, frames=frames), instances
        except answers.Refused as e:
            self.refuse(e)

    async def _archive_file(self, instance: str) -> bytes:
        r = await self.ctx.archive.get(f"{self.ctx.orthanc}/instances/{instance}/file")
        if r.status_code != 200:
            self.refuse(answers.archive_error(r.status_code))
        return r.content

    async def _embedded_files(self, instances: list[tuple[str, str]], window: int = 4):
        """The embedded archive's files of ``instances``, a few at a time."""
        for i in range(0, len(instances), window):
            yield await asyncio.gather(*(self._archive_file(a)
                                         for a, _ in instances[i:i + window]))

    async def _stored_parts(self, paths: list[str], window: int = 4):
        """The instances of these DICOMweb paths as the archive stores them,
        a few at a time, read as they arrive (a 404 when there are none)."""
        from ....kernels.multipart import boundary_of, iter_parts_async

        sent = False
        for path in paths:
            request = self.ctx.archive.build_request(
                "GET", f"{self.ctx.dicomweb}{path}", headers={"Accept": answers.AS_STORED})
            r = await self.ctx.archive.send(request, stream=True)
            try:
                if r.status_code in (204, 404):
                    continue
                if r.status_code >= 400:
                    self.refuse(answers.archive_error(r.status_code))
                batch = []
                async for _, body in iter_parts_async(r.aiter_raw(1 << 20),
                                                      boundary_of(r.headers["content-type"])):
                    batch.append(body)
                    if len(batch) == window:
                        yield batch
                        sent, batch = True, []
                if batch:
                    yield batch
                    sent = True
            finally:
                await r.aclose()
        if not sent:
            self.not_found()

    async def _first_stored(self, path: str) -> bytes:
        async for batch in self._stored_parts([path], window=1):
            return batch[0]
        self.not_found()

    async def send_converted(self, batches, accept: str, wanted: set[str],
                             target: str | None) -> None:
        """Instances (``batches`` of DICOM files) as one multipart answer: one
        stored in a ``wanted`` syntax as it is, any other converted by the
        service to the uncompressed syntax ``target``, a few at a time, on the
        workers; a 406 saying what can be had when the first cannot be either."""
        from . import transcode

        loop = asyncio.get_running_loop()
        boundary = uuid.uuid4().hex
        started = False
        async for files in batches:
            try:
                done = await asyncio.gather(*(
                    loop.run_in_executor(transcode.pool(), transcode.into, data, wanted, target)
                    for data in files))
            except Exception as e:
                if started:  # cut off: a client must not take it for the whole answer
                    self.request.connection.close()
                    return
                if isinstance(e, transcode.NotWanted):
                    try:
                        answers.plan(accept, {e.stored})
                    except answers.Refused as refused:
                        self.refuse(refused)
                raise web.HTTPError(406, reason=(
                    f"an instance cannot be converted to {answers.name(target or '?')} ({e}); "
                    "ask for transfer-syntax=* (as stored)")) from None
            if not started:
                self.set_header("Content-Type", 'multipart/related; type="application/dicom";'
                                f" boundary={boundary}")
                started = True
            for ts, data in done:
                self.write(f"--{boundary}\r\nContent-Type: application/dicom; "
                           f"transfer-syntax={ts}\r\nContent-Length: {len(data)}"
                           "\r\n\r\n".encode())
                self.write(data)
                self.write(b"\r\n")
            await self.flush()
        if not started:
            self.not_found()
        self.finish(f"--{boundary}--\r\n".encode())

    async def send_frames(self, data: bytes, numbers, study, series, sop) -> None:
        """Frames of an instance (``data``, as stored), decoded by the
        service, as uncompressed little-endian pixels."""
        from . import transcode

        try:
            pixels = await asyncio.get_running_loop().run_in_executor(
                transcode.pool(), transcode.frames, data, numbers)
        except IndexError as e:
            raise web.HTTPError(404, reason=str(e)) from None
        except Exception as e:
            raise web.HTTPError(406, reason=(
                f"these frames cannot be decoded ({type(e).__name__}); ask for "
                "transfer-syntax=* (as stored)")) from None
        boundary = uuid.uuid4().hex
        ts = answers.EXPLICIT_LE
        self.set_header("Content-Type", 'multipart/related; type="application/octet-stream"; '
                        f"transfer-syntax={ts}; boundary={boundary}")
        base = self.rewriter().new.decode()
        for n, frame in zip(numbers, pixels):
            location = f"{base}/studies/{study}/series/{series}/instances/{sop}/frames/{n}"
            self.write(f"--{boundary}\r\nContent-Type: application/octet-stream; "
                       f"transfer-syntax={ts}\r\nContent-Location: {location}\r\n"
                       f"Content-Length: {len(frame)}\r\n\r\n".encode())
            self.write(frame)
            self.write(b"\r\n")
        self.finish(f"--{boundary}--\r\n".encode())


class StudyHandler(SeriesHandler):
    """WADO-RS at study level: the whole study when every series in it is
    visible, otherwise only the visible series."""

    async def get(self, study: str, rest: str | None = None):
        rest = rest or ""
        self._action = "wado-study" + (f"-{rest.strip('/')}" if rest else "")
        self._uids = [study]
        scope = self.caller.scope
        accept = self.request.headers.get("Accept", "")
        visible = None if scope is None else self.ctx.store.series_of_study(scope, study)
        if visible is not None and not visible:
            self.not_found()
        if not rest:
            queries = ([{"StudyInstanceUID": study}] if visible is None else
                       [{"StudyInstanceUID": study, "SeriesInstanceUID": s} for s in visible])
            plan, instances = await self.plan(accept, queries)
            if plan.convert:
                if instances is None:  # any archive: from what it stores
                    paths = ([f"/studies/{study}"] if visible is None else
                             [f"/studies/{study}/series/{s}" for s in visible])
                    return await self.send_converted(self._stored_parts(paths), accept,
                                                     answers.asked(accept).syntaxes,
                                                     plan.target)
                if not instances:
                    self.not_found()
                return await self.send_converted(self._embedded_files(instances), accept,
                                                 {plan.target}, plan.target)
            accept = plan.accept
        if scope is None:
            return await self.stream(f"/studies/{study}{rest}", accept,
                                     binary=not rest)
        r = await self.archive_get(f"/studies/{study}/series",
                                   headers={"Accept": "application/dicom+json"})
        in_archive = {first_value(rec, "0020000E") for rec in (r.json() if r.status_code == 200 else [])}
        if in_archive and in_archive <= set(visible):
            return await self.stream(f"/studies/{study}{rest}", accept,
                                     binary=not rest)
        if rest == "/metadata":
            out = []
            rewriter = self.rewriter()
            for series in visible:
                r = await self.archive_get(f"/studies/{study}/series/{series}/metadata",
                                           headers={"Accept": "application/dicom+json"})
                if r.status_code == 200:
                    out.extend(json.loads(rewriter.all(r.content)))
            self.set_header("Content-Type", "application/dicom+json")
            return self.finish(json.dumps(out))
        if rest:
            self.not_found()
        await self._reframe(study, visible, accept)

    async def _reframe(self, study: str, series_uids: list[str], accept: str):
        """One multipart answer made of the parts of several series answers."""
        from ....kernels.multipart import boundary_of, iter_parts_async

        boundary = "imaginghub-" + study[-16:]
        accept = accept or 'multipart/related; type="application/dicom"'
        self.set_header("Content-Type",
                        f'multipart/related; type="application/dicom"; boundary={boundary}')
        for series in series_uids:
            request = self.ctx.archive.build_request(
                "GET", f"{self.ctx.dicomweb}/studies/{study}/series/{series}",
                headers={"Accept": accept})
            r = await self.ctx.archive.send(request, stream=True)
            try:
                if r.status_code != 200:
                    continue
                inner = boundary_of(r.headers["content-type"])
                async for headers, body in iter_parts_async(r.aiter_raw(1 << 20), inner):
                    ctype = headers.get("content-type", "application/dicom")
                    self.write(f"--{boundary}\r\nContent-Type: {ctype}\r\n\r\n".encode())
                    self.write(body)
                    self.write(b"\r\n")
                    await self.flush()
            finally:
                await r.aclose()
        self.write(f"--{boundary}--\r\n".encode())
