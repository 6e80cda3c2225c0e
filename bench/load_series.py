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


def table(title: str, pixels_mb: float, rows: dict, raw: float, dwc: float) -> None:
    print(f"\n{title}")
    print(f"{'method':52} {'s':>7} {'MB/s':>6} {'vs raw':>7} {'vs dwc':>7}")
    for name, s in rows.items():
        print(f"{name:52} {s:7.3f} {pixels_mb / s:6.0f} {raw / s:7.2f} {dwc / s:7.2f}")


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
        raw = median_of(lambda: raw_stream(direct, ct.study_uid, ct.series_uid), r)
        dwc = median_of(lambda: dicomweb_client_stack(direct, ct.study_uid, ct.series_uid), 3)
        rows = {
            "raw multipart stream, httpx (ceiling)": raw,
            "dicomweb-client retrieve_series + stack": dwc,
            "pacs.load_series, archive directly": median_of(
                lambda: direct.load_series(ct.series_uid, progress=False), r),
            "pacs.load_series, through the gateway": median_of(
                lambda: gateway.load_series(ct.series_uid, progress=False), r),
        }
        table(f"uncompressed: {g.slices} x {g.rows} x {g.cols} int16 CT, {wire:.0f} MB on the "
              f"wire, median of {r} (dicomweb-client: of 3); MB/s of pixels",
              pixels_mb, rows, raw, dwc)

        raw_j = median_of(lambda: raw_stream(direct, j2k_study, j2k), r)
        dwc_j = median_of(lambda: dicomweb_client_stack(direct, j2k_study, j2k), 3)
        rows = {
            "raw multipart stream, httpx (ceiling)": raw_j,
            "dicomweb-client retrieve_series + stack": dwc_j,
            "pacs.load_series, archive directly": median_of(
                lambda: direct.load_series(j2k, progress=False), r),
            "pacs.load_series, through the gateway": median_of(
                lambda: gateway.load_series(j2k, progress=False), r),
        }
        table(f"JPEG 2000 lossless: the same CT, {wire_j2k:.0f} MB on the wire",
              pixels_mb, rows, raw_j, dwc_j)

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
