"""The jobs widget's kernel side without a browser: the form made from a
workflow's parameters and read back as typed values, the cohort filled in,
the service's refusal shown, polling that stops when no job is active, and
output notebooks saved under ``jobs/``.

The job client here is a stand-in with the real client's methods (the
service itself is exercised by tests/widgets/test_jobs_widget_browser.py)."""

from __future__ import annotations

import json
import time

import pandas as pd
import pytest

from imaginghub.kernels.errors import NotFound
from imaginghub.widgets.jobs import (JobsWidget, as_cohort, changed_parameters, default_text,
                                     field_kind, form_fields, parse_value)

ECHO = {"name": "echo", "title": "Echo", "description": "Echo", "per_series": False,
        "parameters": {
            "message": {"type": "str", "default": '"hello"', "help": "what to write"},
            "times": {"type": "int", "default": "1", "help": "how often"},
            "scale": {"type": "float", "default": "1.0", "help": ""},
            "flag": {"type": "bool", "default": "False", "help": ""},
            "items": {"type": "list[str]", "default": "[]", "help": ""}}}
QC = {"name": "cohort-qc", "title": "Cohort QC", "description": "QC", "per_series": False,
      "parameters": {
          "cohort": {"type": "str", "default": '""', "help": "a saved cohort"},
          "project": {"type": "str", "default": '""', "help": "its project"},
          "series": {"type": "list[str]", "default": "[]", "help": "UIDs"},
          "missing_slice_tolerance": {"type": "float", "default": "1.5", "help": ""}}}


class FakeJob:
    def __init__(self, client, model):
        self.client, self.model = client, model

    def __getattr__(self, name):
        return self.__dict__["model"][name]

    def logs(self):
        return f"log of {self.id}\n"

    def output_notebook(self, path):
        if self.status == "queued":
            raise NotFound("GET notebook: Not Found (HTTP 404)")
        path.write_text(json.dumps({"cells": [], "job": self.id}))
        return path

    def cancel(self):
        self.model["status"] = "cancelled"
        return self

    def rerun(self):
        return self.client.submit(self.workflow, **self.parameters)


class FakeJobs:
    """What the widget uses of kernels.jobs.Jobs."""

    def __init__(self):
        self.flows = {"cohort-qc": QC, "echo": ECHO}
        self.jobs: list[dict] = []
        self.submitted: list[tuple] = []
        self.lists = 0

    def workflows(self):
        return pd.DataFrame([{k: w[k] for k in ("name", "title", "per_series", "description")}
                             for w in self.flows.values()])

    def workflow(self, name):
        return self.flows[name]

    def submit(self, workflow, *, shared=False, time_limit=None, **parameters):
        spec = self.flows[workflow]["parameters"]
        for k, v in parameters.items():
            if k not in spec:
                raise ValueError(f"the job service refused it: workflow {workflow} has no "
                                 f"parameter {k}")
            if spec[k]["type"] == "int" and not isinstance(v, int):
                raise ValueError(f"the job service refused it: parameter {k} of workflow "
                                 f"{workflow} takes int, not {type(v).__name__} {v!r}")
        self.submitted.append((workflow, parameters, shared))
        model = {"id": f"{len(self.jobs):016x}", "workflow": workflow, "user": "alice",
                 "status": "queued", "progress": 0.0, "submitted": "2024-01-01T10:00:00+00:00",
                 "ended": None, "cohort": parameters.get("cohort", ""), "reason": None,
                 "per_series": False, "parameters": parameters}
        self.jobs.insert(0, model)
        return FakeJob(self, model)

    def list(self, limit=50, **_):
        self.lists += 1
        cols = ["id", "workflow", "user", "status", "progress", "submitted", "ended", "cohort",
                "reason"]
        return pd.DataFrame([{c: j[c] for c in cols} for j in self.jobs[:limit]], columns=cols)

    def get(self, job_id):
        return FakeJob(self, next(j for j in self.jobs if j["id"] == job_id))


def test_types_and_defaults():
    assert field_kind("list[str]") == ("list", "str", False)
    assert field_kind("Optional[int]") == ("int", "", True)
    assert field_kind("int | None") == ("int", "", True)
    assert field_kind("dict") == ("json", "", False)
    assert field_kind("None") == ("json", "", False)
    assert default_text("str", '"hello"') == "hello"
    assert default_text("int", "1") == "1"
    assert default_text("bool", "True") is True
    assert default_text("list[str]", '["a", "b"]') == "a, b"
    assert default_text("str", 'os.environ["X"]') == 'os.environ["X"]'  # an expression
    assert parse_value("int", "12") == 12
    assert parse_value("int", "many") == "many"  # the service words the refusal
    assert parse_value("float", "2.5") == 2.5
    assert parse_value("list[str]", " a, b ,,c ") == ["a", "b", "c"]
    assert parse_value("list[int]", "1, 2") == [1, 2]
    assert parse_value("Optional[int]", "") is None
    assert parse_value("dict", '{"a": 1}') == {"a": 1}
    assert parse_value("str", "x = 1; import os") == "x = 1; import os"  # data, never code


