"""A job in its Kubernetes pod (:mod:`.kubernetes`):
``python -m imaginghub.hub.services.jobs.pod MOUNT``.

The spec and the notebook come from the job's Secret at MOUNT; the run is
:func:`.child.run` in a folder of the pod's own. What it writes goes to the
job service's API with the job's own token (``PUT jobs/ID/files/NAME``):
the progress and the notebook while it runs, then the work folder's files,
the executed notebook and the result. Its output is the pod's log. The exit
code is the run's.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from urllib.parse import quote

import httpx

EVERY = 5.0  # seconds between sends of the progress while the run goes on


class Sender:
    def __init__(self, job_dir: Path, url: str, job_id: str, token: str):
        self.job_dir = job_dir
        self.base = f"{url.rstrip('/')}/api/jobs/{job_id}/files"
        self.http = httpx.Client(timeout=120, headers={"Authorization": f"token {token}"})
        self.sent: dict[str, float] = {}

    def send(self, name: str, *, force: bool = False) -> None:
        path = self.job_dir / name
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return
        if not force and self.sent.get(name) == mtime:
            return
        r = self.http.put(f"{self.base}/{quote(name)}", content=path.read_bytes())
        if r.status_code >= 300:
            print(f"imaginghub: the job service refused {name}: HTTP {r.status_code} "
                  f"{r.reason_phrase}", file=sys.stderr, flush=True)
            return
        self.sent[name] = mtime

    def while_running(self, done: threading.Event) -> None:
        while not done.wait(EVERY):
            for name in ("progress.json", "output.ipynb"):
                try:
                    self.send(name)
                except httpx.HTTPError as e:  # the service restarts: the next round
                    print(f"imaginghub: could not send {name} ({e})", file=sys.stderr)

    def at_the_end(self) -> None:
        work = self.job_dir / "work"
        for f in sorted(p for p in work.rglob("*") if p.is_file() and not p.is_symlink()):
            self.send(str(f.relative_to(self.job_dir)), force=True)
        for name in ("progress.json", "output.ipynb", "result.json"):  # the result last
            self.send(name, force=True)


def main(mount: str) -> int:
    from .child import run

    job_dir = Path(tempfile.mkdtemp(prefix="imaginghub-job-"))
    spec = Path(mount) / "spec.json"
    shutil.copyfile(spec, job_dir / "spec.json")
    sender = Sender(job_dir, os.environ["IMAGINGHUB_JOB_UPLOAD_URL"],
                    os.environ["IMAGINGHUB_JOB_ID"], os.environ["JUPYTERHUB_API_TOKEN"])
    done = threading.Event()
    thread = threading.Thread(target=sender.while_running, args=(done,), daemon=True)
    thread.start()
    try:
        code = run(job_dir)
    finally:
        done.set()
        thread.join(10)
        sender.at_the_end()
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
