"""Single-user mode: `imaginghub up` run by an ordinary account (a laptop)
starts, says in one line that projects are then no security boundary, and
serves kernels, which run as that account."""

from __future__ import annotations

import json
import os
import pwd
import subprocess

import pytest
from conftest import RunningStack, new_home, processes_using, start_stack, stop_stack
from hubclient import UserSession

from pydicom import dcmread
from pydicom.data import get_testdata_file

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="makes an ordinary account"),
              pytest.mark.stack]


@pytest.fixture
def ordinary_account():
    """An account of nobody special (no root, not imaginghub's)."""
    name = "ihtsolo"
    base = new_home("solo").parent
    subprocess.run(["useradd", "--create-home", "--home-dir", str(base / "solo-home"),
                    "--comment", "imaginghub site tests user solo", name], check=True)
    try:
        entry = pwd.getpwnam(name)
        os.chown(base / "home", entry.pw_uid, entry.pw_gid)
        for p in (base / "home").iterdir():
            os.chown(p, entry.pw_uid, entry.pw_gid)
        yield name, base / "home", entry
    finally:
        subprocess.run(["pkill", "-KILL", "-u", name])
        subprocess.run(["userdel", "--remove", "--force", name], capture_output=True)


def test_up_as_an_ordinary_account_is_single_user(ordinary_account):
    name, home, entry = ordinary_account
    proc, output = start_stack(home, account=name)
    try:
        text = output.read_text()
        assert proc.poll() is None, text
        notice = [line for line in text.splitlines() if line.startswith("single-user mode")]
        assert len(notice) == 1 and "not a security boundary" in notice[0]
        assert f"({name})" in notice[0]
        stack = RunningStack(home, proc, output, account=name)
        assert stack.run["mode"] == "single-user"
        stack.cli("users", "add", "alice", "--project", "solo")
        stack.cli("ingest", get_testdata_file("CT_small.dcm"), "--project", "solo")
        uid = dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True).SeriesInstanceUID
        alice = UserSession(stack.url, "alice", stack.token("alice"))
        alice.start_server()
        kernel = alice.start_kernel()
        out = alice.execute(kernel["id"], "import json, os\n"
                            f"vol = pacs.load_series({uid!r}, progress=False)\n"
                            "print(json.dumps([os.getuid(), vol.shape, os.environ['HOME']]))")
        assert out["error"] is None, out
        got_uid, shape, user_home = json.loads(out["stdout"].strip())
        assert got_uid == entry.pw_uid and shape == [1, 128, 128]
        assert user_home == str(home / "users" / "alice")
        # no account was made for the hub's users (root reads the account's own
        # configuration file only because this test wrote it: Home.config refuses)
        from imaginghub.hub import config
        from imaginghub.hub.state import Site

        prefix = Site(config=config.read_file(stack.home.config_file)).account_prefix
        assert prefix.startswith("iht")
        assert not [e for e in pwd.getpwall() if e.pw_name.startswith(prefix)]
    finally:
        assert stop_stack(proc) == 0, output.read_text()
    assert not processes_using(home)
