"""pacs.load_series of a 300 x 512 x 512 CT, uncompressed and as JPEG 2000
lossless, next to its baselines in the same run: the raw multipart bytes
read with httpx (the ceiling) and dicomweb-client's retrieve_series plus
stacking; straight from the archive and through the gateway; and the second
load from the local cache. Prints tables; asserts nothing.

    .venv/bin/python bench/load_series.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _stack import ct_copy, running_stack  # noqa: E402

from imaginghub.hub import demo  # noqa: E402
from imaginghub.kernels.dicomweb import MULTIPART_DICOM, PACS  # noqa: E402


def raw_stream(pacs: PACS, study: str, series: str) -> int:
    n = 0
    with pacs._httpx().stream("GET", f"{pacs.url}/studies/{study}/series/{series}",
                              headers={"Accept": MULTIPART_DICOM}) as r:
        for chunk in r.iter_raw(1 << 20):
            n += len(chunk)
    return n


def dicomweb_client_stack(pacs: PACS, study: str, series: str) -> np.ndarray:
    # in the stored syntax: Orthanc 1.10 cannot transcode JPEG 2000 (HTTP 500)
    datasets = pacs.client.retrieve_series(study, series,
                                           media_types=(("application/dicom", "*"),))
    datasets.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    return np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
                     for ds in datasets]).astype(np.float32)


def j2k_copy(direct: PACS, gateway: PACS) -> tuple[str, str]:
    """The demo CT re-encoded as JPEG 2000 lossless, stored as a new series of
    alice's project through the gateway."""
    from pydicom.uid import JPEG2000Lossless

    series, datasets = ct_copy(direct, "CT head, JPEG 2000 lossless", JPEG2000Lossless)
    gateway.store_instances(datasets)
    return demo.series("ct-head").study_uid, series


def median_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def table(title: str, pixels_mb: float, rows: list, dwc: float) -> None:
    """rows: (method, seconds, the raw stream it is compared with)."""
    print(f"\n{title}")
    print(f"{'method':52} {'s':>7} {'MB/s':>6} {'vs raw':>7} {'vs dwc':>7}")
    for name, s, raw in rows:
        print(f"{name:52} {s:7.3f} {pixels_mb / s:6.0f} {raw / s:7.2f} {dwc / s:7.2f}")


def interleaved(fns: dict, repeat: int) -> dict:
    """Median time of each function, the functions taking turns (so that a
    slow moment of the machine falls on all of them alike)."""
    times: dict = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(v) for name, v in times.items()}


def compare(direct: PACS, gateway: PACS, study: str, series: str, repeat: int) -> tuple:
    """(rows for table(), dicomweb-client's time) for one series."""
    m = interleaved({
        "raw archive": lambda: raw_stream(direct, study, series),
        "load archive": lambda: direct.load_series(series, progress=False),
        "raw gateway": lambda: raw_stream(gateway, study, series),
        "load gateway": lambda: gateway.load_series(series, progress=False),
    }, repeat)
    dwc = median_of(lambda: dicomweb_client_stack(direct, study, series), 3)
    return [
        ("raw multipart stream, httpx, archive (ceiling)", m["raw archive"], m["raw archive"]),
        ("raw multipart stream, httpx, through the gateway", m["raw gateway"],
         m["raw gateway"]),
        ("dicomweb-client retrieve_series + stack", dwc, m["raw archive"]),
        ("pacs.load_series, archive directly", m["load archive"], m["raw archive"]),
        ("pacs.load_series, through the gateway", m["load gateway"], m["raw gateway"]),
    ], dwc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    g = demo.GRIDS["ct-head"]
    pixels_mb = g.slices * g.rows * g.cols * 2 / 1e6
    ct = demo.series("ct-head")
    with tempfile.TemporaryDirectory() as cache_dir, running_stack() as (direct, gateway, run):
        cached = PACS(gateway.url, token=gateway._token, cache_dir=cache_dir)
        j2k_study, j2k = j2k_copy(direct, gateway)
        r = args.repeat
        for p in (direct, gateway):  # warm up connections and the page cache
            p.load_series(ct.series_uid, progress=False)
            p.load_series(j2k, progress=False)
        wire = raw_stream(direct, ct.study_uid, ct.series_uid) / 1e6
        wire_j2k = raw_stream(direct, j2k_study, j2k) / 1e6
        rows, dwc = compare(direct, gateway, ct.study_uid, ct.series_uid, r)
        table(f"uncompressed: {g.slices} x {g.rows} x {g.cols} int16 CT, {wire:.0f} MB on the "
              f"wire, median of {r}, the methods taking turns (dicomweb-client: of 3); MB/s "
              "of pixels; vs raw: against the raw stream from the same place", pixels_mb, rows,
              dwc)
        rows, dwc = compare(direct, gateway, j2k_study, j2k, r)
        table(f"JPEG 2000 lossless: the same CT, {wire_j2k:.0f} MB on the wire", pixels_mb,
              rows, dwc)

        firsts, seconds, touched = [], [], []
        for _ in range(r):
            cached.cache.clear()
            t = time.perf_counter()
            cached.load_series(ct.series_uid, progress=False)
            firsts.append(time.perf_counter() - t)
            cached.cache.flush()  # written in the background: not part of either load
            t = time.perf_counter()
            vol = cached.load_series(ct.series_uid, progress=False)
            seconds.append(time.perf_counter() - t)
            float(vol.array.sum())  # every page read
            touched.append(time.perf_counter() - t)
        first, second, touch = (statistics.median(x) for x in (firsts, seconds, touched))
        print(f"\nlocal cache (through the gateway), median of {r}:")
        print(f"  first load {first:.3f} s | second load {second:.3f} s ({first / second:.0f}x) "
              f"| second load and a sum over every voxel {touch:.3f} s ({first / touch:.1f}x)")


if __name__ == "__main__":
    main()
