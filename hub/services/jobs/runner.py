"""Job runners: where and how a job's process runs, and what it left.

A runner is a plugin: a subclass of :class:`Runner` (a traitlets
``LoggingConfigurable``, configured from the site's configuration as
``c.ItsClassName.setting``), registered under the entry-point group
``imaginghub.job_runners`` and chosen with ``c.JobService.runner = "NAME"``.
imaginghub's own ``local`` runner is registered the same way (see
pyproject.toml). The scheduler calls nothing else, and only through
coroutines, so a runner may talk to a remote system (a Kubernetes API
server) without blocking the service. Override:

- :meth:`Runner.start`: start the run of a job (its id, its user, the
  ``spec`` that :mod:`.child` reads, the kept notebook, the environment)
  and answer with a *handle*, a short string kept in the job's record, from
  which a restarted service finds the run again;
- :meth:`Runner.poll`: None while it runs, else its exit code;
- :meth:`Runner.stop`: stop it and everything it started;
- :meth:`Runner.read`: a file the run wrote (``log.txt``, ``progress.json``,
  ``result.json``, ``output.ipynb``) or None; the scheduler and the API read
  a job's log, progress and result only through :meth:`Runner.log`,
  :meth:`Runner.progress` and :meth:`Runner.result`, which use it; a runner
  whose runs keep these elsewhere (a pod's log) overrides those instead;
- :meth:`Runner.artifacts` and :meth:`Runner.open_artifact`: what the run
  wrote in its ``work/`` folder;
- :meth:`Runner.clean_up`, :meth:`Runner.remove`, :meth:`Runner.close`.

:class:`LocalProcessRunner` runs jobs as local processes of the service's
machine, through the job starter (:mod:`.starter`), which alone may switch
to the job's user; the runs' files are in ``runs_dir/ID``, read without
following links (:mod:`imaginghub.hub.safeio`). A Kubernetes runner creates
a Job per run, keeps its name as the handle, and reads the log from the
pod and the rest from the run's volume or object store.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import threading
from pathlib import Path
from typing import BinaryIO

from traitlets.config import LoggingConfigurable

from ... import safeio
from .errors import RunnerUnavailable

log = logging.getLogger("imaginghub.jobs")

ENTRY_POINT_GROUP = "imaginghub.job_runners"
# what poll answers for a process that is gone when its exit code cannot be known
# (it was started by an earlier run of the starter)
GONE = -(2**16)


class Runner(LoggingConfigurable):
    """The base of job runners (see the module's docstring for what to
    override). ``home`` is the site's :class:`~imaginghub.hub.state.Home`;
    the site's configuration arrives as traitlets' ``config``."""

    name = "base"  # its entry point's name

    def __init__(self, home=None, **kwargs):
        super().__init__(**kwargs)
        self.home = home

    async def start(self, job_id: str, user: str, spec: dict, notebook: Path,
                    env: dict[str, str]) -> str:
        raise NotImplementedError

    async def poll(self, handle: str) -> int | None:
        """None while the job's process runs; its exit code once it ended
        (negative: the signal that ended it; :data:`GONE` when it is gone
        and its exit code cannot be known)."""
        raise NotImplementedError

    async def stop(self, handle: str, grace: float = 5.0) -> None:
        raise NotImplementedError

    async def read(self, job_id: str, name: str, offset: int = 0,
                   limit: int | None = None) -> bytes | None:
        """The file ``name`` the run wrote, from ``offset`` (at most ``limit``
        bytes), or None when there is none."""
        raise NotImplementedError

    async def artifacts(self, job_id: str) -> list[tuple[str, int]]:
        """(path, size) of every file the run wrote in its work folder."""
        return []

    async def open_artifact(self, job_id: str, path: str) -> BinaryIO | None:
        """One of :meth:`artifacts`, open for reading, or None."""
        return None

    async def clean_up(self, job_id: str) -> None:
        """Remove what a finished job left running (called once it ended)."""

    async def remove(self, job_id: str) -> None:
        """Delete what the run left."""

    async def close(self) -> None:
        """The service stops (running jobs go on)."""

    # -- what the scheduler and the API read: built on read() ----------------------
    async def log(self, job_id: str, offset: int = 0, limit: int | None = None) -> bytes:
        """The run's output (papermill's and the kernel's), from ``offset``."""
        return await self.read(job_id, "log.txt", offset, limit) or b""

    async def progress(self, job_id: str) -> float | None:
        """The share of the notebook's cells done, 0 to 1, or None."""
        try:
            p = json.loads(await self.read(job_id, "progress.json") or b"")
            return min(1.0, float(p["done"]) / max(float(p["cells"]), 1))
        except (ValueError, TypeError, KeyError):
            return None

    async def result(self, job_id: str) -> dict | None:
        """What the run said of itself when it ended (``{"status": "succeeded"
        | "failed", "reason", "failed_cell"}``), or None."""
        try:
            result = json.loads(await self.read(job_id, "result.json") or b"")
        except ValueError:
            return None
        if not isinstance(result, dict) or result.get("status") not in ("succeeded", "failed"):
            return None
        return result

    async def notebook(self, job_id: str) -> bytes | None:
        """The executed notebook as far as it ran."""
        return await self.read(job_id, "output.ipynb")


