"""Kernel start-up with and without the imaging preload: time from start to
the first executed cell, python3 (plain ipykernel) vs the "Imaging (Python 3)"
kernelspec, same run. The preload must add well under 1.5 s.

    .venv/bin/python bench/kernel_start.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

from jupyter_client.manager import start_new_kernel

from imaginghub.kernels import kernelspec


def first_cell(name: str) -> float:
    t = time.perf_counter()
    km, kc = start_new_kernel(kernel_name=name, startup_timeout=60)
    try:
        reply = kc.execute_interactive("pacs if 'pacs' in dir() else None", timeout=60)
        assert reply["content"]["status"] == "ok", reply
        return time.perf_counter() - t
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        kernelspec.install(os.path.join(d))
        os.environ["JUPYTER_PATH"] = d
        os.environ.setdefault("IMAGINGHUB_DICOMWEB_URL", "http://127.0.0.1:9/dicom-web")
        times = {"python3": [], kernelspec.KERNEL_NAME: []}
        first_cell("python3")  # warm the file cache
        for _ in range(args.repeat):
            for name in times:
                times[name].append(first_cell(name))
    base = statistics.median(times["python3"])
    print(f"\nkernel start to first cell, median of {args.repeat} (python {sys.version.split()[0]})")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"{name:10} {m:6.2f} s   (+{m - base:.2f} s over python3)")


if __name__ == "__main__":
    main()
