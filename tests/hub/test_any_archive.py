"""A site's own archive (``c.DataService.archive_url``): ``up`` runs no
archive of its own and checks the one it is given before it starts; the
gateway reads it as any DICOMweb archive (a real Orthanc, asked nothing
Orthanc-specific: QIDO-RS feed, every answer streamed, no file access); the
archive's credentials stay with the service. The gateway's and ingest's
tests run on this stack too (``data_stack``), and so do those of the answers'
transfer syntaxes and addresses (test_answers.py)."""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import time
from io import BytesIO

import httpx
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from tests_support import ct_file

from conftest import (MULTI_USER, any_archive_config, as_account, new_home, private_folder,
                      processes_using, remove_site, start_stack, stop_stack)

from imaginghub.hub import demo, portguard
from imaginghub.hub.state import free_port
from imaginghub.kernels.catalog import Catalog
from imaginghub.kernels.dicomweb import PACS

CT = demo.series("ct-head-reversed")  # project oncology, 120 slices


@pytest.fixture(scope="module")
def site(any_archive_stack):
    return any_archive_stack


def refused_start(config: dict) -> str:
    """The output of an ``up`` on a fresh site with ``config``, which must
    stop with an error before anything runs."""
    home = new_home("anybad", config)
    try:
        proc, output = start_stack(home, timeout=60)
        if proc.poll() is None:
            stop_stack(proc)
            raise AssertionError(f"imaginghub up started:\n{output.read_text()}")
        assert proc.returncode != 0
        text = output.read_text()
        assert "Traceback" not in text, text
        assert not processes_using(home)
        return text
    finally:
        remove_site(home)


def test_up_says_what_is_wrong_with_the_sites_archive(site):
    archive = site.archive()
    good = any_archive_config(private_folder("anysec"), archive)
    secret = good["DataService"]["archive_password_file"]

    def with_(**data) -> dict:
        return {**good, "DataService": {**good["DataService"], **data}}

    wrong = private_folder("anysec") / "wrong-password"
    wrong.write_text("not-the-password\n")
    os.chmod(wrong, 0o600)
    if MULTI_USER:
        out = refused_start(with_(archive_password_file=str(wrong)))
        assert "cannot be read by the service account imaginghub" in out
        assert f"chgrp imaginghub {wrong}" in out
        os.chown(wrong, 0, os.stat(secret).st_gid)
        os.chmod(wrong, 0o640)
    out = refused_start(with_(archive_password_file=str(wrong)))
    assert "refused imaginghub's credentials (HTTP 401)" in out
    assert "not-the-password" not in out and archive.auth[1] not in out

    os.chmod(wrong, 0o644)
    out = refused_start(with_(archive_password_file=str(wrong)))
    assert f"is open to every account (mode 644): run 'chmod o-rwx {wrong}'" in out

    root = archive.dicomweb_url.rsplit("/dicom-web", 1)[0]
    assert "is c.DataService.archive_url its DICOMweb root" in refused_start(
        with_(archive_url=root + "/nothing-here"))
    assert "cannot be reached" in refused_start(
        with_(archive_url=f"http://127.0.0.1:{free_port()}/dicom-web"))
    assert "use 'qido'" in refused_start(with_(feed="orthanc"))
    out = refused_start(with_(archive_username=""))
    assert "archive_password_file is set without archive_username" in out


def test_no_archive_of_ours_runs(site):
    run = site.run
    assert run["archive"] == "external" and run["archive_url"] is None
    assert run["dicomweb_url"] == site.archive().dicomweb_url
    assert run["pids"]["archive"] is None
    assert f"archive: the site's own at {run['dicomweb_url']}" in site.output.read_text()
    assert not any("Orthanc" in p for p in processes_using(site.home.path))
    assert not (site.home.orthanc_dir / "db").exists()
    # nothing of ours to close: the archive is the site's (and asks for credentials)
    assert portguard.table_name(site.home.site_id()) not in portguard.tables()
    r = site.cli("modalities", "list", check=False)
    assert r.returncode != 0 and "configured there, not in imaginghub" in r.stderr


def test_a_kernel_loads_a_series_through_the_gateway(site):
    through = PACS(site.run["gateway_url"], token=site.token("alice"))
    direct = site.archive().pacs()
    volume = through.load_series(CT.series_uid)
    assert np.array_equal(volume.array, direct.load_series(CT.series_uid).array)
    assert volume.array.shape[0] == demo.GRIDS[CT.key].slices
    thumbnail = httpx.get(
        site.run["gateway_url"].rsplit("/dicom-web", 1)[0] + f"/api/thumbnails/{CT.series_uid}",
        headers={"Authorization": f"token {site.token('alice')}"}, timeout=60)
    assert thumbnail.status_code == 200 and thumbnail.content[:4] == b"\x89PNG"


