"""The install path of a site: imaginghub's wheel installed into a clean
venv (no checkout on sys.path, nothing editable), then `imaginghub up
--demo` from that venv on a fresh home, and a user's kernel loads a demo
series. Run as root, this is a multi-user site: the user's server and
kernel run as their own account from the venv's files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest
from conftest import RunningStack, new_home, remove_site, site_root, stop_stack
from hubclient import UserSession
from test_package import build_wheel

from imaginghub.hub import demo
from imaginghub.hub.state import free_port

pytestmark = pytest.mark.stack


def test_a_wheel_in_a_clean_venv_runs_the_workspace(tmp_path):
    wheel = build_wheel(tmp_path)
    venv = site_root() / "wheelvenv"  # readable by users' accounts
    shutil.rmtree(venv, ignore_errors=True)
    base_python = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base_python, "-m", "venv", str(venv)], check=True, timeout=120)
    os.chmod(venv, 0o755)
    started = time.monotonic()
    r = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet",
                        "--disable-pip-version-check", f"{wheel}[hub,kernel]"],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    print(f"installed the wheel with its dependencies in {time.monotonic() - started:.0f} s")
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
