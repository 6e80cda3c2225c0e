"""`imaginghub up` as a process: refuses a busy port cleanly, restarts a
killed archive, stops everything on Ctrl-C, and resumes with all state."""

from __future__ import annotations

import json
import os
import re
import socket
import time

import httpx
import psutil
import pytest
from conftest import (Archive, new_home, processes_using, remove_site, start_stack, stop_stack,
                      write_config)
from tests_support import in_memory_ct

from imaginghub.hub import orthanc
from imaginghub.hub.state import Home, free_port


@pytest.mark.stack
def test_busy_port_is_refused_without_leftovers():
    home = new_home("busy")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc, output = start_stack(home, port=port, timeout=60)
        code = proc.wait(30)
    text = output.read_text()
    assert code != 0
    assert f"port {port}" in text and "in use" in text and "--port" in text
    assert "Traceback" not in text
    assert not processes_using(home)
    remove_site(home)


@pytest.mark.stack
def test_killed_archive_is_restarted_and_state_survives_a_restart():
    home = new_home("restart")
    try:
        _restart(home)
    finally:
        remove_site(home)


def _restart(home):
    proc, output = start_stack(home)
    assert proc.poll() is None, output.read_text()
    first = output.read_text()
    admin_password = re.search(r"admin login: admin / (\S+)", first).group(1)
    run = json.loads((home / "run.json").read_text())
    h = Home(home)
    token = subprocess_token(home, "admin")
    archive = Archive(orthanc.OrthancSettings(
        http_port=int(run["archive_url"].rsplit(":", 1)[1]), dicom_port=run["dicom_port"],
        password=h.secret("archive_password")))
    ds = in_memory_ct()
    archive.pacs().store_instances([ds])

    # Kill the archive: `up` notices and starts it again.
    old_pid = run["pids"]["archive"]
    psutil.Process(old_pid).kill()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and "the archive is back" not in output.read_text():
        time.sleep(0.2)
    assert "stopped unexpectedly" in output.read_text()
    assert "the archive is back" in output.read_text()
    new_pid = json.loads((home / "run.json").read_text())["pids"]["archive"]
    assert new_pid != old_pid and psutil.pid_exists(new_pid)
    assert archive.pacs().search_for_instances(
        search_filters={"SOPInstanceUID": ds.SOPInstanceUID})

    # Ctrl-C stops everything it started.
    assert stop_stack(proc) == 0
    assert not processes_using(home), processes_using(home)
    assert not (home / "run.json").exists()

    # A firewall table that a killed `up` left (multi-user mode) goes at the
    # next `up`; the running one's stays.
    from imaginghub.hub import portguard

    multi = os.geteuid() == 0
    if multi:
        portguard.install("deadbeef", str(home.parent / "gone"), [1], [0])
        assert portguard.tables()["imaginghub_deadbeef"] == str(home.parent / "gone")
    # A second `up` on the same home resumes: data, users and tokens intact,
    # and the admin password is not printed again.
    proc, output = start_stack(home)
    if multi:
        try:
            tables = portguard.tables()
            assert "imaginghub_deadbeef" not in tables
            own = portguard.table_name(h.site_id())
            assert tables[own] == str(home)
            assert portguard.remove_stale() == []  # a running up's table stays
        finally:
            portguard.remove("deadbeef")
    try:
        again = output.read_text()
        assert "imaginghub is running" in again
        assert admin_password not in again and "admin login" not in again
        run = json.loads((home / "run.json").read_text())
        r = httpx.get(f"{run['url']}/hub/api/user", headers={"Authorization": f"token {token}"})
        assert r.status_code == 200 and r.json()["name"] == "admin"
        archive = Archive(orthanc.OrthancSettings(
            http_port=int(run["archive_url"].rsplit(":", 1)[1]), dicom_port=run["dicom_port"],
            password=h.secret("archive_password")))
        back = archive.pacs().retrieve_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID,
                                                ds.SOPInstanceUID)
        assert back.PatientID == "MEM-1"
    finally:
        assert stop_stack(proc) == 0
    assert not processes_using(home)
    if multi:
        assert portguard.table_name(h.site_id()) not in portguard.tables()


def test_second_up_on_a_running_home_is_refused(stack):
    proc, output = start_stack(stack.home.path, port=free_port(), timeout=60)
    assert proc.wait(30) != 0
    assert "running already" in output.read_text()
    assert stack.proc.poll() is None  # the running one is untouched


def subprocess_token(home, user):
    import subprocess

    from conftest import IMAGINGHUB

    return subprocess.run([IMAGINGHUB, "--home", str(home), "token", user], check=True,
                          capture_output=True, text=True).stdout.strip()


@pytest.mark.stack
def test_multi_user_up_refuses_what_users_cannot_reach():
    """A folder users' processes need (here a workflow folder) inside a
    private one: up refuses to start and names the folder in the way."""
    import os

    if os.geteuid() != 0:
        import pytest

        pytest.skip("multi-user mode needs root")
    home = new_home("reach")
    private = home.parent / "private"
    (private / "flows").mkdir(parents=True)
    private.chmod(0o700)
    sections = {"Site": {"homes_dir": Home(home).site.homes_dir,
                         "account_prefix": Home(home).site.account_prefix},
                "JobService": {"workflow_dirs": [str(private / "flows")]}}
    write_config(home, sections)
    try:
        proc, output = start_stack(home, timeout=60)
        assert proc.wait(30) != 0
        text = output.read_text()
        assert f"is not reachable for users' accounts: {private} is closed to them" in text
        assert "Traceback" not in text
        assert not processes_using(home)
    finally:
        remove_site(home)


def test_roots_old_state_directory_is_moved(tmp_path, monkeypatch):
    from imaginghub.hub import state

    old, new = tmp_path / "root-share" / "imaginghub", tmp_path / "var-lib" / "imaginghub"
    old.mkdir(parents=True)
    (old / "settings.json").write_text("{}")
    (old / "users.json").write_text("{}")
    monkeypatch.setattr(state, "OLD_ROOT_HOME", old)
    monkeypatch.setattr(state, "SYSTEM_HOME", new)
    monkeypatch.delenv("IMAGINGHUB_HOME", raising=False)
    monkeypatch.setattr(state.os, "geteuid", lambda: 0)
    said = state.migrate_root_home()
    assert said and str(old) in said and str(new) in said
    assert (new / "users.json").exists() and not old.exists()
    assert state.migrate_root_home() is None  # once


def test_multi_user_mode_without_nftables_is_refused(monkeypatch):
    """No way to close the archive's ports: multi-user mode is refused, and
    the message says what to install (checked before anything starts)."""
    import pytest

    from imaginghub.hub import portguard

    monkeypatch.setattr(portguard.shutil, "which", lambda name: None)
    with pytest.raises(portguard.PortGuardUnavailable, match="apt-get install nftables"):
        portguard.check_available()
