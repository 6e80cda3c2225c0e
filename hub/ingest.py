"""``imaginghub ingest PATH... --project P``: files, folders and zip files into
the archive through the gateway, so every stored series has its project.

Every file is read completely first; what is not a complete DICOM file with
valid UIDs is refused with its reason and never sent. Instances the archive
has already (or that appear twice in the input) are counted, not sent again.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from ..kernels.dicomweb import STOW_BATCH_BYTES
from .errors import ImagingHubError
from .services.data import stow


@dataclass
class Report:
    stored: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)
    warned: dict[str, list[str]] = field(default_factory=dict)  # name: what was wrong

    def lines(self) -> list[str]:
        out = [f"stored: {len(self.stored)}, already present: {len(self.already)}, "
               f"refused: {len(self.refused)}"
               + (f", stored with warnings: {len(self.warned)}" if self.warned else "")]
        out += [f"  refused {name}: {reason}" for name, reason in self.refused]
        out += [f"  warning {name}: {text}" for name, texts in self.warned.items()
                for text in texts]
        return out


class Interrupted(ImagingHubError):
    """The ingest stopped part-way: what was stored stays stored, and the
    same command run again sends only the rest."""

    def __init__(self, report: Report, why: str):
        self.report = report
        super().__init__(
            f"{why}. {len(report.stored)} files were stored before it stopped; once it is "
            "back, run the same command again: it skips what is stored and sends the rest")


def iter_inputs(paths: list[Path]) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of every file under ``paths``; zip members one by one."""
    for path in paths:
        if not path.exists():
            raise ImagingHubError(f"{path} does not exist")
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            if zipfile.is_zipfile(f):
                with zipfile.ZipFile(f) as z:
                    for info in z.infolist():
                        if not info.is_dir():
                            yield f"{f}!{info.filename}", z.read(info)
            else:
                yield str(f), f.read_bytes()


def count_inputs(paths: list[Path]) -> int:
    n = 0
    for path in paths:
        files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
        for f in files:
            if zipfile.is_zipfile(f):
                with zipfile.ZipFile(f) as z:
                    n += sum(not i.is_dir() for i in z.infolist())
            else:
                n += 1
    return n


class Ingest:
    def __init__(self, gateway_url: str, token: str, project: str, *, out=None):
        self.url = gateway_url.rstrip("/")
        self.project = project
        self.http = httpx.Client(headers={"Authorization": f"token {token}"},
                                 timeout=httpx.Timeout(300, connect=5))
        self.out = out
        self.known: dict[str, set[str]] = {}  # series -> SOP instance UIDs in the archive
        self.report = Report()

    def _present(self, study: str, series: str) -> set[str]:
        if series not in self.known:
            try:
                r = self.http.get(f"{self.url}/studies/{study}/series/{series}/instances",
                                  headers={"Accept": "application/dicom+json",
                                           "X-Imaginghub-Scope": "all"})
            except httpx.TransportError as e:
                raise Interrupted(self.report, f"the data service stopped answering "
                                  f"({type(e).__name__}); is the workspace running?") from None
            if r.status_code in (502, 503, 504):
                raise Interrupted(self.report, "the archive is not answering (the data "
                                  f"service said HTTP {r.status_code}: {r.reason_phrase})")
            records = r.json() if r.status_code == 200 and r.content else []
            self.known[series] = {rec["00080018"]["Value"][0] for rec in records}
        return self.known[series]

    def run(self, paths: list[Path]) -> Report:
        from tqdm import tqdm

        report = self.report = Report()
        batch: list[tuple[str, stow.Part]] = []
        size = 0
        with tqdm(total=count_inputs(paths), desc="ingest", unit="file", file=self.out) as bar:
            for name, data in iter_inputs(paths):
                part = stow.inspect(0, data)
                if part.problem:
                    report.refused.append((name, part.problem))
                elif part.sop in self._present(part.study, part.series):
                    report.already.append(name)
                else:
                    self.known[part.series].add(part.sop)
                    batch.append((name, part))
                    size += len(data)
                    if size >= STOW_BATCH_BYTES or len(batch) >= 256:
                        self._send(batch, report)
                        batch, size = [], 0
                bar.update(1)
            if batch:
                self._send(batch, report)
        return report

    def _send(self, batch: list[tuple[str, stow.Part]], report: Report) -> None:
        boundary = "imaginghub-ingest"
        try:
            r = self.http.post(
                f"{self.url}/studies",
                content=stow.multipart_body([p for _, p in batch], boundary),
                headers={"Content-Type": f'multipart/related; type="application/dicom"; '
                                         f"boundary={boundary}",
                         "Accept": "application/dicom+json",
                         "X-Imaginghub-Project": self.project})
        except httpx.TransportError as e:
            raise Interrupted(report, f"the data service stopped answering "
                                      f"({type(e).__name__}); is the workspace running?") from None
        if r.status_code in (502, 503, 504):
            raise Interrupted(report, f"the archive is not answering (the data service said HTTP "
                                      f"{r.status_code}: {r.reason_phrase})")
        if r.status_code not in (200, 202, 409):
            raise ImagingHubError(f"the data service refused the upload: HTTP {r.status_code} "
                                  f"{r.reason_phrase}")
        answer = r.json() if r.content else {}
        failed = {item.get("00081155", {}).get("Value", [""])[0]:
                  item.get("00081197", {}).get("Value", [stow.PROCESSING_FAILURE])[0]
                  for item in answer.get("00081198", {}).get("Value", [])}
        for name, part in batch:
            if part.sop in failed:
                report.refused.append((name, stow.REASONS.get(failed[part.sop],
                                                              f"status {failed[part.sop]:#06x}")))
                self.known[part.series].discard(part.sop)
            else:
                report.stored.append(name)
                if part.warnings:
                    report.warned[name] = part.warnings
