"""What the data service's gateway costs: pacs.load_series of the 300-slice
demo CT and QIDO-RS series searches, through the gateway (hub token, project
filtering, audit) and straight from the archive, in one run on one stack;
then the same series as raw bytes through the hub's public URL (the proxy,
for clients outside the hub) against the data service's own port (target:
at least 0.8x its throughput), one at a time and 20 at once.

    VENV/bin/python bench/gateway_overhead.py [--repeat 15] [--queries 50] [--site-archive]

With --site-archive the archive is one of the site's own (an Orthanc that
up did not start, c.DataService.archive_url): the gateway streams every
series from it instead of reading the embedded archive's files.

(VENV: /opt/imaginghub/venv as root, .venv otherwise; `make bench` runs all.)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _stack import at_once, running_stack  # noqa: E402

from imaginghub.hub import demo  # noqa: E402
from imaginghub.kernels.dicomweb import MULTIPART_DICOM, PACS  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--site-archive", action="store_true",
                    help="the archive is the site's own, reached as any DICOMweb archive")
    args = ap.parse_args()
    print("archive: " + ("the site's own (c.DataService.archive_url: streamed)"
                         if args.site_archive else "embedded (whole series from its files)"))
    with running_stack(site_archive=args.site_archive) as (direct, gateway, run):
        measure(direct, gateway, args)
        public_url(gateway, run, args)


def public_url(gateway: PACS, run: dict, args) -> None:
    """The same series through the hub's public URL (the proxy: what clients
    outside the hub use) and from the data service's own port (what kernels
    use), raw bytes, alternating; then 20 clients at once."""
    s = demo.series("ct-head")
    path = f"/studies/{s.study_uid}/series/{s.series_uid}"
    urls = {"service port": run["gateway_url"] + path,
            "public URL": run["url"] + "/services/data/dicom-web" + path}
    headers = {"Authorization": f"token {run['token']}", "Accept": MULTIPART_DICOM}
    import httpx

    def fetch(url: str) -> tuple[float, int]:
        t = time.perf_counter()
        n = 0
        with httpx.stream("GET", url, headers=headers, timeout=600) as r:
            assert r.status_code == 200, r.status_code
            for chunk in r.iter_raw(1 << 20):
                n += len(chunk)
        return time.perf_counter() - t, n

    times = {k: [] for k in urls}
    for u in urls.values():
        fetch(u)  # warm
    for _ in range(args.repeat):
        for k, u in urls.items():
            times[k].append(fetch(u)[0])
    size = fetch(urls["public URL"])[1]
    print(f"\nthe {size / 1e6:.0f} MB series as raw bytes, {args.repeat} downloads each, "
          "alternating (median):")
    for k in urls:
        m = statistics.median(times[k])
        print(f"  {k:13} {m:6.3f} s {size / m / 1e6:6.0f} MB/s")
    ratio = statistics.median(times["service port"]) / statistics.median(times["public URL"])
    print(f"  public URL / service port throughput: {ratio:.2f} (target at least 0.80)")
    for k, u in urls.items():
        got = []
        wall = at_once([lambda: got.append(fetch(u))] * 20)
        complete = sum(n == size for _, n in got)
        print(f"  20 clients at once, {k:13}: {complete}/20 complete, {wall:5.1f} s, "
              f"{20 * size / wall / 1e6:5.0f} MB/s in all")


def measure(direct: PACS, gateway: PACS, args) -> None:
    uid = demo.series("ct-head").series_uid
    g = demo.GRIDS["ct-head"]
    mb = g.slices * g.rows * g.cols * 2 / 1e6
    loads = {"archive": [], "gateway": []}
    for p in (direct, gateway):  # warm up caches and connections
        p.load_series(uid, progress=False)
    for _ in range(args.repeat):
        for name, p in (("archive", direct), ("gateway", gateway)):
            t = time.perf_counter()
            p.load_series(uid, progress=False)
            loads[name].append(time.perf_counter() - t)
    # The same answer read as raw bytes (no decoding): the gateway's own cost,
    # without the client's CPU competing with it.
    raw = {"archive": [], "gateway": []}
    s = demo.series("ct-head")
    for _ in range(args.repeat):
        for name, p in (("archive", direct), ("gateway", gateway)):
            url = f"{p.url}/studies/{s.study_uid}/series/{s.series_uid}"
            t = time.perf_counter()
            with p._httpx().stream("GET", url, headers={"Accept": MULTIPART_DICOM}) as r:
                for _ in r.iter_raw(1 << 20):
                    pass
            raw[name].append(time.perf_counter() - t)
    queries = {"archive": [], "gateway": []}
    for _ in range(args.queries):
        for name, p in (("archive", direct), ("gateway", gateway)):
            t = time.perf_counter()
            p.search_for_series(search_filters={"Modality": "CT"})
            queries[name].append(time.perf_counter() - t)
    # Loads alternate, so both paths see the same machine; the best of N is
    # the path's own cost (on a 2-core machine, slower runs are other work
    # and page-cache or memory effects), the median what a user sees.
    print(f"\ngateway overhead: load_series of {g.slices} x {g.rows} x {g.cols} CT "
          f"({mb:.0f} MB of pixels), {args.repeat} loads each, alternating")
    for label, f in (("best", min), ("median", statistics.median)):
        a, gw = f(loads["archive"]), f(loads["gateway"])
        print(f"  {label:6} archive directly {a:6.3f} s {mb / a:5.0f} MB/s | through gateway "
              f"{gw:6.3f} s {mb / gw:5.0f} MB/s | overhead {100 * (gw / a - 1):+5.1f} %")
    a, gw = statistics.median(raw["archive"]), statistics.median(raw["gateway"])
    print(f"  raw multipart stream, median: archive {a:6.3f} s | through gateway {gw:6.3f} s | "
          f"overhead {100 * (gw / a - 1):+5.1f} % ({1000 * (gw - a):+.0f} ms)")
    qa, qg = (statistics.median(queries[k]) * 1000 for k in ("archive", "gateway"))
    qa95, qg95 = (statistics.quantiles(queries[k], n=20)[18] * 1000 for k in ("archive", "gateway"))
    print(f"QIDO-RS series search (Modality=CT), {args.queries} queries:")
    print(f"  archive directly  p50 {qa:6.1f} ms  p95 {qa95:6.1f} ms")
    print(f"  through gateway   p50 {qg:6.1f} ms  p95 {qg95:6.1f} ms   p50 overhead {qg - qa:+.1f} ms")


if __name__ == "__main__":
    main()
