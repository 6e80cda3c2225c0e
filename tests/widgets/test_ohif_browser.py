"""The browser viewer (OHIF at /services/viewer/) on the real stack, in
Debian's Chromium: the study list of the user's projects, a CT drawn and
scrolled, a SEG over its MR, someone else's study read as an unknown one,
a SEG stored as the segment workflow stores it and an RTSTRUCT over their
series, reads only and only with the page's XSRF token, a cohort's study
list, nothing fetched from anywhere but the hub.

Drawn pixels are checked in screenshots (a WebGL canvas read back in the
page can come out blank); the screenshots are kept in tests/.artifacts/.
With the other browser tests, here: Playwright's sync API leaves its event
loop set in the tests' process, where later tests' asyncio.run() fails.
"Open in OHIF" from the cohort builder is in test_cohort_builder_browser.py."""

from __future__ import annotations

import json
import re
import time

import numpy as np
from browser_support import (ARTIFACTS, demo_password, only_the_hub, picture, skip_tour,
                             viewer_page)

from pydicom.dataset import Dataset
from tests_support import axial_ct_series, structure_set

from imaginghub.hub import demo
from imaginghub.kernels.catalog import Catalog
from imaginghub.kernels.dicomweb import PACS

CT = demo.BY_KEY["ct-head"]  # alice's (oncology): 300 slices
MR = demo.BY_KEY["mr-head"]  # bob's (neuro), with its SEG
MR_SEG = demo.BY_KEY["mr-head-seg"]
UNKNOWN_STUDY = "1.2.826.0.1.3680043.8.498.1"
VIEWER = "/services/viewer"


def _viewport(page) -> np.ndarray:
    """The middle of the image canvas as the screen shows it (the edges hold
    the viewport's overlays: text, icons, its blue frame)."""
    canvas = page.locator("[data-cy=viewport-pane] canvas.cornerstone-canvas").first
    # while a SEG loads, OHIF builds the viewport anew: no canvas for a moment
    canvas.wait_for(state="visible", timeout=30_000)
    box = canvas.bounding_box()
    if box is None:  # replaced between the two looks
        canvas.wait_for(state="visible", timeout=30_000)
        box = canvas.bounding_box()
    # a clip of the page's screenshot: an element's own screenshot of this
    # WebGL canvas came back as its first frame, whatever was on the screen
    w, h = box["width"], box["height"]
    return picture(page.screenshot(clip={"x": box["x"] + w / 5, "y": box["y"] + h / 5,
                                         "width": w * 3 / 5, "height": h * 3 / 5}))


def _slice_text(page) -> str:
    return page.locator("[data-cy=viewport-overlay-bottom-right]").first.inner_text()


def _offline(stack, page) -> None:
    """Every request went to the hub, and the page's Content-Security-Policy
    (this origin only) had nothing to block."""
    assert page.requests and only_the_hub(stack, page.requests) == []
    assert not [e for e in page.errors if "Content Security Policy" in e]


def _coloured(rgb: np.ndarray) -> int:
    """Pixels in colour (a segment's), not grey (an MR's or a CT's)."""
    return int((rgb.max(axis=2) - rgb.min(axis=2) > 60).sum())


def _open_seg(page, description: str) -> np.ndarray:
    """Open the SEG of that description over its series, as a user does
    (double-click its thumbnail, say yes); the viewport once it is coloured."""
    page.locator(f"text={description}").first.dblclick()
    page.get_by_role("button", name="Yes").click()
    deadline = time.monotonic() + 60
    while _coloured(shown := _viewport(page)) < 300 and time.monotonic() < deadline:
        time.sleep(1)
    return shown


def _instance(page) -> int:
    """The InstanceNumber of the slice shown ("I:16 (5/20)")."""
    return int(re.search(r"I:\s*(\d+)", _slice_text(page)).group(1))


def _to_instance(page, number: int) -> None:
    """Step with the arrow keys to the slice of that InstanceNumber."""
    from playwright.sync_api import TimeoutError as Timeout

    key = "ArrowDown"
    for _ in range(60):
        now, text = _instance(page), _slice_text(page)
        if now == number:
            time.sleep(1)  # its pixels, drawn
            return
        page.keyboard.press(key)
        try:
            page.wait_for_function(
                "(t) => document.querySelector('[data-cy=viewport-overlay-bottom-right]')"
                ".textContent !== t", arg=text, timeout=3_000)
        except Timeout:  # at the end of the stack: the key moved nothing
            pass
        if abs(_instance(page) - number) >= abs(now - number):
            key = "ArrowUp" if key == "ArrowDown" else "ArrowDown"
    raise AssertionError(f"could not step to instance {number}: {_slice_text(page)}")


