"""The cohort builder as a user sees it, on the demo archive's catalog:
facet bars that filter, chips, thumbnails, selection, saving a cohort, the
shared cohorts tab, opening a series in the viewer, and "open in OHIF" on
a series and on a saved cohort (the browser viewer)."""

from __future__ import annotations

from browser_support import ARTIFACTS, notebook_page, run_cell, save_first_two, skip_tour

from imaginghub.hub import demo
from imaginghub.kernels.catalog import Catalog

ONCOLOGY = [s for s in demo.SERIES if s.project == "oncology"]
NEURO = [s for s in demo.SERIES if s.project == "neuro"]


def test_build_and_save_a_cohort(stack, browser):
    with notebook_page(stack, browser, "cora", ["oncology"], "cohorts-test",
                       ["cohort_builder()"]) as page:
        # what the catalog holds for cora (other tests may have stored series too)
        mine = Catalog(stack.run["gateway_url"].rsplit("/dicom-web", 1)[0] + "/api",
                       stack.token("cora"))
        total, cts = mine.count(), mine.count(modality="CT")
        run_cell(page, 0)
        page.wait_for_selector(".ih-cohort .ih-bar", timeout=120_000)
        page.wait_for_function("document.querySelector('.ih-cohort .ih-status')"
                               f".textContent.startsWith('{total} series')", timeout=60_000)
        # oncology's modalities have bars, neuro's only ones none; click CT
        bars = page.locator(".ih-cohort .ih-bar[data-field='modality']")
        values = {bars.nth(i).get_attribute("data-value") for i in range(bars.count())}
        assert {s.modality for s in ONCOLOGY} <= values
        assert "MR" not in values and total >= len(ONCOLOGY)
        page.locator(".ih-cohort .ih-bar[data-field='modality'][data-value='CT']").click()
        page.wait_for_function("document.querySelector('.ih-cohort .ih-status')"
                               f".textContent.startsWith('{cts} series')", timeout=30_000)
        assert "modality: CT" in page.locator(".ih-cohort .ih-chips").inner_text()
        cards = page.locator(".ih-cohort .ih-card")
        assert cards.count() == min(cts, 24)
        assert not {s.series_uid for s in NEURO} & {
            cards.nth(i).get_attribute("data-uid") for i in range(cards.count())}
        page.wait_for_selector(".ih-cohort .ih-card img.ih-thumb", timeout=30_000)
        loaded = page.evaluate("Array.from(document.querySelectorAll('.ih-cohort img.ih-thumb'))"
                               ".filter(i => i.complete && i.naturalWidth > 0).length")
        assert loaded >= 1
        page.screenshot(path=str(ARTIFACTS / "cohort-builder.png"))
        # select two, save them as a cohort of oncology
        save_first_two(page, "two-cts")
        # a third series added: version 2 holds all three, version 1 keeps two
        cards.nth(0).click()
        cards.nth(1).click()
        cards.nth(2).click()
        page.wait_for_function("document.querySelector('.ih-cohort .ih-selinfo').textContent"
                               " === '1 selected'", timeout=10_000)
        page.click(".ih-cohort .ih-add")
        page.wait_for_selector(".ih-cohort .ih-message:has-text('saved oncology/two-cts@2: "
                               "3 series')", timeout=30_000)
        assert len(mine.cohort("two-cts@1").series) == 2
        page.click(".ih-cohort .ih-tab:has-text('cohorts')")
        page.wait_for_selector(".ih-cohort .ih-table td:has-text('two-cts')", timeout=30_000)
        rows = page.locator(".ih-cohort .ih-table tr:has-text('two-cts')").all_inner_texts()
        cells = [r.replace("\n", "\t").split("\t") for r in rows]
        assert [(c[2], c[3], c[4]) for c in cells] == [("2", "3", "cora"), ("1", "2", "cora")]
        # "open in OHIF" on a saved cohort: its studies are the browser viewer's list
        studies = set(mine.search(series_uid=mine.cohort("two-cts@1").series)["study_uid"])
        with page.context.expect_page(timeout=60_000) as opened:
            page.locator(".ih-cohort tr:has-text('two-cts'):has-text('cora')").nth(1) \
                .locator(".ih-ohif-cohort").click()
        listed = opened.value
        listed.wait_for_selector(f"text=/1-{len(studies)} of {len(studies)}/", timeout=120_000)
        assert "/services/viewer/cohorts/oncology/two-cts@1/" in listed.url
        assert "Demo, Head" not in listed.inner_text("body")  # neuro's
        listed.close()
        page.click(".ih-cohort .ih-tab:has-text('search')")
        # open a small series in the viewer, below the builder
        small = demo.series("ct-slice")
        page.locator(f".ih-cohort .ih-card[data-uid='{small.series_uid}'] .ih-open").click()
        page.wait_for_selector(".ih-viewer .ih-readout:not(:empty)", timeout=60_000)
        # and in the browser viewer: its study, opened on it
        with page.context.expect_page(timeout=60_000) as opened:
            page.locator(f".ih-cohort .ih-card[data-uid='{small.series_uid}'] .ih-ohif").click()
        viewer = opened.value
        skip_tour(viewer)
        viewer.wait_for_function(
            "(d) => (document.querySelector('[data-cy=viewport-overlay-top-left]') || {})"
            ".textContent?.includes(d)", arg=small.description, timeout=120_000)
        assert f"StudyInstanceUIDs={small.study_uid}" in viewer.url
        viewer.screenshot(path=str(ARTIFACTS / "ohif-from-builder.png"))
        viewer.close()
        # and an ultrasound cine, which is no volume: its frames, in colour
        cine = demo.series("us-cine")
        page.click(".ih-cohort .ih-chip:has-text('modality: CT')")  # off: every modality
        page.fill(".ih-cohort .ih-text", "Ultrasound cine")
        card = page.locator(f".ih-cohort .ih-card[data-uid='{cine.series_uid}']")
        card.wait_for(timeout=30_000)
        assert card.locator("img.ih-thumb").count() == 1
        card.locator(".ih-open").click()
        page.wait_for_function("document.querySelector('.ih-cine') && document.querySelector("
                               "'.ih-cine').dataset.received === '30'", timeout=60_000)
        assert page.locator(".ih-cine .ih-counter").inner_text().strip() == "1 / 30"
        assert "30.0 frames/s" in page.locator(".ih-cine .ih-rate").inner_text()


