"""What the data service sends a client is its own: addresses in answers
name the gateway (never the archive), bulk data comes through the gateway
within the caller's projects, the archive's error bodies never pass, and
compressed series come in the syntax asked for (or a 406 that says why)."""

from __future__ import annotations

import io
import json
import re

import httpx
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from imaginghub.hub import demo
from imaginghub.kernels.multipart import boundary_of, iter_parts

J2K = demo.series("ct-slice-j2k")  # oncology (alice)
JLS = demo.series("mr-enhanced-jpegls")  # neuro (bob)
CT = demo.series("ct-head")
pytestmark = pytest.mark.stack  # its stacks are asked for by name (see ``stack``)
EXPLICIT = "1.2.840.10008.1.2.1"
JPEG_LS = "1.2.840.10008.1.2.4.80"
AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'


@pytest.fixture(scope="module", params=["embedded", "any-archive"])
def stack(request):
    """The embedded archive, and one of the site's own read as any DICOMweb
    archive (the gateway converts from what it streams, not from files)."""
    return request.getfixturevalue("main_stack" if request.param == "embedded"
                                   else "any_archive_stack")


@pytest.fixture(scope="module")
def gw(stack):
    stack.cli("users", "add", "paula", "--project", "palette")  # a project of its own
    tokens = {u: stack.token(u) for u in ("alice", "bob", "paula")}
    archive_port = int(stack.archive().url.rsplit(":", 1)[1])
    return stack, tokens, archive_port


def get(stack, tokens, user, path, **headers):
    return httpx.get(stack.run["gateway_url"] + path, timeout=120, headers={
        "Authorization": f"token {tokens[user]}", **headers})


def archive_address_in(text: str, archive_port: int) -> bool:
    return f"127.0.0.1:{archive_port}" in text or f"localhost:{archive_port}" in text


def parts(r: httpx.Response) -> list[tuple[dict, bytes]]:
    return list(iter_parts([r.content], boundary_of(r.headers["content-type"])))


def test_no_answer_names_the_archive(gw):
    """Every QIDO answer and every series' and study's metadata of the demo
    set, and a frame of each series, as their project's members get them."""
    stack, tokens, port = gw
    seen = 0
    for s in demo.SERIES:
        user = "alice" if s.project == "oncology" else "bob"
        base = f"/studies/{s.study_uid}/series/{s.series_uid}"
        answers = [
            get(stack, tokens, user, f"/studies?StudyInstanceUID={s.study_uid}&includefield=all"),
            get(stack, tokens, user, f"/series?SeriesInstanceUID={s.series_uid}&includefield=all"),
            get(stack, tokens, user, f"{base}/instances?includefield=all"),
            get(stack, tokens, user, f"{base}/metadata"),
            get(stack, tokens, user, f"/studies/{s.study_uid}/metadata"),
        ]
        sop = answers[2].json()[0]["00080018"]["Value"][0]
        answers.append(get(stack, tokens, user, f"{base}/instances/{sop}/frames/1",
                           Accept='multipart/related; type="application/octet-stream"'))
        for r in answers:
            assert r.status_code == 200, (s.key, r.request.url, r.text[:200])
            head = "".join(f"{k}: {v}\n" for k, v in r.headers.items())
            body = r.content[:2_000_000].decode("latin-1")
            assert not archive_address_in(head + body, port), (s.key, r.request.url)
            seen += 1
        # the frames' parts name the gateway
        locations = re.findall(r"Content-Location: (\S+)", answers[-1].content[:4000].decode(
            "latin-1"))
        assert locations and all(u.startswith(stack.run["gateway_url"]) for u in locations)
    assert seen == 6 * len(demo.SERIES)


