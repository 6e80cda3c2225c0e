"""Data gets its project: `imaginghub ingest`, STOW-RS by a kernel, and the
projects CLI, all through the real gateway."""

from __future__ import annotations

import re
import warnings
import zipfile

import httpx
import pytest
from pydicom.uid import generate_uid
from tests_support import ct_file, in_memory_ct

from imaginghub.hub import demo
from imaginghub.kernels.dicomweb import PACS
from imaginghub.kernels.errors import Forbidden, PACSError



@pytest.fixture(scope="module")
def stack(data_stack):
    """Every test here runs on SQLite and on PostgreSQL (see conftest)."""
    return data_stack

@pytest.fixture(scope="module")
def users(stack):
    stack.cli("users", "add", "frank", "--project", "oncology", "--project", "neuro")
    return {u: PACS(stack.run["gateway_url"], token=stack.token(u))
            for u in ("alice", "bob", "frank")}


def admin_sees(stack, sop_uid) -> bool:
    with stack.archive().rest() as c:
        r = c.post("/tools/find", json={"Level": "Instance", "Query": {"SOPInstanceUID": sop_uid}})
        return bool(r.json())


def test_ingest_reports_every_file_and_stores_good_ones_once(stack, users, tmp_path):
    study, series, zseries = generate_uid(), generate_uid(), generate_uid()
    good = [ct_file(series, study, value=i) for i in range(3)]
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    for i, data in enumerate(good):
        (src / f"good{i}.dcm").write_bytes(data)
    (src / "sub" / "copy-of-good0.dcm").write_bytes(good[0])
    (src / "truncated.dcm").write_bytes(good[1][: len(good[1]) - 40])
    (src / "notes.txt").write_text("not DICOM at all\n")
    bad_uid = ct_file(series, study, sop_uid="1.2.840.abc.1")
    (src / "bad-uid.dcm").write_bytes(bad_uid)
    with zipfile.ZipFile(src / "more.zip", "w") as z:
        z.writestr("a.dcm", ct_file(zseries, study, value=10))
        z.writestr("b.dcm", ct_file(zseries, study, value=11))

    r = stack.cli("ingest", str(src), "--project", "oncology", check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "stored: 5, already present: 1, refused: 3" in r.stdout
    assert re.search(r"refused .*truncated\.dcm: truncated pixel data", r.stdout)
    assert re.search(r"refused .*notes\.txt: not a readable DICOM file", r.stdout)
    assert re.search(r"refused .*bad-uid\.dcm: invalid SOPInstanceUID", r.stdout)

    alice = users["alice"]
    assert len(alice.search_for_instances(study, series)) == 3
    assert len(alice.search_for_instances(study, zseries)) == 2
    assert users["bob"].search_for_series(search_filters={"SeriesInstanceUID": series}) == []

    again = stack.cli("ingest", str(src), "--project", "oncology", check=False)
    assert "stored: 0, already present: 6, refused: 3" in again.stdout


def test_ingest_bad_project_and_path(stack, tmp_path):
    r = stack.cli("ingest", str(tmp_path / "missing"), "--project", "oncology", check=False)
    assert r.returncode != 0 and "does not exist" in r.stderr
    r = stack.cli("ingest", str(tmp_path), "--project", "Not A Project", check=False)
    assert r.returncode != 0 and "invalid project name" in r.stderr


def test_kernel_stow_into_own_project(users):
    ds = in_memory_ct()
    users["alice"].store_instances([ds])  # one project: no need to name it
    found = users["alice"].search_for_series(
        search_filters={"SeriesInstanceUID": ds.SeriesInstanceUID})
    assert len(found) == 1
    assert users["bob"].search_for_series(
        search_filters={"SeriesInstanceUID": ds.SeriesInstanceUID}) == []


def test_kernel_stow_needs_a_project_when_in_several(users):
    with pytest.raises(PACSError, match="say which project"):
        users["frank"].store_instances([in_memory_ct()])
    ds = in_memory_ct()
    users["frank"].store_instances([ds], project="neuro")
    assert users["bob"].search_for_series(
        search_filters={"SeriesInstanceUID": ds.SeriesInstanceUID})


def test_kernel_stow_into_a_foreign_project_is_forbidden(users, stack):
    ds = in_memory_ct()
    with pytest.raises(Forbidden):
        users["alice"].store_instances([ds], project="neuro")
    assert not admin_sees(stack, ds.SOPInstanceUID)


def test_kernel_stow_of_many_instances_goes_in_several_requests(users, stack, monkeypatch):
    import imaginghub.kernels.dicomweb as dicomweb

    monkeypatch.setattr(dicomweb, "STOW_BATCH_BYTES", 1)  # one instance per request
    study, series = generate_uid(), generate_uid()
    datasets = [in_memory_ct(series, study, value=i) for i in range(3)]
    answer = users["alice"].store_instances(datasets)
    assert sorted(i.ReferencedSOPInstanceUID for i in answer.ReferencedSOPSequence) == sorted(
        ds.SOPInstanceUID for ds in datasets)
    assert "FailedSOPSequence" not in answer
    found = users["alice"].search_for_instances(search_filters={"SeriesInstanceUID": series})
    assert len(found) == 3  # the later requests added to the series the first one made
    assert users["bob"].search_for_series(search_filters={"SeriesInstanceUID": series}) == []


def test_oversized_stow_is_refused_before_its_body_is_read(stack):
    """A request over the gateway's limit gets a 413 that says what to do, as
    soon as its headers arrive (the body is never uploaded)."""
    import socket
    from urllib.parse import urlsplit

    u = urlsplit(stack.run["gateway_url"])
    with socket.create_connection((u.hostname, u.port), timeout=10) as s:
        s.sendall((f"POST {u.path}/studies HTTP/1.1\r\nHost: {u.netloc}\r\n"
                   f"Authorization: token {stack.token('alice')}\r\n"
                   "Content-Type: multipart/related; type=\"application/dicom\"; boundary=b\r\n"
                   f"Content-Length: {300 * 2**20}\r\n\r\n").encode())
        answer = s.recv(65536).decode()
    assert answer.startswith("HTTP/1.1 413"), answer[:200]
    assert "several requests" in answer and "256 MiB" in answer


def test_stow_cannot_add_to_another_projects_series(users, stack):
    ct = demo.series("ct-head")
    ds = in_memory_ct()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = ct.study_uid, ct.series_uid
    answer = users["bob"].store_instances([ds])
    failed = answer.get("FailedSOPSequence")
    assert failed and failed[0].FailureReason == 0x0124
    assert not admin_sees(stack, ds.SOPInstanceUID)
    # the same answer for a series that does not exist in another project's
    # hands but exists unassigned in the archive: nothing tells them apart
    assert users["bob"].search_for_series(search_filters={"SeriesInstanceUID": ct.series_uid}) == []


def test_projects_cli(stack, users):
    mr = demo.series("mr-head-oblique")
    assert users["alice"].search_for_series(search_filters={"SeriesInstanceUID": mr.series_uid}) == []
    out = stack.cli("projects", "add", "oncology", "--series", mr.series_uid).stdout
    assert "added 1 series to oncology" in out
    assert len(users["alice"].search_for_series(
        search_filters={"SeriesInstanceUID": mr.series_uid})) == 1
    listing = stack.cli("projects", "list").stdout
    assert re.search(r"^oncology\s+\d+ studies\s+\d+ series", listing, re.M), listing
    out = stack.cli("projects", "remove", "oncology", "--series", mr.series_uid).stdout
    assert "removed 1 series" in out
    r = stack.cli("projects", "add", "oncology", "--series", "1.2.3.4.5.6.7", check=False)
    assert r.returncode == 1 and "not in the archive: 1.2.3.4.5.6.7" in r.stdout
    # a plain user cannot change projects through the API
    api = stack.run["gateway_url"].rsplit("/dicom-web", 1)[0] + "/api"
    r = httpx.post(f"{api}/projects/oncology/series", json={"series": [mr.series_uid]},
                   headers={"Authorization": f"token {stack.token('alice')}"})
    assert r.status_code == 403


def test_ingest_stores_vendor_files_as_they_are_with_warnings(stack, tmp_path):
    """A treatment planning system's RTSTRUCT with a UID component that has
    a leading zero, and a value too long for its VR: stored, each warning
    once in the report (not also as a log line or a Python warning)."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.dataset import FileMetaDataset

    vendor_study = "1.2.246.352.91.0000217.20050503182534"
    ds = pydicom.dcmread(get_testdata_file("rtstruct.dcm"), force=True)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = vendor_study, generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    with pytest.warns(UserWarning, match="exceeds the maximum length"):
        ds.add_new(0x00181030, "LO", "P" * 70)  # ProtocolName: LO holds 64 characters
    path = tmp_path / "vendor" / "rs.dcm"
    path.parent.mkdir()
    ds.save_as(path, enforce_file_format=True)
    r = stack.cli("ingest", str(path.parent), "--project", "oncology", check=False)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "stored: 1, already present: 0, refused: 0, stored with warnings: 1" in r.stdout
    assert f"StudyInstanceUID '{vendor_study}' breaks the standard's UID rules" in r.stdout
    assert out.count("exceeds the maximum length of 64") == 1, out
    assert "UserWarning" not in out and "Traceback" not in out
    alice = PACS(stack.run["gateway_url"], token=stack.token("alice"))
    assert [s["0020000E"]["Value"][0] for s in alice.search_for_series(vendor_study)] == [
        str(ds.SeriesInstanceUID)]
    # the same rules for STOW-RS from a kernel: stored, with a WarningReason
    with warnings.catch_warnings():  # pydicom's own, once a process: not what is tested
        warnings.simplefilter("ignore", UserWarning)
        again = pydicom.dcmread(path)
        again.SOPInstanceUID = again.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        answer = alice.store_instances([again])
    (item,) = answer.ReferencedSOPSequence
    assert item.ReferencedSOPInstanceUID == again.SOPInstanceUID
    assert item.WarningReason == 0xB007 and "FailedSOPSequence" not in answer