def test_series_stored_in_the_archive_reach_the_catalog_by_the_qido_feed(site):
    """A modality stores into the site's archive, not through imaginghub:
    the feed (QIDO-RS polled every second here) brings the series into
    the catalog, and once an admin assigns it, its project's user finds it
    (a project of its own: the gateway's tests count oncology's series)."""
    today = dt.date.today().strftime("%Y%m%d")
    study, series = generate_uid(), generate_uid()
    with site.archive().rest() as c:
        for i in range(2):
            ds = dcmread(BytesIO(ct_file(series, study, value=i)))
            ds.StudyDate = today
            out = BytesIO()
            ds.save_as(out)
            assert c.post("/instances", content=out.getvalue()).status_code == 200
    site.cli("users", "add", "fiona", "--project", "arrivals")
    site.cli("projects", "add", "arrivals", "--series", series)  # as an admin does
    catalog = Catalog(site.run["gateway_url"].rsplit("/dicom-web", 1)[0] + "/api",
                      site.token("fiona"))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        rows = catalog.search(limit=500)
        if series in set(rows.get("series_uid", [])):
            break
        time.sleep(0.5)
    else:
        raise AssertionError("the series stored in the archive never reached the catalog")
    row = rows[rows.series_uid == series].iloc[0]
    assert row["instances"] == 2 and row["modality"] == "CT"


def test_users_code_cannot_take_the_archives_credentials(site):
    """The password file is the service's; the archive refuses anyone
    without it (what keeps a user's own code to the gateway here)."""
    secret = site.home.config().DataService.archive_password_file
    archive = site.archive()
    account = site.home.accounts().ensure("alice").name if MULTI_USER else None
    if MULTI_USER:
        r = subprocess.run([*as_account(account), "cat", secret], capture_output=True,
                           text=True, timeout=30)
        assert r.returncode != 0 and "Permission denied" in r.stderr
        assert archive.auth[1] not in r.stdout
    r = httpx.get(f"{archive.dicomweb_url}/studies", timeout=30)
    assert r.status_code == 401



def test_an_ingest_cut_off_by_the_archive_says_so_and_continues(site, tmp_path):
    """The archive goes down in the middle of an ingest of 400 files: the
    command says so in plain words, with how many were stored, and exits
    non-zero; run again once the archive is back, it stores each file once."""
    import threading

    study, series = generate_uid(), generate_uid()
    folder = tmp_path / "ingest"
    folder.mkdir()
    for i in range(400):
        (folder / f"{i:03}.dcm").write_bytes(ct_file(series, study, value=i, size=256))
    archive = site.archive()

    def count() -> int:
        with archive.rest() as c:
            found = [x["ID"] for x in c.post("/tools/lookup", content=series).json()
                     if x["Type"] == "Series"]
            return len(c.get(f"/series/{found[0]}").json()["Instances"]) if found else 0

    def cut_when_it_has_begun():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if count() > 0:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.02)
        site.archive_process.stop(timeout=10)

    # a project of its own: the gateway's tests count oncology's series
    site.cli("users", "add", "gina", "--project", "cutoff")
    cutter = threading.Thread(target=cut_when_it_has_begun)
    cutter.start()
    try:
        first = site.cli("ingest", str(folder), "--project", "cutoff", check=False)
    finally:
        cutter.join()
        site.archive_process.start()
        site.archive_process.wait_ready(60)
    assert first.returncode != 0, first.stdout
    message = first.stderr
    assert "the archive is not answering" in message and "Traceback" not in message
    stored_before = int(re.search(r"(\d+) files were stored before it stopped", message)[1])
    assert "run the same command again" in message
    second = site.cli("ingest", str(folder), "--project", "cutoff", check=False)
    assert second.returncode == 0, second.stdout + second.stderr
    done = re.search(r"stored: (\d+), already present: (\d+), refused: 0", second.stdout)
    assert int(done[1]) + int(done[2]) == 400 and int(done[2]) >= stored_before
    assert count() == 400  # each file once
    gina = PACS(site.run["gateway_url"], token=site.token("gina"))
    assert len(gina.search_for_instances(study, series)) == 400
