"""Managed child processes: started, watched, and stopped with their children.

Every child runs in its own process group (Ctrl-C in the terminal reaches
only ``imaginghub up``, which then stops them in order) and gets SIGTERM
from the kernel if ``up`` dies without cleaning up (Linux ``PDEATHSIG``).
``PDEATHSIG`` follows the *thread* that started the child, not the process:
start a child from a thread that lives as long as the child should (a
federation site restarted from a short-lived thread went down with it).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from .errors import StackError

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """SIGTERM this process when its parent dies (Linux ``PDEATHSIG``)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def _child_setup() -> None:  # runs in the child between fork and exec
    os.setpgrp()
    die_with_parent()


class Managed:
    """One child process with a log file and a readiness check."""

    def __init__(self, name: str, argv: list[str], *, log_path: Path,
                 ready: Callable[[], bool], env: dict | None = None, cwd: Path | None = None,
                 account=None):
        """``account``: an :class:`~imaginghub.hub.accounts.Account` to run as
        (with umask 077); None: as this process."""
        self.account = account
        self.name = name
        self.argv = argv
        self.log_path = Path(log_path)
        self.ready = ready
        self.env = env
        self.cwd = cwd
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        logf = os.fdopen(os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600),
                         "ab")
        setup = _child_setup
        if self.account is not None:
            from .accounts import preexec

            setup = preexec(self.account, then=_child_setup)
        try:
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                env=self.env, cwd=self.cwd, preexec_fn=setup,
            )
        finally:
            logf.close()
        log.debug("started %s (pid %s)", self.name, self.proc.pid)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise StackError(
                    f"{self.name} exited during start-up (exit code {self.proc.returncode}). "
                    f"Its last log lines ({self.log_path}):\n{self.tail()}"
                )
            try:
                if self.ready():
                    return
            except Exception:
                pass
            time.sleep(0.1)
        raise StackError(
            f"{self.name} did not become ready within {timeout:.0f} s. "
            f"Its last log lines ({self.log_path}):\n{self.tail()}"
        )

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join("    " + line for line in text[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; also the whole process group."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0f s; killing it", self.name, timeout)
                self.proc.kill()
                self.proc.wait(5)
        # Anything left in its process group (children it did not stop).
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def kill_tree(pids: list[int], timeout: float = 5.0) -> None:
    """Terminate processes (descendants collected earlier), then kill survivors."""
    import psutil

    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
