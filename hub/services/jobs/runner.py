"""Runners start a job's process and watch it.

A runner gets a job's id, its user, what to run (the ``spec`` that
:mod:`.child` reads), the kept notebook and the environment of the run, and
answers with a *handle*, a short string kept in the job's record so that a
restarted service finds the process again. The job's files (log, progress,
result, the executed notebook, ``work/``) are in ``runs_dir/ID``. Override,
in a subclass registered under the entry point group
``imaginghub.job_runners``:

- :meth:`Runner.start` (start the process, return its handle),
- :meth:`Runner.poll` (None while it runs, else its exit code),
- :meth:`Runner.stop` (stop it and everything it started),
- :meth:`Runner.clean_up` and :meth:`Runner.remove` (what a finished job
  left behind, its folder).

:class:`LocalProcessRunner` runs jobs as local processes of the service's
machine, through the job starter (:mod:`.starter`), which alone may switch
to the job's user; a Kubernetes runner would create a Job per run and keep
its name as the handle.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from pathlib import Path

from .errors import RunnerUnavailable

log = logging.getLogger("imaginghub.jobs")


# what poll answers for a process that is gone when its exit code cannot be known
# (it was started by an earlier run of the starter)
GONE = -(2**16)


class Runner:
    name = "base"
    runs_dir: Path

    def start(self, job_id: str, user: str, spec: dict, notebook: Path,
              env: dict[str, str]) -> str:
        raise NotImplementedError

    def poll(self, handle: str) -> int | None:
        """None while the job's process runs; its exit code once it ended
        (negative: the signal that ended it; :data:`GONE` when it is gone
        and its exit code cannot be known)."""
        raise NotImplementedError

    def stop(self, handle: str, grace: float = 5.0) -> None:
        raise NotImplementedError

    def clean_up(self, job_id: str) -> None:
        """Remove what a finished job left running (called once it ended)."""

    def remove(self, job_id: str) -> None:
        """Delete the job's folder."""

    def close(self) -> None:
        """The service stops (running jobs go on)."""


class LocalProcessRunner(Runner):
    """A job is :func:`.child.run` in a process and session of its own,
    forked by the job starter and running as the job's user: stopping the
    service does not stop it, and a restarted service adopts it by pid and
    start time. Its output goes to ``RUNS/ID/log.txt``."""

    name = "local"

    def __init__(self, socket_path: Path, runs_dir: Path):
        self.socket_path = Path(socket_path)
        self.runs_dir = Path(runs_dir)
        self._sock: socket.socket | None = None
        self._buffer = b""
        self._lock = threading.Lock()
        self._exits: dict[int, int] = {}
        self._mine: set[int] = set()  # pids the starter forked for this service
        self._gone_since: dict[int, float] = {}

    # -- the starter's socket ----------------------------------------------------
    def _ask(self, request: dict) -> dict:
        with self._lock:
            for attempt in (1, 2):
                try:
                    if self._sock is None:
                        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                        s.settimeout(30)
                        s.connect(str(self.socket_path))
                        self._sock, self._buffer = s, b""
                    self._sock.sendall(json.dumps(request).encode() + b"\n")
                    while b"\n" not in self._buffer:
                        chunk = self._sock.recv(1 << 20)
                        if not chunk:
                            raise ConnectionError("the job starter closed the connection")
                        self._buffer += chunk
                    line, self._buffer = self._buffer.split(b"\n", 1)
                    answer = json.loads(line)
                    break
                except OSError as e:
                    if self._sock is not None:
                        self._sock.close()
                    self._sock = None
                    if attempt == 2:
                        raise RunnerUnavailable(f"the job starter does not answer at "
                                                f"{self.socket_path} ({e})") from None
        if "error" in answer:
            raise RuntimeError(f"the job starter refused: {answer['error']}")
        return answer

    def _collect_exits(self) -> None:
        try:
            exits = self._ask({"op": "exits"})["exits"]
        except (RunnerUnavailable, RuntimeError):
            return
        for pid, code in exits.items():
            self._exits[int(pid)] = code

    # -- Runner ------------------------------------------------------------------
    def start(self, job_id, user, spec, notebook, env) -> str:
        answer = self._ask({"op": "start", "id": job_id, "user": user, "spec": spec,
                            "notebook": str(notebook), "env": env})
        self._mine.add(answer["pid"])
        return json.dumps({"pid": answer["pid"], "started": answer["started"]})

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
        import time

        pid = json.loads(handle)["pid"]
        self._collect_exits()
        if pid in self._exits:
            self._mine.discard(pid)
            self._gone_since.pop(pid, None)
            return self._exits.pop(pid)
        if self._process(handle) is not None:
            return None
        if pid in self._mine:
            # the starter reaps it within a moment and then tells its exit code
            first = self._gone_since.setdefault(pid, time.monotonic())
            if time.monotonic() - first < 5:
                return None
            self._mine.discard(pid)
        self._gone_since.pop(pid, None)
        return GONE  # adopted after a restart: alive or not is all that can be known

    def stop(self, handle: str, grace: float = 5.0) -> None:
        """SIGTERM to the job's process and all it started (papermill's kernel
        runs in a session of its own), SIGKILL to what is left after ``grace``."""
        import time

        h = json.loads(handle)
        self._ask({"op": "stop", "pid": h["pid"], "started": h["started"], "grace": grace})
        deadline = time.monotonic() + grace + 5
        while time.monotonic() < deadline and self._process(handle) is not None:
            time.sleep(0.1)

    def clean_up(self, job_id: str) -> None:
        try:
            self._ask({"op": "clean_up", "id": job_id})
        except (RunnerUnavailable, RuntimeError) as e:
            log.warning("could not clean up after job %s: %s", job_id, e)

    def remove(self, job_id: str) -> None:
        self._ask({"op": "remove", "id": job_id})

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def runner(name: str, home) -> Runner:
    """The runner called ``name``: ``local``, or one an installed package
    registers under the entry point group ``imaginghub.job_runners`` (made
    with the site's :class:`~imaginghub.hub.state.Home`)."""
    if name == "local":
        return LocalProcessRunner(starter_socket(home), home.runs_dir())
    import importlib.metadata

    for ep in importlib.metadata.entry_points(group="imaginghub.job_runners"):
        if ep.name == name:
            return ep.load()(home)
    raise ValueError(f"no job runner called {name!r}: use 'local' or install the package "
                     "that provides it")


def base_environment(extra: dict[str, str]) -> dict[str, str]:
    """A job's environment: only what a run needs, never the service's own
    token or the archive's credentials."""
    keep = ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.update(extra)
    return env


def starter_socket(home) -> Path:
    """Where the job starter of the site in ``home`` listens."""
    return home.jobs_dir / "starter.sock"
