"""The embedded stack for benchmarks: `imaginghub up --demo` in a temporary
home, and two clients of the oncology user alice's data: one that goes to the
archive directly (its credentials) and one through the gateway (her token)."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from imaginghub.hub.state import Home, free_port
from imaginghub.kernels.dicomweb import PACS

IMAGINGHUB = str(Path(sys.executable).parent / "imaginghub")


@contextlib.contextmanager
def site_folder():
    """A temporary folder for a stack's state, spool and homes. As root (a
    multi-user site) it is passable by accounts, and the accounts the stack
    made (prefix ihb-) are removed afterwards."""
    import os
    import shutil

    d = Path(tempfile.mkdtemp(prefix="imaginghub-bench-"))
    try:
        os.chmod(d, 0o711)
        (d / "homes").mkdir(mode=0o755)
        yield d
    finally:
        home = Home(d / "home")
        if os.geteuid() == 0 and home.state_file.exists():
            accounts = home.accounts()
            for name in accounts.ours():
                accounts.remove(name)
        shutil.rmtree(d, ignore_errors=True)


def start_up(home: Path, log_path: Path, *extra: str, before: list[str] = ()):
    """`imaginghub up` on ``home`` (command line prefixed with ``before``),
    once it is ready: (process, run.json)."""
    with open(log_path, "w") as log:
        up = subprocess.Popen([*before, IMAGINGHUB, "--home", str(home), "up", "--port",
                               str(free_port()), "--dicom-port", str(free_port()), *extra],
                              stdout=log, stderr=subprocess.STDOUT)
    while "Press Ctrl-C" not in log_path.read_text():
        if up.poll() is not None:
            sys.exit(log_path.read_text())
        time.sleep(0.5)
    return up, json.loads((home / "run.json").read_text())


def at_once(calls, timeout: float = 900) -> float:
    """Run every zero-argument callable in ``calls`` in a thread of its own,
    all at once; the wall time until the last ended."""
    import threading

    threads = [threading.Thread(target=c) for c in calls]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout)
    return time.perf_counter() - t


def write_site_config(d: Path, sections: dict | None = None) -> None:
    """The bench site's imaginghub_config.py: its homes folder, the accounts'
    prefix ihb-, and ``sections`` ({"Class": {"setting": value}})."""
    from imaginghub.hub import config

    values = {"Site": {"homes_dir": str(d / "homes"), "account_prefix": "ihb-"}}
    for cls, more in (sections or {}).items():
        values.setdefault(cls, {}).update(more)
    config.write_settings(Home(d / "home").config_file, values)


@contextlib.contextmanager
def running_stack(sections: dict | None = None, *, site_archive: bool = False,
                  **gateway_options):
    """Yields (direct PACS, gateway PACS, run.json plus "home" and alice's
    "token"); ``sections`` go into imaginghub_config.py before the start.
    With ``site_archive``, the archive is an Orthanc that ``up`` did not
    start, configured as the site's own (c.DataService.archive_url)."""
    with site_folder() as d, contextlib.ExitStack() as stack:
        home = Path(d) / "home"
        log_path = Path(d) / "up.log"
        home.mkdir()
        auth = None
        if site_archive:
            archive, auth = stack.enter_context(own_archive(Path(d)))
            sections = {**(sections or {}), "DataService": archive}
        write_site_config(Path(d), sections)
        up, run = start_up(home, log_path, "--demo")
        try:
            run["home"] = str(home)
            token = subprocess.run([IMAGINGHUB, "--home", str(home), "token", "alice"],
                                   capture_output=True, text=True, check=True).stdout.strip()
            run["token"] = token
            user, password = auth or ("imaginghub", Home(home).secret("archive_password"))
            direct = PACS(run["dicomweb_url"], username=user, password=password)
            gateway = PACS(run["gateway_url"], token=token, **gateway_options)
            yield direct, gateway, run
        finally:
            up.send_signal(signal.SIGINT)
            up.wait(60)


@contextlib.contextmanager
def own_archive(d: Path):
    """A real Orthanc of the site's (not started by ``up``): yields its
    c.DataService settings and credentials; its password in a file of
    root:imaginghub 0640, as an admin writes it."""
    import os
    import secrets

    from imaginghub.hub import orthanc

    folder = d / "site-archive"
    folder.mkdir()
    settings = orthanc.OrthancSettings(http_port=free_port(), dicom_port=free_port(),
                                       password=secrets.token_hex(16))
    secret = d / "archive-password"
    secret.write_text(settings.password + "\n")
    os.chmod(secret, 0o640)
    if os.geteuid() == 0:
        import grp

        from imaginghub.hub.accounts import SERVICE_ACCOUNT, ensure_service_account

        ensure_service_account()
        os.chown(secret, 0, grp.getgrnam(SERVICE_ACCOUNT).gr_gid)
    proc = orthanc.managed(settings, folder, folder / "orthanc.log")
    proc.start()
    try:
        proc.wait_ready(60)
        yield ({"archive_url": settings.dicomweb_url, "archive_username": orthanc.ARCHIVE_USER,
                "archive_password_file": str(secret)}, (orthanc.ARCHIVE_USER, settings.password))
    finally:
        proc.stop()


def ct_copy(pacs: PACS, description: str | None = None, syntax: str | None = None):
    """The demo's 300-slice CT as datasets of a new series (new UIDs), to be
    stored; re-encoded in ``syntax`` if given. Returns (series UID, datasets)."""
    from pydicom.uid import generate_uid

    from imaginghub.hub import demo

    ct = demo.series("ct-head")
    datasets = pacs.retrieve_series(ct.study_uid, ct.series_uid)
    series = generate_uid()
    for ds in datasets:
        ds.SeriesInstanceUID, ds.SOPInstanceUID = series, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        if description:
            ds.SeriesDescription = description
        if syntax:
            ds.compress(syntax, encoding_plugin="pylibjpeg")
    return series, datasets