def test_alice_sees_her_projects_studies_opens_the_ct_and_scrolls(stack, browser):
    with viewer_page(stack, browser, "alice", demo_password(stack, "alice"), "ohif-ct") as page:
        page.wait_for_selector("text=Demo, Reversed", timeout=60_000)
        listed = page.inner_text("body")
        assert "Demo, Stack" in listed and "Demo, Reversed" in listed  # oncology
        assert "Demo, Head" not in listed  # neuro: bob's
        page.screenshot(path=str(ARTIFACTS / "ohif-study-list.png"))
        page.click("text=Demo, Stack")
        page.get_by_role("button", name="Basic Viewer").first.click()
        skip_tour(page)
        assert CT.study_uid in page.url
        page.wait_for_function(
            "(document.querySelector('[data-cy=viewport-overlay-bottom-right]') || {})"
            ".textContent?.includes('/300)')", timeout=120_000)
        time.sleep(2)  # the first slice's pixels, then the overlay settle
        first, where = _viewport(page), _slice_text(page)
        page.screenshot(path=str(ARTIFACTS / "ohif-ct.png"))
        # the head CT: a large part of the viewport is drawn, not a black canvas
        assert (first.mean(axis=2) > 60).mean() > 0.15, "the CT was not drawn"
        box = page.locator("[data-cy=viewport-pane]").first.bounding_box()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        # to the middle of the stack, through the sphere (the first slices shown,
        # at the top of the head, are all the same real slice)
        for _ in range(140):
            page.mouse.wheel(0, 120)
        page.wait_for_function(
            "(t) => document.querySelector('[data-cy=viewport-overlay-bottom-right]')"
            ".textContent !== t", arg=where, timeout=30_000)
        assert _slice_text(page) != where

        def changed() -> int:
            # the sphere (+400 HU) in the middle slices; under the header's
            # window (W 1500, L -600) it is some 15 grey levels above the brain
            return int((np.abs(_viewport(page) - first).max(axis=2) > 8).sum())

        deadline = time.monotonic() + 60  # the slice is drawn once its frame has come
        while changed() < 2000 and time.monotonic() < deadline:
            time.sleep(0.5)
        page.screenshot(path=str(ARTIFACTS / "ohif-ct-scrolled.png"))
        assert changed() >= 2000, "scrolling changed nothing on the screen"
        _offline(stack, page)


def test_bob_sees_the_seg_over_the_mr(stack, browser):
    with viewer_page(stack, browser, "bob", demo_password(stack, "bob"), "ohif-seg") as page:
        page.goto(f"{stack.url}{VIEWER}/viewer?StudyInstanceUIDs={MR.study_uid}"
                  f"&initialSeriesInstanceUID={MR.series_uid}")
        skip_tour(page)
        page.wait_for_function(
            "(document.querySelector('[data-cy=viewport-overlay-bottom-right]') || {})"
            ".textContent?.includes('/60)')", timeout=120_000)
        time.sleep(2)
        assert _coloured(_viewport(page)) < 20  # the MR alone: grey
        shown = _open_seg(page, MR_SEG.description)
        page.screenshot(path=str(ARTIFACTS / "ohif-seg.png"))
        assert _coloured(shown) >= 300, "the SEG's colours are not over the MR"
        _offline(stack, page)


