"""The job service's overhead, in one run on one stack:

1. a trivial workflow (tests/jobs/workflows/echo.ipynb) submitted through the
   service and waited for, against plain papermill on the same notebook in
   the same imaging kernel (its command line, and its Python API in a warm
   process); target: at most 1.5x;
2. 50 trivial jobs queued at once and run with the default concurrency
   (the service's jobs_max_running, the number of CPUs; 2 per user).

    .venv/bin/python bench/jobs.py [--repeat 5] [--queue 50]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _stack import running_stack

from imaginghub.kernels.jobs import Jobs

WORKFLOWS = Path(__file__).resolve().parents[1] / "tests" / "jobs" / "workflows"
NOTEBOOK = WORKFLOWS / "echo.ipynb"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--queue", type=int, default=50)
    args = ap.parse_args()
    with running_stack({"JobService": {"workflow_dirs": [str(WORKFLOWS)]}}) as (_, _, run):
        home = Path(run["home"])
        # the environment a user's kernel gets, for the plain papermill runs
        env = dict(os.environ, JUPYTER_PATH=str(home / "share" / "jupyter"),
                   IMAGINGHUB_DICOMWEB_URL=run["gateway_url"],
                   IMAGINGHUB_JOBS_URL=run["jobs_url"], IMAGINGHUB_DICOMWEB_TOKEN=run["token"],
                   IMAGINGHUB_CACHE_DIR="off")
        jobs = Jobs(run["jobs_url"], run["token"])
        papermill_cli = str(Path(sys.executable).parent / "papermill")

        def through_service() -> float:
            t = time.perf_counter()
            job = jobs.submit("echo", message="bench")
            while not job.refresh().done:
                time.sleep(0.05)
            assert job.status == "succeeded", job.reason
            return time.perf_counter() - t

        def plain_cli(out: Path) -> float:
            t = time.perf_counter()
            subprocess.run([papermill_cli, str(NOTEBOOK), str(out), "-k", "imaging",
                            "-p", "message", "bench", "--cwd", str(out.parent)],
                           env=env, check=True, capture_output=True)
            return time.perf_counter() - t

        os.environ.update(env)
        import papermill

        def plain_api(out: Path) -> float:
            t = time.perf_counter()
            papermill.execute_notebook(str(NOTEBOOK), str(out), parameters={"message": "bench"},
                                       kernel_name="imaging", progress_bar=False,
                                       cwd=str(out.parent))
            return time.perf_counter() - t

        with tempfile.TemporaryDirectory() as d:
            out = Path(d) / "out.ipynb"
            through_service()  # warm: the first job also warms the disk cache
            plain_cli(out)
            plain_api(out)
            service, cli, api = [], [], []
            for _ in range(args.repeat):  # interleaved, so that drift hits all three
                service.append(through_service())
                cli.append(plain_cli(out))
                api.append(plain_api(out))
        s, c, a = (statistics.median(x) for x in (service, cli, api))
        print(f"trivial workflow, median of {args.repeat}:")
        print(f"  papermill API (warm process): {a:.2f} s")
        print(f"  papermill command line:       {c:.2f} s")
        print(f"  through the job service:      {s:.2f} s  ({s / c:.2f}x the command line, "
              f"{s / a:.2f}x the API; target <= 1.5x)")

        t = time.perf_counter()
        queued = [jobs.submit("echo", message=f"job {i}") for i in range(args.queue)]
        submitted = time.perf_counter() - t
        pending = list(queued)
        while pending:
            time.sleep(0.2)
            pending = [j for j in pending if not j.refresh().done]
        total = time.perf_counter() - t
        bad = [j for j in queued if j.status != "succeeded"]
        print(f"{args.queue} trivial jobs queued at once (submitted in {submitted:.2f} s): all "
              f"done in {total:.1f} s, {total / args.queue:.2f} s per job, "
              f"{60 * args.queue / total:.0f} jobs/min; {len(bad)} did not succeed")


if __name__ == "__main__":
    main()