def test_only_changed_values_are_submitted():
    fields = form_fields(ECHO)
    assert [f["value"] for f in fields] == ["hello", "1", "1.0", False, ""]
    values = {"message": "hi", "times": "1", "scale": "1.0", "flag": True, "items": "x, y"}
    assert changed_parameters(fields, values) == {"message": "hi", "flag": True,
                                                  "items": ["x", "y"]}


def test_cohort_prefill():
    assert as_cohort("oncology/two-cts@1") == {"ref": "two-cts@1", "project": "oncology",
                                               "series": []}
    assert as_cohort(series=["1.2", "1.3"])["series"] == ["1.2", "1.3"]
    with pytest.raises(TypeError, match="cohort must be"):
        as_cohort(3.5)
    fields = {f["name"]: f["value"] for f in form_fields(QC, as_cohort("oncology/a@2"))}
    assert fields["cohort"] == "a@2" and fields["project"] == "oncology"
    fields = {f["name"]: f["value"] for f in form_fields(QC, as_cohort(series=["1.2", "1.3"]))}
    assert fields["series"] == "1.2, 1.3" and fields["cohort"] == ""


def test_widget_submits_refuses_and_polls(tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTERHUB_USER", "alice")
    client = FakeJobs()
    w = JobsWidget(client, workflow="echo", poll_seconds=0.05)
    try:
        assert w.workflow == "echo" and [f["name"] for f in w.fields][:2] == ["message", "times"]
        assert w.submit({"times": "many"}) is None
        assert w.error and "takes int, not str 'many'" in w.message
        assert not client.submitted and not w.rows  # nothing queued
        job = w.submit({"message": "hi", "times": "3"})
        assert client.submitted == [("echo", {"message": "hi", "times": 3}, False)]
        assert not w.error and job.id in w.message
        assert w.rows[0]["status"] == "queued" and w.rows[0]["mine"]
        assert w._thread is not None  # an active job: the poller runs
        # the notebook of a queued job: a clear message, no file
        w._act({"action": "open", "id": job.id})
        assert w.error and "no output notebook yet" in w.message
        client.jobs[0].update(status="succeeded", progress=1.0)
        deadline = time.monotonic() + 5
        while w._thread is not None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert w._thread is None and w.rows[0]["status"] == "succeeded"
        assert w.rows[0]["progress"] == 1.0
        # the log, the notebook saved under the root the browser reported, rerun
        w._act({"action": "log", "id": job.id})
        assert w.log_id == job.id and w.log_text == f"log of {job.id}\n"
        w.lab = {"base": "/user/alice/", "root": str(tmp_path)}
        w._act({"action": "open", "id": job.id})
        rel = f"jobs/{job.id}-echo.ipynb"
        assert w.links == {job.id: rel} and (tmp_path / rel).exists()
        w._act({"action": "rerun", "id": job.id})
        assert len(client.submitted) == 2 and "rerun" in w.message
        w._act({"action": "cancel", "id": client.jobs[0]["id"]})
        assert "cancelled" in w.message
    finally:
        w.close()


def test_widget_with_a_cohort_picks_a_workflow_that_reads_one():
    w = JobsWidget(FakeJobs(), cohort="oncology/two-cts@1")
    try:
        assert w.workflow == "cohort-qc"
        values = {f["name"]: f["value"] for f in w.fields}
        assert values["cohort"] == "two-cts@1" and values["project"] == "oncology"
        w.workflow = "echo"
        w.set_cohort(series=["1.2.3"])
        assert w.workflow == "cohort-qc"
        assert {f["name"]: f["value"] for f in w.fields}["series"] == "1.2.3"
        w.workflow = "nope"
        assert w.fields == [] and "could not read workflow nope" in w.message
    finally:
        w.close()


class FakeCatalog:
    """What the cohort builder uses of kernels.catalog.Catalog."""

    def query(self, **_):
        return {"total": 0, "facets": {}, "rows": [], "took_ms": 1.0}

    def projects(self):
        return ["oncology"]

    def cohorts(self):
        return pd.DataFrame(columns=["project", "name", "version", "ref", "size"])


def test_builder_run_workflow_picks_the_cohort_or_the_selection():
    from imaginghub.widgets.cohort_builder import CohortBuilder

    b = CohortBuilder(catalog=FakeCatalog(), pacs=object(), jobs=FakeJobs())
    try:
        assert b.run_workflow() is None and "nothing to run" in b.message
        b.selected = ["1.2.1", "1.2.2"]
        b._remember(type("C", (), {"ref": "two@1", "project": "oncology"})())
        w = b.run_workflow()
        assert w.cohort == {"ref": "two@1", "project": "oncology", "series": []}
        b.selected = ["1.2.1", "1.2.2", "1.2.3"]  # no longer the saved cohort
        assert b.run_workflow() is w and "not saved as a cohort" in b.message
        assert w.cohort["series"] == ["1.2.1", "1.2.2", "1.2.3"] and not w.cohort["ref"]
        b.run_workflow("other@3", "oncology")  # a row of the cohorts tab
        assert {f["name"]: f["value"] for f in w.fields}["cohort"] == "other@3"
    finally:
        if b.jobs_widget is not None:
            b.jobs_widget.close()
        b.close()