def test_a_seg_stored_as_the_segment_workflow_stores_it_shows_over_its_series(stack, browser):
    """A SEG stored with pacs.write_segmentation (what the segment workflow
    stores its labels with) and an RT Structure Set, on a CT of a project of
    its own (the shared demo projects keep their series), are overlays of
    their series in the viewer, in colour: the SEG's box on slices 5 to 12,
    the structure set's square on slices 15 to 19."""
    out = stack.cli("users", "add", "sega", "--project", "ohifseg").stdout
    password = re.search(r"password: (\S+)", out).group(1)
    pacs = PACS(stack.run["gateway_url"], token=stack.token("sega"))
    yy, xx = np.mgrid[:64, :64]
    body = (((yy - 32) ** 2 + (xx - 32) ** 2) < 28 ** 2) * 300 - 700  # a disc in air
    study, series, frame, slices = axial_ct_series(
        20, 64, 64, origin=(-32, -32, 0), spacing=(1.0, 1.0), thickness=2.0,
        pixels=lambda k: body, PatientID="OHIF-SEG", PatientName="Stored^Seg",
        SeriesDescription="CT under a stored SEG", RescaleIntercept=0, RescaleSlope=1,
        WindowCenter=-400, WindowWidth=800, PatientBirthDate="", PatientSex="O",
        StudyDate="20240115", StudyTime="101500", StudyID="1", AccessionNumber="",
        ReferringPhysicianName="", SeriesNumber=1, Manufacturer="imaginghub tests")
    pacs.store_instances(slices)
    volume = pacs.load_series(series, progress=False)
    labels = np.zeros(volume.array.shape, np.uint8)
    labels[4:12, 20:44, 16:48] = 1
    pacs.write_segmentation(volume, labels, {1: "box"}, description="stored box SEG",
                            algorithm=("box-model", "1"))
    # and an RT Structure Set: a square on slices 15 to 19 (k = 14 to 18)
    rs = structure_set(study, series, frame, {1: ("square", [
        [-12, -12, 2.0 * k, 12, -12, 2.0 * k, 12, 12, 2.0 * k, -12, 12, 2.0 * k]
        for k in range(14, 19)])})
    rs.SeriesDescription = "stored square RTSTRUCT"
    for keyword in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyDate",
                    "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName"):
        setattr(rs, keyword, slices[0].get(keyword))  # one patient, one study
    # OHIF shows a structure set whose ReferencedSeriesSequence names its series
    # (without it, this one was listed in the study but never shown)
    ref = Dataset()
    ref.SeriesInstanceUID = series
    ref.ReferencedInstanceSequence = []
    for image in slices:
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = (image.SOPClassUID,
                                                                     image.SOPInstanceUID)
        ref.ReferencedInstanceSequence.append(item)
    rs.ReferencedSeriesSequence = [ref]
    pacs.store_instances([rs], study)
    with viewer_page(stack, browser, "sega", password, "ohif-stored") as page:
        page.goto(f"{stack.url}{VIEWER}/viewer?StudyInstanceUIDs={study}"
                  f"&initialSeriesInstanceUID={series}")
        skip_tour(page)
        page.wait_for_function(
            "(document.querySelector('[data-cy=viewport-overlay-bottom-right]') || {})"
            ".textContent?.includes('/20)')", timeout=120_000)
        time.sleep(2)
        assert _coloured(_viewport(page)) < 20
        _to_instance(page, 8)  # a slice the SEG's box crosses (k = 7)
        shown = _open_seg(page, "stored box SEG")
        page.screenshot(path=str(ARTIFACTS / "ohif-stored-seg.png"))
        assert _coloured(shown) >= 300, "the stored SEG's colours are not over its CT"
        _to_instance(page, 17)  # the structure set's square only (k = 16)
        assert _coloured(_viewport(page)) < 20
        page.locator("text=stored square RTSTRUCT").first.dblclick()
        page.get_by_role("button", name="Yes").click()
        time.sleep(3)
        _to_instance(page, 17)  # opening it may move the viewport
        deadline = time.monotonic() + 60
        while _coloured(shown := _viewport(page)) < 100 and time.monotonic() < deadline:
            time.sleep(1)  # an outline: fewer pixels than a filled segment
        page.screenshot(path=str(ARTIFACTS / "ohif-stored-rtstruct.png"))
        assert _coloured(shown) >= 100, "the structure set's contour is not over its CT"
        _offline(stack, page)


def _fetch(page, url: str, method: str = "GET") -> dict:
    return page.evaluate("""async ([url, method]) => {
        const r = await fetch(url, {method, credentials: "same-origin",
            body: method === "POST" ? "x" : undefined,
            headers: {Accept: "application/dicom+json"}});
        return {status: r.status, body: await r.text()};
    }""", [url, method])


def test_the_viewer_reads_only_and_only_with_the_pages_token(stack, browser):
    with viewer_page(stack, browser, "alice", demo_password(stack, "alice"), "ohif-xsrf") as page:
        xsrf = page.evaluate(
            "decodeURIComponent(/(?:^|;\\s*)_xsrf=([^;]*)/.exec(document.cookie)[1])")
        root = f"{VIEWER}/dicom-web/s/" + page.evaluate("encodeURIComponent", xsrf)
        ok = _fetch(page, f"{root}/studies")
        assert ok["status"] == 200
        assert CT.study_uid in ok["body"] and MR.study_uid not in ok["body"]
        # the metadata's BulkDataURIs point at the viewer, never at the data service
        meta = _fetch(page, f"{root}/studies/{CT.study_uid}/series/{CT.series_uid}/metadata")
        assert meta["status"] == 200 and "/services/data/" not in meta["body"]
        stow = _fetch(page, f"{root}/studies", "POST")
        assert stow["status"] == 405 and "only reads" in stow["body"]
        # a cohort's study list: the studies of its series, here one of alice's two
        slice_ = demo.BY_KEY["ct-slice"]
        Catalog(stack.run["gateway_url"].rsplit("/dicom-web", 1)[0] + "/api",
                stack.token("alice")).new_cohort("ohif-one", "oncology",
                                                 series=[slice_.series_uid]).save()
        cohort_root = root.replace("/dicom-web/", "/cohorts/oncology/ohif-one@1/dicom-web/")
        listed = json.loads(_fetch(page, f"{cohort_root}/studies")["body"])
        assert [r["0020000D"]["Value"][0] for r in listed] == [slice_.study_uid]
        assert slice_.study_uid != CT.study_uid
        unknown = _fetch(page, root.replace("/dicom-web/", "/cohorts/oncology/nope@1/dicom-web/")
                         + "/studies")
        assert unknown["status"] == 404
        # a script of another page of the hub (here: the hub's own home page)
        # has alice's cookie sent along, but not the viewer page's token
        page.goto(f"{stack.url}/hub/home")
        for attempt in (f"{VIEWER}/dicom-web/s/-/studies", f"{VIEWER}/dicom-web/s/x{xsrf}/studies"):
            stolen = _fetch(page, attempt)
            assert stolen["status"] == 401 and CT.study_uid not in stolen["body"]
