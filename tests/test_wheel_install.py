"""The install path of a site: imaginghub's wheel installed into a clean
venv (no checkout on sys.path, nothing editable), then `imaginghub up
--demo` from that venv on a fresh home, and a user's kernel loads a demo
series. Run as root, this is a multi-user site: the user's server and
kernel run as their own account from the venv's files.

Installing the wheel's dependencies takes about two minutes, most of it
waiting on the disk: conftest starts :func:`start_preparing` when the
session begins (if this test is selected), so the venv is made while the
other tests run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import pytest
from conftest import RunningStack, new_home, remove_site, site_root, stop_stack
from hubclient import UserSession
from test_package import build_wheel

from imaginghub.hub import demo
from imaginghub.hub.state import free_port

pytestmark = pytest.mark.stack

VENV = Path("/tmp/iht") / "wheelvenv"  # readable by users' accounts (no "-": see conftest)
_prepared: Future | None = None


def prepare() -> tuple[Path, float]:
    """Build the wheel, make the clean venv and install the wheel into it
    with its dependencies; (the venv, the seconds the install took)."""
    build = Path(tempfile.mkdtemp(prefix="wheelbuild", dir=site_root()))
    try:
        wheel = build_wheel(build)
        shutil.rmtree(VENV, ignore_errors=True)
        base_python = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base_python, "-m", "venv", str(VENV)], check=True, timeout=120)
        os.chmod(VENV, 0o755)
        started = time.monotonic()
        r = subprocess.run([str(VENV / "bin" / "pip"), "install", "--quiet",
                            "--disable-pip-version-check", f"{wheel}[hub,kernel]"],
                           capture_output=True, text=True, timeout=900)
        if r.returncode:
            raise RuntimeError(f"pip install of the wheel failed:\n{r.stderr[-3000:]}")
        return VENV, time.monotonic() - started
    finally:
        shutil.rmtree(build, ignore_errors=True)


def start_preparing() -> None:
    """Begin :func:`prepare` in a thread of its own (once; a daemon, so a
    session that ends before this test does not wait for it)."""
    global _prepared
    if _prepared is not None:
        return
    _prepared = Future()

    def work():
        try:
            _prepared.set_result(prepare())
        except BaseException as e:  # handed to the test
            _prepared.set_exception(e)

    threading.Thread(target=work, name="wheel-venv", daemon=True).start()


def test_a_wheel_in_a_clean_venv_runs_the_workspace():
    start_preparing()  # already running when the session started it
    venv, took = _prepared.result(timeout=1200)
    print(f"installed the wheel with its dependencies in {took:.0f} s")
    imaginghub = str(venv / "bin" / "imaginghub")
    # the venv's imaginghub is the wheel's, not the checkout's
    where = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import imaginghub.hub, sys; print(imaginghub.hub.__file__)"],
                           capture_output=True, text=True, check=True, cwd="/").stdout
    assert where.startswith(str(venv)), where

    home = new_home("wheel")
    output = home.parent / "up.log"
    with open(output, "w") as out:
        proc = subprocess.Popen([imaginghub, "--home", str(home), "up", "--demo", "--port",
                                 str(free_port()), "--dicom-port", str(free_port())],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd="/")
    try:
        deadline = time.monotonic() + 240
        while "Press Ctrl-C to stop." not in output.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, output.read_text()
            time.sleep(0.5)
        stack = RunningStack(home, proc, output)
        token = subprocess.run([imaginghub, "--home", str(home), "token", "alice"],
                               capture_output=True, text=True, check=True).stdout.strip()
        alice = UserSession(stack.url, "alice", token)
        alice.start_server(timeout=180)
        kernel = alice.start_kernel()
        ct = demo.series("ct-head-reversed")
        out = alice.execute(kernel["id"],
                            "import imaginghub.kernels, os\n"
                            f"vol = pacs.load_series({ct.series_uid!r}, progress=False)\n"
                            "print(vol.shape, os.path.dirname(imaginghub.kernels.__file__))")
        assert out["error"] is None, out
        shape, where = out["stdout"].rsplit(" ", 1)
        assert where.strip().startswith(str(venv))  # the kernel runs the wheel's code
        assert shape == "(120, 256, 256)"
    finally:
        assert stop_stack(proc) == 0, output.read_text()
        remove_site(home)
        shutil.rmtree(venv, ignore_errors=True)