def test_stays_responsive_on_a_million_series(stack, browser, idc_import):
    """On IDC's index the builder shows the counts, filters with a click and
    pages, each within a few seconds, with only one page in the browser."""
    import time

    with notebook_page(stack, browser, "iris", ["idcdemo"], "idc-builder",
                       ["cohort_builder()"]) as page:
        run_cell(page, 0)
        page.wait_for_function("document.querySelector('.ih-cohort .ih-status')?.textContent"
                               ".startsWith('1,044,191 series')", timeout=120_000)
        timings = {}
        t = time.perf_counter()
        page.locator(".ih-cohort .ih-bar[data-field='modality'][data-value='MR']").click()
        page.wait_for_function("(t => /^[0-9,]+ series/.test(t) && !t.startsWith('1,044,191'))"
                               "(document.querySelector('.ih-cohort .ih-status').textContent)",
                               timeout=30_000)
        mine = Catalog(stack.run["gateway_url"].rsplit("/dicom-web", 1)[0] + "/api",
                       stack.token("iris"))
        shown = page.locator(".ih-cohort .ih-status").inner_text()
        assert shown.startswith(f"{mine.count(modality='MR'):,} series")
        timings["filter"] = time.perf_counter() - t
        assert page.locator(".ih-cohort .ih-card").count() == 24
        t = time.perf_counter()
        page.click(".ih-cohort .ih-pager button:has-text('next')")
        page.wait_for_selector(".ih-cohort .ih-pager:has-text('25–48')", timeout=30_000)
        timings["next page"] = time.perf_counter() - t
        page.screenshot(path=str(ARTIFACTS / "cohort-builder-idc.png"))
        (ARTIFACTS / "cohort-builder-idc.txt").write_text(
            "\n".join(f"{k}: {v:.2f} s" for k, v in timings.items()))
