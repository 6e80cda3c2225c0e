"""Runners start a job's process and watch it.

A runner gets a job's folder (``spec.json`` inside says what to run; see
:mod:`.child`) and the environment of the run, and answers with a *handle*,
a short string kept in the job's record so that a restarted service finds
the process again. Override, in a subclass registered under the entry point
group ``imaginghub.job_runners``:

- :meth:`Runner.start` (start the process, return its handle),
- :meth:`Runner.poll` (None while it runs, else its exit code),
- :meth:`Runner.stop` (stop it and everything it started).

:class:`LocalProcessRunner` runs jobs as local processes of the service's
machine; a Kubernetes runner would create a Job per run and keep its name
as the handle.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

log = logging.getLogger("imaginghub.jobs")


# what poll answers for a process that is gone when its exit code cannot be known
# (it was started by an earlier run of the service)
GONE = -(2**16)


class Runner:
    name = "base"

    def start(self, job_dir: Path, env: dict[str, str]) -> str:
        raise NotImplementedError

    def poll(self, handle: str) -> int | None:
        """None while the job's process runs; its exit code once it ended
        (negative: the signal that ended it; :data:`GONE` when it is gone
        and its exit code cannot be known)."""
        raise NotImplementedError

    def stop(self, handle: str, grace: float = 5.0) -> None:
        raise NotImplementedError

    def clean_up(self, job_id: str) -> None:
        """Remove what a finished job left behind (called once it ended)."""

    def close(self) -> None:
        """The service stops (running jobs go on)."""


class _Zygote:
    """The runner's side of :mod:`.zygote`: a warm process that forks jobs."""

    def __init__(self):
        from ...process import _child_setup

        # A forked process shows its starter's environment in /proc/PID/environ,
        # whatever it sets later: the starter gets nothing secret (not the
        # service's token), and each job its own environment when forked.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "imaginghub.hub.services.jobs.zygote"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, preexec_fn=_child_setup,
            env=base_environment({"PYTHONUNBUFFERED": "1"}))
        self.answers: queue.Queue = queue.Queue()
        self.exits: dict[int, int] = {}
        self.forked: set[int] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True, name="zygote").start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if "exit" in msg:
                self.exits[msg["exit"]] = msg["code"]
            else:
                self.answers.put(msg)
        self.answers.put({"error": "the job starter ended"})

    def alive(self) -> bool:
        return self.proc.poll() is None

    def fork(self, job_dir: Path, env: dict[str, str]) -> int:
        with self._lock:
            self.proc.stdin.write(json.dumps({"job_dir": str(job_dir), "env": env}).encode()
                                  + b"\n")
            self.proc.stdin.flush()
            answer = self.answers.get(timeout=30)
        if "pid" not in answer:
            raise RuntimeError(answer.get("error", "no answer"))
        self.forked.add(answer["pid"])
        return answer["pid"]

    def close(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(5)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()


class LocalProcessRunner(Runner):
    """A job is :func:`.child.run` in a process and session of its own:
    stopping the service does not stop it, and a restarted service adopts it
    by pid and start time. Its output goes to ``JOB_DIR/log.txt``.

    Processes are forked from a warm starter that has papermill imported
    (:mod:`.zygote`; about 1 s less per job than a fresh interpreter), or
    started as ``python -m imaginghub.hub.services.jobs.child JOB_DIR`` when
    ``warm`` is off or the starter is not available."""

    name = "local"

    def __init__(self, warm: bool = True):
        self._procs: dict[int, subprocess.Popen] = {}
        self._warm = warm
        self._zygote: _Zygote | None = None

    def _starter(self) -> _Zygote | None:
        if not self._warm:
            return None
        if self._zygote is None or not self._zygote.alive():
            try:
                self._zygote = _Zygote()
            except OSError:
                self._warm = False
                return None
        return self._zygote

    def start(self, job_dir: Path, env: dict[str, str]) -> str:
        import psutil

        pid = None
        zygote = self._starter()
        if zygote is not None:
            try:
                pid = zygote.fork(job_dir, env)
            except (OSError, RuntimeError, queue.Empty) as e:
                log.warning("the warm job starter failed (%s): starting a new interpreter", e)
        if pid is None:
            logf = open(job_dir / "log.txt", "ab")
            try:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "imaginghub.hub.services.jobs.child", str(job_dir)],
                    stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, env=env,
                    cwd=job_dir / "work", start_new_session=True)
            finally:
                logf.close()
            pid = proc.pid
            self._procs[pid] = proc
        try:
            started = psutil.Process(pid).create_time()
        except psutil.Error:
            started = 0.0
        return json.dumps({"pid": pid, "started": started})

    def _process(self, handle: str):
        """The live process of a handle, or None (gone, or the pid reused)."""
        import psutil

        h = json.loads(handle)
        try:
            p = psutil.Process(h["pid"])
            if abs(p.create_time() - h["started"]) > 1 or p.status() == psutil.STATUS_ZOMBIE:
                return None
            return p
        except psutil.Error:
            return None

    def poll(self, handle: str) -> int | None:
        pid = json.loads(handle)["pid"]
        proc = self._procs.get(pid)
        if proc is not None:  # started by this service: its exit code is known
            code = proc.poll()
            if code is not None:
                del self._procs[pid]
            return code
        z = self._zygote
        if z is not None and pid in z.forked:
            if pid in z.exits:
                z.forked.discard(pid)
                return z.exits.pop(pid)
            if z.alive():  # its exit is reported once the starter reaped it
                return None
        # adopted after a restart: alive or not is all that can be known
        return None if self._process(handle) is not None else GONE

    def stop(self, handle: str, grace: float = 5.0) -> None:
        """SIGTERM to the job's process and all it started (papermill's kernel
        runs in a session of its own), SIGKILL to what is left after ``grace``."""
        import psutil

        from ...process import kill_tree

        root = self._process(handle)
        if root is None:
            return
        try:
            pids = [root.pid, *(p.pid for p in root.children(recursive=True))]
        except psutil.Error:
            pids = [root.pid]
        kill_tree(pids, timeout=grace)
        pid = json.loads(handle)["pid"]
        if pid in self._procs:
            try:
                self._procs[pid].wait(5)
            except subprocess.TimeoutExpired:
                pass

    def close(self) -> None:
        if self._zygote is not None:
            self._zygote.close()

    def clean_up(self, job_id: str) -> None:
        """Kill processes of the job that outlived it: a kernel whose papermill
        was killed keeps running in its own session. They are found by the
        job's id in their environment."""
        import psutil

        left = []
        for p in psutil.process_iter(["environ"]):
            try:
                if (p.info["environ"] or {}).get("IMAGINGHUB_JOB_ID") == job_id:
                    left.append(p)
            except (psutil.Error, TypeError):
                continue
        for p in left:
            try:
                p.kill()
            except psutil.Error:
                pass


def runner(name: str) -> Runner:
    """The runner called ``name``: ``local``, or one an installed package
    registers under the entry point group ``imaginghub.job_runners``."""
    if name == "local":
        return LocalProcessRunner()
    import importlib.metadata

    for ep in importlib.metadata.entry_points(group="imaginghub.job_runners"):
        if ep.name == name:
            return ep.load()()
    raise ValueError(f"no job runner called {name!r}: use 'local' or install the package "
                     "that provides it")


def base_environment(extra: dict[str, str]) -> dict[str, str]:
    """A job's environment: only what a run needs, never the service's own
    token or the archive's credentials."""
    keep = ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.update(extra)
    return env
