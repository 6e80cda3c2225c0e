"""MB/s of pacs.load_series on a 300 x 512 x 512 CT, next to, in the same run,
dicomweb-client's retrieve_series plus stacking, and the raw multipart bytes
read with httpx (the ceiling). Prints a table; asserts nothing.

    .venv/bin/python bench/load_series.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _archive import running_archive  # noqa: E402

from imaginghub.hub import demo  # noqa: E402
from imaginghub.kernels.dicomweb import MULTIPART_DICOM, PACS  # noqa: E402


def raw_stream(url, auth, series):
    n = 0
    with httpx.Client(auth=auth, timeout=120) as c, \
            c.stream("GET", f"{url}/studies/{series.study_uid}/series/{series.series_uid}",
                     headers={"Accept": MULTIPART_DICOM}) as r:
        for chunk in r.iter_raw(1 << 20):
            n += len(chunk)
    return n


def dicomweb_client_stack(pacs, series):
    from dicomweb_client import DICOMwebClient
    from dicomweb_client.session_utils import create_session_from_user_pass

    client = DICOMwebClient(pacs.url, session=create_session_from_user_pass(*pacs_auth))
    datasets = client.retrieve_series(series.study_uid, series.series_uid)
    datasets.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    return np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
                     for ds in datasets]).astype(np.float32)


def main():
    global pacs_auth
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    series = demo.series("ct-head")
    g = demo.GRIDS["ct-head"]
    with running_archive() as (settings, auth):
        pacs_auth = auth
        demo.load(settings.dicomweb_url, auth, keys=["ct-head"])
        pacs = PACS(settings.dicomweb_url, username=auth[0], password=auth[1])
        size_mb = raw_stream(settings.dicomweb_url, auth, series) / 1e6  # also warms caches
        runs = {
            "raw multipart stream (httpx)": lambda: raw_stream(settings.dicomweb_url, auth, series),
            "dicomweb-client retrieve_series + stack": lambda: dicomweb_client_stack(pacs, series),
            "pacs.load_series": lambda: pacs.load_series(series.series_uid, progress=False),
        }
        times = {name: [] for name in runs}
        for _ in range(args.repeat):
            for name, fn in runs.items():
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
    print(f"\nload_series benchmark: {g.slices} x {g.rows} x {g.cols} int16 CT, "
          f"{size_mb:.0f} MB on the wire, median of {args.repeat}")
    raw = statistics.median(times["raw multipart stream (httpx)"])
    dwc = statistics.median(times["dicomweb-client retrieve_series + stack"])
    print(f"{'method':42} {'s':>7} {'MB/s':>7} {'vs raw':>7} {'vs dwc':>7}")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"{name:42} {m:7.3f} {size_mb / m:7.0f} {raw / m:7.2f} {dwc / m:7.2f}")


if __name__ == "__main__":
    main()
