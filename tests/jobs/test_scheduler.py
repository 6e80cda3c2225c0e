"""The job service's queue without a stack: parameter checks against a
workflow's typed parameters, and the scheduler's queue and limits driven
through the runner contract.

The runner here is a fake that records what it was asked and reports exits
when the test says so: the real runners (the local job starter) are tested
on the stack in test_jobs_service.py. So is minting the job's token, which
the real hub does; here it is replaced by a stub."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from imaginghub.hub.services.jobs.db import (CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED,
                                             TIMED_OUT, JobStore)
from imaginghub.hub.services.jobs.errors import ParameterError, RunnerUnavailable, SubmitError
from imaginghub.hub.services.jobs.runner import GONE, Runner
from imaginghub.hub.services.jobs.scheduler import Scheduler
from imaginghub.hub.services.jobs.workflows import Registry, fits, load

WORKFLOWS = Path(__file__).parent / "workflows"


# -- parameters --------------------------------------------------------------------
@pytest.mark.parametrize("kind, value, ok", [
    ("str", "x", True), ("str", 1, False),
    ("int", 3, True), ("int", True, False), ("int", 3.0, False),
    ("float", 3, True), ("float", 2.5, True), ("float", float("nan"), False),
    ("float", True, False),
    ("bool", False, True), ("bool", 0, False),
    ("list[str]", ["a", "b"], True), ("list[str]", ["a", 1], False), ("list", [1, "a"], True),
    ("list[str]", "a", False),
    ("dict", {"a": 1}, True), ("dict", [], False),
    ("Optional[int]", None, True), ("Optional[int]", 2, True), ("Optional[int]", "2", False),
    ("int | None", None, True),
    ("None", {"anything": 1}, True),  # no annotation: any JSON value
])
def test_parameter_types(kind, value, ok):
    assert fits(kind, value) is ok


def test_a_workflow_checks_what_is_submitted():
    echo = load(WORKFLOWS / "echo.ipynb")
    assert {n: p["type"] for n, p in echo.parameters.items()} == {
        "message": "str", "times": "int", "scale": "float", "flag": "bool",
        "items": "list[str]"}
    assert echo.check({"times": 2, "scale": 3}) == {"times": 2, "scale": 3.0}
    with pytest.raises(ParameterError, match="has no parameter colour; its parameters are "
                                             "message, times"):
        echo.check({"colour": "red"})
    with pytest.raises(ParameterError, match="parameter times of workflow echo takes int, not "
                                             "str '2'"):
        echo.check({"times": "2"})
    assert ParameterError("x").status == 400


# -- the queue -------------------------------------------------------------------------
class FakeRunner(Runner):
    """Records starts and stops; a job ends when the test calls end(). Its
    runs' files are plain files in runs_dir (read() is the contract's one
    way in for the scheduler)."""

    name = "fake"

    def __init__(self, runs_dir: Path):
        super().__init__()
        self.runs_dir = runs_dir
        self.started: list[str] = []     # job ids, in order
        self.stopped: list[str] = []
        self.cleaned: list[str] = []
        self.exits: dict[str, int] = {}  # handle: exit code, once ended
        self.specs: dict[str, dict] = {}  # job id: the spec it was started with
        self.unavailable = False

    async def start(self, job_id, user, spec, notebook, env):
        if self.unavailable:
            raise RunnerUnavailable("the fake runner is down")
        assert notebook.exists() and env["JUPYTERHUB_USER"] == user
        assert env["JUPYTERHUB_API_TOKEN"] == f"token-of-{user}"
        (self.runs_dir / job_id).mkdir(parents=True)
        self.started.append(job_id)
        self.specs[job_id] = spec
        return f"handle-{job_id}"

    async def poll(self, handle):
        return self.exits.get(handle)

    async def stop(self, handle, grace=5.0):
        self.stopped.append(handle)
        self.exits[handle] = -15

    async def read(self, job_id, name, offset=0, limit=None):
        path = self.runs_dir / job_id / name
        if not path.is_file():
            return None
        data = path.read_bytes()[offset:]
        return data if limit is None else data[:limit]

    async def clean_up(self, job_id):
        self.cleaned.append(job_id)

    def end(self, job_id: str, status: str | None = SUCCEEDED, code: int = 0):
        if status:
            (self.runs_dir / job_id / "result.json").write_text(json.dumps({"status": status}))
        self.exits[f"handle-{job_id}"] = code

    def progress_of(self, job_id: str, done: int, cells: int):
        (self.runs_dir / job_id / "progress.json").write_text(
            json.dumps({"done": done, "cells": cells}))


@pytest.fixture
def queue(tmp_path):
    runner = FakeRunner(tmp_path / "runs")
    sched = Scheduler(JobStore(f"sqlite:///{tmp_path / 'jobs.sqlite'}"), Registry([WORKFLOWS]),
                      runner, tmp_path / "jobs", hub_api="http://127.0.0.1:9/hub/api",
                      service_token="t", data_api="http://127.0.0.1:9/api",
                      users_dir=tmp_path / "users", user_env={}, token_scopes=[],
                      max_running=3, max_per_user=2, time_limit=3600)
    minted = []

    async def mint(user, note, seconds):
        minted.append(user)
        return f"token-of-{user}", f"id-{len(minted)}"

    async def delete(user, token_id):
        minted.append(f"deleted {token_id}")

    sched._mint, sched._delete_token = mint, delete
    sched.minted = minted
    yield sched, runner
    asyncio.run(sched.aclose())


def run(coro):
    return asyncio.run(coro)


def submit(sched, user, n=1, **kw):
    return [run(sched.submit(user, "echo", {}, token=None, projects={"p"}, **kw))
            for _ in range(n)]


def status(sched, job):
    return sched.store.get(job.id).status


def test_oldest_first_within_the_limits(queue):
    sched, runner = queue
    alice = submit(sched, "alice", 3)
    bob = submit(sched, "bob", 2)
    run(sched.step())
    # at most 3 at once, at most 2 of one user: alice's third waits, bob's first runs
    assert runner.started == [alice[0].id, alice[1].id, bob[0].id]
    assert [status(sched, j) for j in alice + bob] == [RUNNING, RUNNING, QUEUED, RUNNING,
                                                       QUEUED]
    runner.end(alice[0].id)
    run(sched.step())
    assert status(sched, alice[0]) == SUCCEEDED
    assert runner.started[3:] == [alice[2].id]  # alice's turn again, oldest first
    assert runner.cleaned == [alice[0].id] and "deleted id-1" in sched.minted


def test_how_a_job_ends(queue):
    sched, runner = queue
    ok, bad, crashed = submit(sched, "alice", 1) + submit(sched, "bob", 1) + \
        submit(sched, "carol", 1)
    run(sched.step())
    runner.progress_of(bad.id, 1, 4)
    run(sched.step())
    assert sched.store.get(bad.id).progress == 0.25  # read through the runner
    runner.end(ok.id)
    runner.end(bad.id, status=FAILED, code=1)
    runner.end(crashed.id, status=None, code=-9)
    run(sched.step())
    assert status(sched, ok) == SUCCEEDED
    assert status(sched, bad) == FAILED and sched.store.get(bad.id).progress == 0.25
    got = sched.store.get(crashed.id)
    assert got.status == FAILED and "signal 9" in got.reason and "log" in got.reason


def test_a_job_over_its_time_limit_is_stopped(queue):
    sched, runner = queue
    job, = submit(sched, "alice", 1, time_limit=1)
    run(sched.step())
    import datetime as dt

    from imaginghub.hub.services.jobs.db import now

    sched.store.update(job.id, started_at=now() - dt.timedelta(seconds=5))
    run(sched.step())
    assert runner.stopped == [f"handle-{job.id}"]
    run(sched.step())
    got = sched.store.get(job.id)
    assert got.status == TIMED_OUT and "time limit of 1 s" in got.reason


def test_jobs_wait_while_the_runner_is_unavailable(queue):
    sched, runner = queue
    runner.unavailable = True
    job, = submit(sched, "alice", 1)
    run(sched.step())
    assert status(sched, job) == QUEUED and "deleted id-1" in sched.minted
    runner.unavailable = False
    run(sched.step())
    assert status(sched, job) == RUNNING


def test_cancel_before_and_while_running(queue):
    sched, runner = queue
    first, second, third = submit(sched, "alice", 3)
    run(sched.step())
    run(sched.cancel(sched.store.get(third.id)))  # queued: never starts
    run(sched.cancel(sched.store.get(first.id)))  # running: stopped
    run(sched.step())
    assert status(sched, third) == CANCELLED and third.id not in runner.started
    assert status(sched, first) == CANCELLED and f"handle-{first.id}" in runner.stopped


def test_a_restarted_service_adopts_or_ends_what_ran(queue):
    sched, runner = queue
    alive, gone = submit(sched, "alice", 2)
    run(sched.step())
    runner.exits[f"handle-{gone.id}"] = GONE  # its process went with the old service
    run(sched.recover())
    assert status(sched, alive) == RUNNING
    got = sched.store.get(gone.id)
    assert got.status == "interrupted" and "rerun it" in got.reason


def test_submissions_that_cannot_be_queued(queue):
    sched, _ = queue
    with pytest.raises(SubmitError, match="no workflow called 'nope'") as e:
        run(sched.submit("alice", "nope", {}, token=None, projects={"p"}))
    assert e.value.status == 404
    with pytest.raises(SubmitError, match="takes int") as e:
        run(sched.submit("alice", "echo", {"times": "x"}, token=None, projects={"p"}))
    assert e.value.status == 400
    with pytest.raises(SubmitError, match="a shared job needs a project"):
        run(sched.submit("alice", "echo", {}, token=None, projects={"p", "r"}, shared=True))
    with pytest.raises(SubmitError, match="above this site's limit"):
        run(sched.submit("alice", "echo", {}, token=None, projects={"p"}, time_limit=7200))
    assert not sched.store.with_status(QUEUED)


# -- resources ---------------------------------------------------------------------------
def test_resources_come_from_the_workflow_and_the_job(queue, tmp_path):
    """A workflow's metadata says what one run needs; a job asks for more or
    less of it; the runner gets both, the job's on top; a rerun asks for the
    same; a wrong value is refused before anything is queued."""
    import nbformat

    sched, runner = queue
    nb = nbformat.read(str(WORKFLOWS / "echo.ipynb"), as_version=4)
    nb.metadata["imaginghub"]["resources"] = {"cpu": 2, "memory": "8Gi"}
    folder = tmp_path / "flows"
    folder.mkdir()
    nbformat.write(nb, str(folder / "big-echo.ipynb"))
    sched.registry = Registry([folder])
    assert sched.registry.get("big-echo").model()["resources"] == {"cpu": 2.0,
                                                                  "memory": "8Gi"}
    plain = run(sched.submit("alice", "big-echo", {}, token=None, projects={"p"}))
    more = run(sched.submit("alice", "big-echo", {}, token=None, projects={"p"},
                            resources={"memory": "32Gi", "gpu": 1}))
    run(sched.step())
    assert runner.specs[plain.id]["resources"] == {"cpu": 2.0, "memory": "8Gi"}
    assert runner.specs[more.id]["resources"] == {"cpu": 2.0, "memory": "32Gi", "gpu": 1}
    assert sched.store.get(more.id).model()["resources"]["gpu"] == 1
    again = run(sched.submit("alice", "big-echo", {}, token=None, projects={"p"},
                             rerun_of=sched.store.get(more.id)))
    assert json.loads(sched.store.get(again.id).resources)["memory"] == "32Gi"
    for bad, said in [({"gpus": 1}, "no resource gpus"), ({"cpu": -1}, "cpu must be"),
                      ({"memory": "lots"}, "memory must be"), ({"gpu": 0.5}, "gpu must be"),
                      ("4 cores", "must be an object")]:
        with pytest.raises(SubmitError, match=said):
            run(sched.submit("alice", "big-echo", {}, token=None, projects={"p"},
                             resources=bad))
    # a workflow whose metadata asks for something wrong is not offered
    nb.metadata["imaginghub"]["resources"] = {"memory": 8}
    with pytest.raises(ValueError, match="memory must be"):
        nbformat.write(nb, str(folder / "bad.ipynb"))
        load(folder / "bad.ipynb")


# -- input files --------------------------------------------------------------------------
def test_input_files_reach_the_run_and_its_rerun(queue):
    """Files given with a job are kept by their hash, listed in the job's
    record, handed to the run in its spec, and given again to a rerun; bad
    names and sizes are refused before anything is queued."""
    import base64
    import hashlib

    from imaginghub.hub.services.jobs.scheduler import MAX_INPUT_BYTES

    sched, runner = queue
    weights = bytes(range(256)) * 40
    job = run(sched.submit("alice", "echo", {}, token=None, projects={"p"},
                           inputs={"global.safetensors": weights, "round.json": b"{}"}))
    run(sched.step())
    assert base64.b64decode(runner.specs[job.id]["inputs"]["global.safetensors"]) == weights
    model = sched.store.get(job.id).model()
    assert model["inputs"] == {"global.safetensors": hashlib.sha256(weights).hexdigest(),
                               "round.json": hashlib.sha256(b"{}").hexdigest()}
    again = run(sched.submit("alice", "echo", {}, token=None, projects={"p"},
                             rerun_of=sched.store.get(job.id)))
    assert sched.store.get(again.id).model()["inputs"] == model["inputs"]
    queued = len(sched.store.with_status(QUEUED))
    for bad, said in [({"../x": b""}, "input file name"), ({".hidden": b""}, "input file name"),
                      ({"a": "text"}, "contents are bytes"),
                      ({f"f{i}": b"" for i in range(17)}, "at most 16"),
                      ({"big": b"0" * (MAX_INPUT_BYTES + 1)}, "over the limit")]:
        with pytest.raises(SubmitError, match=said):
            run(sched.submit("alice", "echo", {}, token=None, projects={"p"}, inputs=bad))
    assert len(sched.store.with_status(QUEUED)) == queued


def test_a_database_of_an_older_release_gets_the_new_columns(tmp_path):
    """A jobs database made before ``resources`` existed: its jobs stay and
    read as asking for nothing."""
    import sqlite3

    db = tmp_path / "old.sqlite"
    JobStore(f"sqlite:///{db}")
    with sqlite3.connect(db) as c:  # back to the older release's table
        c.execute("ALTER TABLE jobs DROP COLUMN resources")
        c.execute("ALTER TABLE jobs DROP COLUMN inputs")
        c.execute("INSERT INTO jobs (id, user, project, shared, workflow, title, "
                  "notebook_path, notebook_sha256, parameters, cohort, cohort_series_hash, "
                  "series_count, packages, status, reason, progress, submitted_at, "
                  "time_limit, runner, handle, token_id, per_series) VALUES ('j1', 'alice', "
                  "'', 0, 'echo', '', 'x', 'y', '{}', '', '', 0, '{}', 'succeeded', '', 1.0, "
                  "'2026-01-01 00:00:00', 60, 'local', '', '', 0)")
    store = JobStore(f"sqlite:///{db}")
    assert store.get("j1").model()["resources"] == {}
    assert store.get("j1").model()["inputs"] == {}
