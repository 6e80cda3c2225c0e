"""The jobs widget as a user sees it in JupyterLab (headless Chromium): a
workflow run from the form, its row live until "succeeded" with a full
progress bar, its log and output notebook, the service's refusal of a bad
parameter, cancelling a running job; and the cohort builder's "run workflow"
opening the widget with the cohort filled in."""

from __future__ import annotations

import re

import nbformat
from browser_support import ARTIFACTS, notebook_page, run_cell, save_first_two

from imaginghub.kernels.jobs import Jobs

QUEUED = re.compile(r"job ([0-9a-f]{16}) queued")


def submitted_id(page) -> str:
    """The id of the job the form just queued, from the widget's message."""
    page.wait_for_selector(".ih-jobs .ih-message:not(.ih-error):has-text('queued')",
                           timeout=30_000)
    return QUEUED.search(page.locator(".ih-jobs .ih-message").inner_text()).group(1)


def wait_status(page, job_id: str, status: str, timeout: float = 60_000) -> None:
    page.wait_for_selector(f".ih-jobs tr[data-id='{job_id}'] .ih-badge:text-is('{status}')",
                           timeout=timeout)


def choose(page, workflow: str) -> None:
    page.select_option(".ih-jobs select.ih-workflow", workflow)
    page.wait_for_selector(f".ih-jobs .ih-wf-desc:has-text('{workflow.capitalize()}')",
                           timeout=10_000)


def test_run_follow_and_cancel_jobs(stack, browser):
    alice = Jobs(stack.run["jobs_url"], stack.token("alice"))
    with notebook_page(stack, browser, "alice", None, "jobs-widget-test",
                       ["jobs_widget()"]) as page:
        run_cell(page, 0)
        page.wait_for_selector(".ih-jobs select.ih-workflow option[value='echo']",
                               state="attached", timeout=60_000)
        choose(page, "echo")
        times = page.locator(".ih-jobs .ih-field[data-name='times'] input")
        assert times.input_value() == "1"  # the notebook's default
        assert "how often" in page.locator(".ih-jobs .ih-field[data-name='times']").inner_text()

        # text in an int field: the service's own words, nothing queued
        before = len(alice.list(limit=500))
        times.fill("many")
        page.click(".ih-jobs .ih-submit")
        error = page.wait_for_selector(".ih-jobs .ih-message.ih-error", timeout=30_000)
        assert "parameter times of workflow echo takes int, not str 'many'" in error.inner_text()
        assert len(alice.list(limit=500)) == before

        # a good run: live status until succeeded, full bar, the log
        times.fill("2")
        page.fill(".ih-jobs .ih-field[data-name='message'] input", "hello from the widget")
        page.click(".ih-jobs .ih-submit")
        echo = submitted_id(page)
        assert alice.get(echo).parameters == {"message": "hello from the widget", "times": 2}
        wait_status(page, echo, "succeeded")
        row = page.locator(f".ih-jobs tr[data-id='{echo}']")
        assert row.locator(".ih-progress").get_attribute("data-progress") == "100"
        assert row.locator(".ih-progress-fill").evaluate("e => e.style.width") == "100%"
        row.locator(".ih-show-log").click()
        page.wait_for_selector(".ih-jobs .ih-log:has-text(\"message: 'hello from the widget' "
                               "times 2\")", timeout=30_000)

        # the output notebook: saved in alice's jobs/ folder, opened in a new tab, linked
        with page.context.expect_page(timeout=30_000) as opened:
            row.locator(".ih-open").click()
        tab = opened.value
        path = f"jobs/{echo}-echo.ipynb"
        tab.wait_for_url(f"**/user/alice/lab/tree/{path}", timeout=30_000)
        tab.close()
        assert row.locator("a.ih-link").inner_text() == path
        assert row.locator("a.ih-link").get_attribute("href") == f"/user/alice/lab/tree/{path}"
        saved = nbformat.read(stack.user_home("alice") / path, as_version=4)
        assert any("hello from the widget" in str(c.get("outputs")) for c in saved.cells)

        # a long job cancelled from its row
        choose(page, "sleep")
        page.fill(".ih-jobs .ih-field[data-name='seconds'] input", "60")
        page.click(".ih-jobs .ih-submit")
        sleeper = submitted_id(page)
        wait_status(page, sleeper, "running")
        page.click(f".ih-jobs tr[data-id='{sleeper}'] .ih-cancel")
        wait_status(page, sleeper, "cancelled", timeout=30_000)
        assert alice.get(sleeper).status == "cancelled"
        assert page.locator(f".ih-jobs tr[data-id='{sleeper}'] .ih-cancel").is_hidden()
        page.locator(".ih-jobs").screenshot(path=str(ARTIFACTS / "jobs-widget.png"))


def test_cohort_builder_runs_a_workflow_on_its_cohort(stack, browser):
    with notebook_page(stack, browser, "rhea", ["oncology"], "builder-run",
                       ["cohort_builder()"]) as page:
        run_cell(page, 0)
        cards = page.locator(".ih-cohort .ih-card")
        page.wait_for_selector(".ih-cohort .ih-card", timeout=120_000)
        # nothing selected or saved yet: the builder says so
        page.click(".ih-cohort .ih-run")
        page.wait_for_selector(".ih-cohort .ih-message:has-text('nothing to run a workflow on')",
                               timeout=30_000)
        save_first_two(page, "run-set")
        page.click(".ih-cohort .ih-run")
        field = ".ih-jobs .ih-field[data-name='{}'] input"
        page.wait_for_selector(field.format("cohort"), timeout=60_000)
        assert page.locator(".ih-jobs select.ih-workflow").input_value() == "cohort-qc"
        assert page.locator(field.format("cohort")).input_value() == "run-set@1"
        assert page.locator(field.format("project")).input_value() == "oncology"
        assert "cohort oncology/run-set@1" in page.locator(".ih-jobs .ih-cohort-note").inner_text()
        # a selection that is not the saved cohort: its series, and the builder says so
        uids = [cards.nth(i).get_attribute("data-uid") for i in range(3)]
        cards.nth(2).click()
        page.wait_for_function("document.querySelector('.ih-cohort .ih-selinfo').textContent"
                               " === '3 selected'", timeout=10_000)
        page.click(".ih-cohort .ih-run")
        page.wait_for_selector(".ih-cohort .ih-message:has-text('not saved as a cohort')",
                               timeout=30_000)
        page.wait_for_function(f"document.querySelector(\"{field.format('series')}\").value"
                               " !== ''", timeout=30_000)
        shown = page.locator(field.format("series")).input_value().split(", ")
        assert sorted(shown) == sorted(uids)
        assert page.locator(field.format("cohort")).input_value() == ""
        assert page.locator(".ih-jobs").count() == 1  # the same widget, filled again
        page.screenshot(path=str(ARTIFACTS / "cohort-builder-run-workflow.png"))