class RunsFolderRunner(Runner):
    """A runner whose runs' files are in ``runs_dir/ID`` on the service's
    machine: written there by the run itself (the local runner) or by the
    service from what the run sent (the Kubernetes runner)."""

    runs_dir: Path

    # The run's folder is written by the user's code: nothing is followed out
    # of it (see imaginghub.hub.safeio). Reads run in threads: a log or a
    # folder of results may be large, and the scheduler's loop serves everyone.
    async def read(self, job_id, name, offset=0, limit=None) -> bytes | None:
        return await asyncio.to_thread(safeio.read_file, self.runs_dir, f"{job_id}/{name}",
                                       offset, limit)

    async def artifacts(self, job_id: str) -> list[tuple[str, int]]:
        return await asyncio.to_thread(
            lambda: list(safeio.walk_files(self.runs_dir, f"{job_id}/work")))

    async def open_artifact(self, job_id: str, path: str) -> BinaryIO | None:
        try:
            return os.fdopen(safeio.open_file(self.runs_dir, f"{job_id}/work/{path}"), "rb")
        except OSError:
            return None


class LocalProcessRunner(RunsFolderRunner):
    """A job is :func:`.child.run` in a process and session of its own,
    forked by the job starter and running as the job's user: stopping the
    service does not stop it, and a restarted service adopts it by pid and
    start time. Its output goes to ``RUNS/ID/log.txt``. The starter's
    socket is blocking: every call runs in a thread."""

    name = "local"

    def __init__(self, home=None, *, socket_path: Path | None = None,
                 runs_dir: Path | None = None, **kwargs):
        super().__init__(home, **kwargs)
        self.socket_path = Path(socket_path or starter_socket(home))
        self.runs_dir = Path(runs_dir or home.runs_dir())
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
    async def start(self, job_id, user, spec, notebook, env) -> str:
        answer = await asyncio.to_thread(self._ask, {
            "op": "start", "id": job_id, "user": user, "spec": spec,
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

    async def poll(self, handle: str) -> int | None:
        return await asyncio.to_thread(self._poll, handle)

    def _poll(self, handle: str) -> int | None:
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

    async def stop(self, handle: str, grace: float = 5.0) -> None:
        """SIGTERM to the job's process and all it started (papermill's kernel
        runs in a session of its own), SIGKILL to what is left after ``grace``."""
        await asyncio.to_thread(self._stop, handle, grace)

    def _stop(self, handle: str, grace: float) -> None:
        import time

        h = json.loads(handle)
        self._ask({"op": "stop", "pid": h["pid"], "started": h["started"], "grace": grace})
        deadline = time.monotonic() + grace + 5
        while time.monotonic() < deadline and self._process(handle) is not None:
            time.sleep(0.1)

    async def clean_up(self, job_id: str) -> None:
        try:
            await asyncio.to_thread(self._ask, {"op": "clean_up", "id": job_id})
        except (RunnerUnavailable, RuntimeError) as e:
            log.warning("could not clean up after job %s: %s", job_id, e)

    async def remove(self, job_id: str) -> None:
        await asyncio.to_thread(self._ask, {"op": "remove", "id": job_id})

    async def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def runner(name: str, home, config=None) -> Runner:
    """The runner registered as ``name`` under the entry-point group
    ``imaginghub.job_runners`` (``local`` is imaginghub's own), made with the
    site's :class:`~imaginghub.hub.state.Home` and configuration."""
    return runner_class(name)(home, config=config if config is not None else home.config())


def runner_class(name: str) -> type[Runner]:
    """The class registered as ``name``; a ValueError that says what is
    installed when there is none."""
    from ...plugins import plugin_class

    return plugin_class(ENTRY_POINT_GROUP, name, Runner, kind="job runner",
                        setting="c.JobService.runner")


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
