"""DIMSE C-STORE from a configured modality: the called AE title names the
project, and the series shows up for that project's members only."""

from __future__ import annotations

import re
import time

from pydicom import dcmread
from pydicom.uid import generate_uid
from pynetdicom import AE
from tests_support import ct_file

from imaginghub.kernels.dicomweb import PACS


def c_store(port: int, called: str, calling: str = "SCANNER1"):
    import io

    ds = dcmread(io.BytesIO(ct_file(generate_uid(), generate_uid())))
    ae = AE(ae_title=calling)
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    assert assoc.is_established
    status = assoc.send_c_store(ds)
    assoc.release()
    return ds, status


def wait_for(fn, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fn():
            return True
        time.sleep(0.3)
    return False


def test_called_ae_title_names_the_project(stack):
    out = stack.cli("modalities", "add", "scanner1", "--aet", "SCANNER1", "--host",
                    "127.0.0.1", "--port", "11112").stdout
    assert "may now store" in out
    assert "SCANNER1" in stack.cli("modalities", "list").stdout

    ds, status = c_store(stack.run["dicom_port"], "NEURO")
    assert status.Status == 0x0000
    bob = PACS(stack.run["gateway_url"], token=stack.token("bob"))
    alice = PACS(stack.run["gateway_url"], token=stack.token("alice"))
    query = {"SeriesInstanceUID": ds.SeriesInstanceUID}
    assert wait_for(lambda: bob.search_for_series(search_filters=query))
    assert alice.search_for_series(search_filters=query) == []

    # sent to the archive's own AE title: stored, but in no project until assigned
    own, status = c_store(stack.run["dicom_port"], "IMAGINGHUB")
    assert status.Status == 0x0000
    time.sleep(3)
    q = {"SeriesInstanceUID": own.SeriesInstanceUID}
    assert bob.search_for_series(search_filters=q) == []
    assert alice.search_for_series(search_filters=q) == []
    stack.cli("projects", "add", "oncology", "--series", own.SeriesInstanceUID)
    try:
        assert alice.search_for_series(search_filters=q)
    finally:  # leave the session's stack as the other tests expect it
        stack.cli("projects", "remove", "oncology", "--series", own.SeriesInstanceUID)
        stack.cli("projects", "remove", "neuro", "--series", ds.SeriesInstanceUID)
        stack.cli("modalities", "remove", "scanner1")


def c_find(port: int, calling: str) -> tuple[bool, list[int], int]:
    """(association established, statuses, matches) of a patient-level C-FIND."""
    from pydicom.dataset import Dataset
    from pynetdicom.sop_class import PatientRootQueryRetrieveInformationModelFind as FIND

    ae = AE(ae_title=calling)
    ae.add_requested_context(FIND)
    assoc = ae.associate("127.0.0.1", port, ae_title="IMAGINGHUB")
    if not assoc.is_established:
        return False, [], 0
    q = Dataset()
    q.QueryRetrieveLevel, q.PatientID = "PATIENT", ""
    statuses, matches = [], 0
    for status, identifier in assoc.send_c_find(q, FIND):
        if status:
            statuses.append(status.Status)
        matches += identifier is not None
    assoc.release()
    return True, statuses, matches


def test_modalities_echo_and_store_but_query_only_when_allowed(stack):
    """A modality may C-ECHO and C-STORE; C-FIND needs its own flag, shown by
    'modalities list'. (From root's process: users' processes cannot open
    the DICOM port at all, see test_isolation.)"""
    port = stack.run["dicom_port"]
    stack.cli("modalities", "add", "ct2", "--aet", "CT2", "--host", "127.0.0.1",
              "--port", "11113")
    out = stack.cli("modalities", "add", "pacs2", "--aet", "PACS2", "--host", "127.0.0.1",
                    "--port", "11114", "--allow-find").stdout
    assert "C-FIND" in out
    try:
        listing = stack.cli("modalities", "list").stdout
        assert re.search(r"^ct2\s+CT2\s+127\.0\.0\.1:11113\s+may: echo, store$", listing, re.M)
        assert re.search(r"^pacs2\s+PACS2\s+.*may: echo, store, find$", listing, re.M)
        _, status = c_store(port, "UPLOADS", calling="CT2")
        assert status.Status == 0x0000
        established, statuses, matches = c_find(port, "CT2")
        # refused: no association, an aborted one (no final status) or a failure
        assert matches == 0 and (not established or not statuses or statuses[-1] != 0x0000)
        established, statuses, matches = c_find(port, "PACS2")
        assert established and matches >= 3 and statuses[-1] == 0x0000
        assert c_find(port, "STRANGER")[2] == 0
    finally:
        stack.cli("modalities", "remove", "ct2")
        stack.cli("modalities", "remove", "pacs2")
