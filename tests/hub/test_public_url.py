"""The data service through the hub's public URL (the proxy), as every tool
outside the hub reaches it (dicomweb-client on a laptop, 3D Slicer, a web
viewer): whole series of any size, uploads over 100 MB, many clients at
once. The pure-Python configurable-http-proxy held every answer whole and
broke off after 100 MB; traefik (imaginghub.hub.proxy) streams."""

from __future__ import annotations

import io
import threading

import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid

from imaginghub.hub import demo
from imaginghub.hub.services.data.__main__ import db_url
from imaginghub.hub.services.data.db import Store
from imaginghub.kernels.multipart import boundary_of, iter_parts

CT = demo.series("ct-head")
AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'
DEFAULT = 'multipart/related; type="application/dicom"'


@pytest.fixture(scope="module")
def public(stack):
    stack.cli("users", "add", "uma", "--project", "uploads")  # a project of its own
    return stack.url + "/services/data/dicom-web", {u: stack.token(u) for u in ("alice", "uma")}


def download(url: str, token: str, accept: str = AS_STORED) -> tuple[int, int, int]:
    """(status, bytes, DICOM parts) of a streamed answer, never held whole."""
    with httpx.stream("GET", url, timeout=600, headers={
            "Authorization": f"token {token}", "Accept": accept}) as r:
        if r.status_code != 200:
            r.read()
            return r.status_code, len(r.content), 0
        size = 0

        def chunks():
            nonlocal size
            for chunk in r.iter_raw(1 << 20):
                size += len(chunk)
                yield chunk

        n = sum(1 for _ in iter_parts(chunks(), boundary_of(r.headers["content-type"])))
        return r.status_code, size, n


def test_a_whole_300_slice_series_reaches_a_client_outside_the_hub(stack, public):
    url, tokens = public
    path = f"/studies/{CT.study_uid}/series/{CT.series_uid}"
    status, size, n = download(url + path, tokens["alice"])
    assert (status, n) == (200, 300)
    assert size > 157e6
    # byte for byte what the data service's own port sends
    direct = download(stack.run["gateway_url"] + path, tokens["alice"])
    assert direct == (200, size, 300)
    # and in the default syntax too (not read from the archive's files)
    assert download(url + path, tokens["alice"], DEFAULT)[::2] == (200, 300)


def test_twenty_clients_at_once_each_get_the_whole_series(public):
    url, tokens = public
    path = f"{url}/studies/{CT.study_uid}/series/{CT.series_uid}"
    results = []

    def one():
        results.append(download(path, tokens["alice"]))

    threads = [threading.Thread(target=one) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert len(results) == 20
    assert {(s, n) for s, _, n in results} == {(200, 300)}
    assert len({size for _, size, _ in results}) == 1


def _slices(n: int):
    """``n`` CT images of 512 x 512 (a demo slice with new UIDs) as files."""
    template = pydicom.dcmread(io.BytesIO(demo.to_bytes(next(demo.instances(CT)))))
    study, series = generate_uid(), generate_uid()
    for i in range(n):
        ds = template
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i + 1
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        yield study, series, buf.getvalue()


def test_a_series_over_a_gigabyte_reaches_a_client_outside_the_hub(stack, public):
    url, tokens = public
    n = 2050  # of about 525 kB each: 1.08 GB
    archive = stack.archive()
    with archive.rest() as c:
        for study, series, data in _slices(n):
            assert c.post("/instances", content=data).status_code == 200
        store = Store(db_url(stack.home))
        store.assign([(study, series)], "uploads", by="test")
        try:
            status, size, parts = download(f"{url}/studies/{study}/series/{series}",
                                           tokens["uma"])
            assert (status, parts) == (200, n)
            assert size > 1.0e9
        finally:
            store.unassign("uploads", series_uids=[series])
            found = c.post("/tools/lookup", content=series).json()
            c.delete(f"/series/{found[0]['ID']}")


def test_an_upload_over_100_mb_through_the_public_url_is_stored(stack, public):
    url, tokens = public
    files = list(_slices(210))  # about 110 MB in one request
    study, series = files[0][0], files[0][1]
    boundary = "imaginghub-test-upload"
    body = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n"
                    + data + b"\r\n" for _, _, data in files) + f"--{boundary}--\r\n".encode()
    assert len(body) > 100e6
    r = httpx.post(f"{url}/studies", content=body, timeout=600, headers={
        "Authorization": f"token {tokens['uma']}", "Accept": "application/dicom+json",
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
    try:
        assert r.status_code == 200, r.text[:500]
        stored = r.json()["00081199"]["Value"]
        assert len(stored) == 210
        found = httpx.get(f"{url}/studies/{study}/series/{series}/instances", timeout=60,
                          headers={"Authorization": f"token {tokens['uma']}"}).json()
        assert len(found) == 210
    finally:
        with stack.archive().rest() as c:
            for hit in c.post("/tools/lookup", content=series).json():
                c.delete(f"/series/{hit['ID']}")
        Store(db_url(stack.home)).unassign("uploads", series_uids=[series])