def test_bulk_data_comes_through_the_gateway_within_projects(stack, gw):
    """A palette colour image's LUTs are bulk data: their URIs name the
    gateway, its project's members get them, others get the same 404 as an
    unknown UID."""
    _, tokens, port = gw
    from imaginghub.kernels.dicomweb import PACS

    path = get_testdata_file("examples_palette.dcm")
    ds = pydicom.dcmread(path)
    paula = PACS(stack.run["gateway_url"], token=tokens["paula"])
    paula.store_instances([ds], project="palette")
    meta = get(stack, tokens, "paula",
               f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/metadata").json()
    uris = [v["BulkDataURI"] for v in meta[0].values() if isinstance(v, dict)
            and "BulkDataURI" in v]
    assert len(uris) >= 3  # the red, green and blue LUT data
    bodies = {}
    for uri in uris:
        assert uri.startswith(stack.run["gateway_url"] + "/studies/"), uri
        assert str(port) not in uri
        own = httpx.get(uri, timeout=60, headers={"Authorization": f"token {tokens['paula']}"})
        assert own.status_code == 200
        (_, bodies[uri]), = parts(own)
        assert len(bodies[uri]) >= 256 * 2
        other = httpx.get(uri, timeout=60, headers={"Authorization": f"token {tokens['bob']}"})
        unknown = httpx.get(uri.replace(ds.SeriesInstanceUID, ds.SeriesInstanceUID + ".9"),
                            timeout=60, headers={"Authorization": f"token {tokens['bob']}"})
        assert other.status_code == unknown.status_code == 404
        assert other.content == unknown.content
    # dicomweb-client follows them itself: retrieve_bulkdata through the gateway
    lut = paula.client.retrieve_bulkdata(uris[0])
    assert lut and bytes(lut[0]) == bodies[uris[0]]
    # and a store answers with the gateway's address too
    ds2 = pydicom.dcmread(path)
    ds2.SOPInstanceUID = ds2.SOPInstanceUID + ".1"
    buf = io.BytesIO()
    ds2.save_as(buf)
    r = httpx.post(stack.run["gateway_url"] + "/studies", timeout=60, content=(
        b"--b\r\nContent-Type: application/dicom\r\n\r\n" + buf.getvalue() + b"\r\n--b--\r\n"),
        headers={"Authorization": f"token {tokens['paula']}",
                 "Content-Type": 'multipart/related; type="application/dicom"; boundary=b',
                 "Accept": "application/dicom+json"})
    assert r.status_code == 200, r.text
    assert not archive_address_in(r.text, port)
    assert stack.run["gateway_url"] in json.dumps(r.json())


def _one_instance(r: httpx.Response) -> pydicom.Dataset:
    assert r.status_code == 200, r.text
    (_, body), = parts(r)
    return pydicom.dcmread(io.BytesIO(body))


def test_compressed_series_come_in_the_syntax_asked_for(gw):
    stack, tokens, _ = gw
    base = f"/studies/{J2K.study_uid}/series/{J2K.series_uid}"
    stored = _one_instance(get(stack, tokens, "alice", base, Accept=AS_STORED))
    assert stored.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"
    # the default (what dicomweb-client and web viewers ask for): transcoded
    plain = _one_instance(get(stack, tokens, "alice", base,
                              Accept='multipart/related; type="application/dicom"'))
    assert plain.file_meta.TransferSyntaxUID == EXPLICIT
    assert np.array_equal(plain.pixel_array, stored.pixel_array)  # lossless both ways
    sop = stored.SOPInstanceUID
    frame = get(stack, tokens, "alice", f"{base}/instances/{sop}/frames/1",
                Accept='multipart/related; type="application/octet-stream"')
    (headers, pixels), = parts(frame)
    assert EXPLICIT in frame.headers["content-type"]
    assert headers["content-location"].startswith(stack.run["gateway_url"])
    assert np.array_equal(np.frombuffer(pixels, stored.pixel_array.dtype).reshape(
        stored.pixel_array.shape), stored.pixel_array)
    # implicit VR little endian too, and a multi-frame JPEG-LS series
    implicit = _one_instance(get(stack, tokens, "alice", base, Accept=(
        'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2')))
    assert implicit.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"
    assert implicit.SOPInstanceUID == stored.SOPInstanceUID
    assert np.array_equal(implicit.pixel_array, stored.pixel_array)
    jls = _one_instance(get(stack, tokens, "bob", f"/studies/{JLS.study_uid}/series/"
                            f"{JLS.series_uid}", Accept='multipart/related; type="application/dicom"'))
    as_stored = _one_instance(get(stack, tokens, "bob", f"/studies/{JLS.study_uid}/series/"
                                  f"{JLS.series_uid}", Accept=AS_STORED))
    assert jls.file_meta.TransferSyntaxUID == EXPLICIT
    assert as_stored.file_meta.TransferSyntaxUID == JPEG_LS
    assert np.array_equal(jls.pixel_array, as_stored.pixel_array)


@pytest.mark.parametrize("accept, why", [
    ('multipart/related; type="application/dicom"; transfer-syntax=' + JPEG_LS, "JPEG-LS"),
    ('multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.5', "RLE"),
    ('multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50',
     "lossy"),
    ('multipart/related; type="application/dicom"; transfer-syntax=1.2.3.4', "1.2.3.4"),
])
def test_a_syntax_that_cannot_be_made_is_a_406_and_the_archive_lives(gw, accept, why):
    """Orthanc 1.10 crashed when asked to convert to JPEG-LS (measured): the
    gateway never asks it to convert, and says what can be had."""
    stack, tokens, _ = gw
    r = get(stack, tokens, "alice", f"/studies/{J2K.study_uid}/series/{J2K.series_uid}",
            Accept=accept)
    assert r.status_code == 406, r.text
    message = r.json()["message"]
    assert "transfer-syntax=*" in message and "stored as JPEG 2000 lossless" in message
    assert "explicit VR little endian" in message
    assert why in message or why == "lossy" and "(lossy)" in message
    assert "HttpError" not in r.text and "OrthancStatus" not in r.text
    with stack.archive().rest() as c:  # still up
        assert c.get("/system").status_code == 200


def test_a_syntax_asked_for_as_it_is_stored_is_sent_as_stored(gw):
    stack, tokens, _ = gw
    r = get(stack, tokens, "bob", f"/studies/{JLS.study_uid}/series/{JLS.series_uid}",
            Accept='multipart/related; type="application/dicom"; transfer-syntax=' + JPEG_LS)
    assert _one_instance(r).file_meta.TransferSyntaxUID == JPEG_LS


def test_the_archives_error_bodies_never_reach_a_client(gw):
    stack, tokens, _ = gw
    s = demo.series("ct-small")
    sop = get(stack, tokens, "alice", f"/studies/{s.study_uid}/series/{s.series_uid}"
              "/instances").json()[0]["00080018"]["Value"][0]
    # Orthanc answers a non-multipart frame request with a 400 and its own JSON
    r = get(stack, tokens, "alice",
            f"/studies/{s.study_uid}/series/{s.series_uid}/instances/{sop}/frames/1",
            Accept="application/octet-stream")
    assert r.status_code == 400
    assert set(r.json()) == {"message"} and "archive" in r.json()["message"]
    assert "Details" not in r.text and "HttpStatus" not in r.text
    with stack.archive().rest() as c:
        direct = c.get(f"/dicom-web/studies/{s.study_uid}/series/{s.series_uid}/instances/"
                       f"{sop}/frames/1", headers={"Accept": "application/octet-stream"})
    assert direct.status_code == 400 and "Details" in direct.text  # what it would have leaked
