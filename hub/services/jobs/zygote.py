"""A warm starter of jobs: ``python -m imaginghub.hub.services.jobs.zygote``.

Importing papermill takes longer than running a trivial notebook's kernel,
so the local runner keeps this process, with papermill imported, and asks
it to fork each job's process. Protocol, one JSON object per line: the
runner writes ``{"job_dir": ..., "env": {...}}`` to its stdin; it answers
``{"pid": N}`` (or ``{"error": ...}``), and ``{"exit": N, "code": C}``
when a job's process ends (negative C: the signal). It stays single
threaded (a fork copies only the forking thread, and no lock may be held
by another), and it ends when the runner closes its stdin. Jobs it started
go on if it ends (each is in a session of its own).
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
import traceback
from pathlib import Path


def _job(job_dir: Path, env: dict) -> None:
    """In the forked child: become the job's process, run it, never return."""
    code = 1
    try:
        os.setsid()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        log = os.open(job_dir / "log.txt", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        os.close(null)
        os.chdir(job_dir / "work")
        os.environ.clear()
        os.environ.update(env)
        from .child import run

        code = run(job_dir)
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _say(value: dict) -> None:
    sys.stdout.write(json.dumps(value) + "\n")
    sys.stdout.flush()


def _reap() -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        _say({"exit": pid, "code": code})


def main() -> None:
    sys.modules.setdefault("rfc3987_syntax", None)  # see child.run
    import papermill  # noqa: F401  (the point of this process)

    from . import child  # noqa: F401

    stdin = sys.stdin.buffer
    pending = b""
    while True:
        ready, _, _ = select.select([stdin], [], [], 0.1)
        _reap()
        if not ready:
            continue
        chunk = os.read(stdin.fileno(), 65536)
        if not chunk:  # the runner went away
            return
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            try:
                ask = json.loads(line)
                job_dir = Path(ask["job_dir"])
                sys.stdout.flush()
                pid = os.fork()
            except Exception as e:
                _say({"error": f"{type(e).__name__}: {e}"})
                continue
            if pid == 0:
                _job(job_dir, ask["env"])
            _say({"pid": pid})


if __name__ == "__main__":
    main()
