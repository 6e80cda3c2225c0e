"""A CPU-bound function per series, serial in one process and then with
``map_series`` on a 2-worker Dask cluster from the hub's gateway, in one run
of the demo stack (as the oncology user alice). Also the cluster's start
time. Prints figures; asserts nothing.

The function: a 3D Gaussian scale space (sigma 1, 2, 4 and 8 mm; numpy
only, one core) and statistics of its differences of Gaussians, per series.
The demo has one multi-slice CT of a useful size that alice may read
(``ct-head-reversed``, 120 x 256 x 256; ``ct-head``, 300 x 512 x 512, would
take most of a 2 GiB worker), so its UID is repeated ``--series`` times (16 by
default): every repeat is loaded through the data service again, on both
sides.

    .venv/bin/python bench/dask_map.py [--series 16] [--workers 2] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _stack import running_stack  # noqa: E402

from imaginghub.hub import demo  # noqa: E402
from imaginghub.hub.services.dask_gateway import client_environment  # noqa: E402
from imaginghub.hub.state import Home  # noqa: E402


def gaussian(a: np.ndarray, sigma_vox) -> np.ndarray:
    """``a`` filtered by a 3D Gaussian (sigma in voxels per axis ``k, j, i``):
    in-plane by FFT, slice by slice, then along ``k`` by a short kernel.
    Slab by slab, so that it works in the cache (numpy only, no BLAS: one
    core per call, on both sides of the comparison)."""
    ky = np.fft.fftfreq(a.shape[1])[:, None] * sigma_vox[1]
    kx = np.fft.rfftfreq(a.shape[2])[None, :] * sigma_vox[2]
    gain = np.exp(-2 * np.pi**2 * (ky**2 + kx**2)).astype(np.float32)
    plane = np.empty_like(a)
    for k in range(a.shape[0]):
        plane[k] = np.fft.irfft2(np.fft.rfft2(a[k]) * gain, s=a.shape[1:])
    r = max(1, int(3 * sigma_vox[0] + 0.5))
    w = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma_vox[0]) ** 2).astype(np.float32)
    w /= w.sum()
    out = np.empty_like(a)
    n = a.shape[0]
    for k in range(n):
        acc = out[k]
        acc[...] = 0
        for wi, i in zip(w, np.clip(np.arange(k - r, k + r + 1), 0, n - 1)):
            acc += wi * plane[i]
    return out


SCALES_MM = (1.0, 2.0, 4.0, 8.0)


def blobs(volume, meta) -> dict:
    """A Gaussian scale space (sigma 1, 2, 4 and 8 mm) and statistics of its
    differences of Gaussians."""
    a = volume.array.astype(np.float32)
    mm = np.asarray(volume.spacing[::-1])  # (k, j, i) order of the array
    g = [gaussian(a, s / mm) for s in SCALES_MM]
    out = {"mean": float(a.mean())}
    for s, fine, coarse in zip(SCALES_MM, g, g[1:]):
        dog = fine - coarse
        p1, p99 = np.percentile(dog, [1, 99])
        out[f"dog{s:g}_p1"], out[f"dog{s:g}_p99"] = float(p1), float(p99)
        out[f"dog{s:g}_blobs"] = int((dog > p99).sum())
    return out


def wait_until_quiet(limit: float = 60.0, below: float = 0.1) -> float:
    """Wait (at most ``limit`` s) until the machine's CPUs are idle but for
    ``below`` of one core over a second; returns the seconds waited."""
    import psutil

    t = time.perf_counter()
    psutil.cpu_percent()
    while time.perf_counter() - t < limit:
        if psutil.cpu_percent(interval=1.0) * psutil.cpu_count() / 100 < below:
            break
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--series", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    ct = demo.series("ct-head-reversed")
    uids = [ct.series_uid] * args.series
    with running_stack() as (_, gateway, run):
        state = Home(run["home"]).load_state()
        os.environ.update(client_environment(run["url"], state["dask_gateway_port"]))
        os.environ.update(IMAGINGHUB_DICOMWEB_URL=gateway.url,
                          IMAGINGHUB_DICOMWEB_TOKEN=gateway._token, IMAGINGHUB_CACHE_DIR="off")
        from imaginghub.kernels.cluster import cluster, gateway as dask_gateway
        from imaginghub.kernels.mapping import map_series
        from imaginghub.kernels.dicomweb import PACS

        pacs = PACS(gateway.url, token=gateway._token)  # no local cache: every load is real

        # the stack's own start-up work (catalog crawl) over first
        quiet = wait_until_quiet()
        # cluster start: the gateway's steps, then the whole of cluster()
        runs, readies = [], []
        for i in range(3):
            if i:
                quiet += wait_until_quiet()
            with dask_gateway() as gw:
                t = time.perf_counter()
                gc = gw.connect(gw.submit(workers=args.workers), shutdown_on_close=True)
                runs.append(time.perf_counter() - t)
                c = gc.get_client(set_as_default=False)
                c.wait_for_workers(args.workers, timeout=120)
                readies.append(time.perf_counter() - t)
                c.close()
                gc.shutdown()
        quiet += wait_until_quiet()
        t = time.perf_counter()
        client = cluster(args.workers)
        start_s = time.perf_counter() - t

        # warm-up (imports, connections) on both sides, not timed
        blobs(pacs.load_series(ct.series_uid, progress=False), {})
        map_series(blobs, uids[:args.workers], progress=False)
        serial_times, parallel_times = [], []
        for _ in range(args.repeat):
            quiet += wait_until_quiet()
            t = time.perf_counter()
            serial = [blobs(pacs.load_series(u, progress=False), {}) for u in uids]
            serial_times.append(time.perf_counter() - t)
            quiet += wait_until_quiet()
            t = time.perf_counter()
            df = map_series(blobs, uids, progress=False)
            parallel_times.append(time.perf_counter() - t)
        client.shutdown()
    serial_s, parallel_s = statistics.median(serial_times), statistics.median(parallel_times)

    same = df["error"].isna().all() and all(
        {k: row[k] for k in serial[i]} == serial[i] for i, row in enumerate(df.to_dict("records")))
    rounds = ", ".join(f"{s / p:.2f}x" for s, p in zip(serial_times, parallel_times))
    print(f"\n{args.series} series ({ct.key}, 120 x 256 x 256 CT, its UID repeated {args.series}"
          f" times), function: 3D Gaussian scale space plus statistics, {os.cpu_count()} cores")
    print(f"median of {args.repeat} rounds, each on an idle machine:")
    print(f"  serial, one process (load + function):   {serial_s:7.2f} s  "
          f"({serial_s / args.series:.2f} s per series)")
    print(f"  map_series on {args.workers} gateway workers:         {parallel_s:7.2f} s  "
          f"({parallel_s / args.series:.2f} s per series)")
    print(f"  speed-up: {serial_s / parallel_s:.2f}x (target 1.7x on 2 cores; rounds: {rounds}); "
          f"results equal the serial run: {same}")
    print(f"  (waited {quiet:.0f} s in all for an idle machine before timing)")
    print(f"cluster start (median of {len(runs)}): running {statistics.median(runs):.2f} s after "
          f"the request (anchor 0.8 s), {args.workers} workers ready at "
          f"{statistics.median(readies):.2f} s; the whole of cluster({args.workers}) in the "
          f"run above: {start_s:.2f} s")


if __name__ == "__main__":
    main()
