"""The browser viewer (OHIF at /services/viewer/) on the real stack, in
Debian's Chromium: the study list of the user's projects, a CT drawn and
scrolled, a SEG over its MR, someone else's study read as an unknown one,
reads only and only with the page's XSRF token, nothing fetched from
anywhere but the hub, and "open in OHIF" from the cohort builder.

Drawn pixels are checked in screenshots (a WebGL canvas read back in the
page can come out blank); the screenshots are kept in tests/.artifacts/."""

from __future__ import annotations

import json
import time

import numpy as np
from browser_support import (ARTIFACTS, demo_password, notebook_page, only_the_hub, picture,
                             run_cell, save_first_two, skip_tour, viewer_page)

from imaginghub.hub import demo
from imaginghub.kernels.catalog import Catalog

CT = demo.BY_KEY["ct-head"]  # alice's (oncology): 300 slices
MR = demo.BY_KEY["mr-head"]  # bob's (neuro), with its SEG
MR_SEG = demo.BY_KEY["mr-head-seg"]
UNKNOWN_STUDY = "1.2.826.0.1.3680043.8.498.1"
VIEWER = "/services/viewer"


def _viewport(page) -> np.ndarray:
    return picture(page.locator("[data-cy=viewport-pane]").first.screenshot())


def _slice_text(page) -> str:
    return page.locator("[data-cy=viewport-overlay-bottom-right]").first.inner_text()


def _offline(stack, page) -> None:
    """Every request went to the hub, and the page's Content-Security-Policy
    (this origin only) had nothing to block."""
    assert page.requests and only_the_hub(stack, page.requests) == []
    assert not [e for e in page.errors if "Content Security Policy" in e]


def _red(rgb: np.ndarray) -> int:
    """Pixels of the SEG's first segment's colour (OHIF draws it red)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return int(((r > 140) & (r > g + 60) & (r > b + 60)).sum())


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
        for _ in range(12):
            page.mouse.wheel(0, 120)
            time.sleep(0.1)
        page.wait_for_function(
            "(t) => document.querySelector('[data-cy=viewport-overlay-bottom-right]')"
            ".textContent !== t", arg=where, timeout=30_000)
        time.sleep(1.5)
        assert _slice_text(page) != where
        after = _viewport(page)
        page.screenshot(path=str(ARTIFACTS / "ohif-ct-scrolled.png"))
        assert (np.abs(after - first).max(axis=2) > 30).sum() > 200, "scrolling changed nothing"
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
        assert _red(_viewport(page)) < 20  # the MR alone: grey
        page.locator(f"text={MR_SEG.description}").first.dblclick()
        page.get_by_role("button", name="Yes").click()
        deadline = time.monotonic() + 60
        while _red(shown := _viewport(page)) < 300 and time.monotonic() < deadline:
            time.sleep(1)
        page.screenshot(path=str(ARTIFACTS / "ohif-seg.png"))
        assert _red(shown) >= 300, "the SEG's colours are not over the MR"
        _offline(stack, page)


def test_bob_opens_alices_study_and_it_reads_as_unknown(stack, browser):
    with viewer_page(stack, browser, "bob", demo_password(stack, "bob"), "ohif-other") as page:
        shown = []
        for study in (CT.study_uid, UNKNOWN_STUDY):
            page.goto(f"{stack.url}{VIEWER}/viewer?StudyInstanceUIDs={study}")
            page.wait_for_url("**/notfoundstudy**", timeout=120_000)
            page.wait_for_selector("text=not available", timeout=30_000)
            shown.append(page.inner_text("body"))
        page.screenshot(path=str(ARTIFACTS / "ohif-not-found.png"))
        assert shown[0] == shown[1]
        assert "Demo, Stack" not in shown[0] and CT.description not in shown[0]
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
        # a script of another page of the hub (here: the hub's own home page)
        # has alice's cookie sent along, but not the viewer page's token
        page.goto(f"{stack.url}/hub/home")
        for attempt in (f"{VIEWER}/dicom-web/s/-/studies", f"{VIEWER}/dicom-web/s/x{xsrf}/studies"):
            stolen = _fetch(page, attempt)
            assert stolen["status"] == 401 and CT.study_uid not in stolen["body"]


def test_open_in_ohif_from_the_cohort_builder(stack, browser):
    with notebook_page(stack, browser, "olga", ["oncology"], "ohif-builder",
                       ["cohort_builder()"]) as page:
        requests: list[str] = []
        page.context.on("request", lambda r: requests.append(r.url))
        run_cell(page, 0)
        page.wait_for_selector(".ih-cohort .ih-card .ih-ohif", timeout=120_000)
        card = page.locator(".ih-cohort .ih-card").first
        description = card.locator(".ih-desc").inner_text()
        series = card.get_attribute("data-uid")
        with page.context.expect_page(timeout=60_000) as opened:
            card.locator(".ih-ohif").click()
        viewer = opened.value
        skip_tour(viewer)
        viewer.wait_for_function(
            "(d) => (document.querySelector('[data-cy=viewport-overlay-top-left]') || {})"
            ".textContent?.includes(d)", arg=description[:40], timeout=120_000)
        mine = Catalog(stack.run["gateway_url"].rsplit("/dicom-web", 1)[0] + "/api",
                       stack.token("olga"))
        row = mine.search(series_uid=series)
        assert f"StudyInstanceUIDs={row['study_uid'][0]}" in viewer.url
        viewer.screenshot(path=str(ARTIFACTS / "ohif-from-builder.png"))
        viewer.close()
        # a saved cohort: its studies are the study list. Two series of one
        # study (the gallery's newest first: the 300-slice CT's study has no
        # other series), so the list is shorter than all of olga's studies.
        save_first_two(page, "ohif-two", which=(1, 2))
        chosen = json.loads(page.evaluate(
            "JSON.stringify([...document.querySelectorAll('.ih-cohort .ih-card.ih-selected')]"
            ".map(c => c.dataset.uid))"))
        studies = set(mine.search(series_uid=chosen)["study_uid"])
        assert len(studies) < len(set(mine.search(limit=1000)["study_uid"]))
        page.click(".ih-cohort .ih-tab:has-text('cohorts')")
        link = page.locator(".ih-cohort tr:has-text('ohif-two') .ih-ohif-cohort")
        link.wait_for(timeout=30_000)
        with page.context.expect_page(timeout=60_000) as opened:
            link.click()
        listed = opened.value
        listed.wait_for_selector(f"text=/1-{len(studies)} of {len(studies)}/", timeout=120_000)
        assert "/services/viewer/cohorts/oncology/ohif-two@1/" in listed.url
        assert "Demo, Head" not in listed.inner_text("body")
        listed.screenshot(path=str(ARTIFACTS / "ohif-cohort-list.png"))
        assert only_the_hub(stack, requests) == []
