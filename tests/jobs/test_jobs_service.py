"""The job service on the real stack: real hub, archive, data service, job
service, papermill and imaging kernels; the workflows of notebooks/workflows
and of tests/jobs/workflows (echo, sleep, fail, series-info)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time

import httpx
import psutil
import pytest

from imaginghub.hub import demo
from imaginghub.kernels.catalog import Catalog
from imaginghub.kernels.errors import NotFound
from imaginghub.kernels.jobs import Jobs

from tests_support import wait_for

from conftest import (TEST_WORKFLOWS, RunningStack, new_home, remove_site, start_stack,
                      stop_stack)

SMALL = ["ct-head-reversed", "ct-slice", "ct-small"]  # oncology


@pytest.fixture(scope="module")
def tokens(stack):
    stack.cli("users", "add", "dora", "--project", "oncology")
    return {u: stack.token(u) for u in ("alice", "bob", "dora")}


@pytest.fixture(scope="module")
def as_user(stack, tokens):
    return {u: Jobs(stack.run["jobs_url"], t) for u, t in tokens.items()}


@pytest.fixture(scope="module")
def alice(as_user):
    return as_user["alice"]


def job_processes(job_id: str) -> list[psutil.Process]:
    """The job's process and its kernel: they work in the job's folder."""
    out = []
    for p in psutil.process_iter(["cwd"]):
        if (p.info["cwd"] or "").endswith(f"/{job_id}/work"):
            out.append(p)
    return out


def secrets_in_environ(p: psutil.Process, *secrets: str) -> list[str]:
    try:
        raw = open(f"/proc/{p.pid}/environ", "rb").read().decode(errors="replace")
    except OSError:
        return []
    return [s for s in secrets if s in raw]


def raw(jobs: Jobs, method: str, path: str) -> httpx.Response:
    """The service's answer as it is (the client raises on errors)."""
    return httpx.request(method, f"{jobs.api}/{path}", timeout=30,
                         headers={"Authorization": f"token {jobs._token}"})




def test_workflows_and_their_parameters(alice):
    flows = alice.workflows().set_index("name")
    assert {"cohort-qc", "export-nifti", "echo", "sleep", "fail"} <= set(flows.index)
    echo = alice.workflow("echo")
    assert echo["parameters"]["times"] == {"type": "int", "default": "1", "help": "how often"}
    assert echo["parameters"]["items"]["type"] == "list[str]"
    assert bool(flows.loc["series-info", "per_series"]) is True


def test_submit_wait_outputs_and_provenance(alice, stack):
    job = alice.submit("echo", message="hello from a job", times=3, scale=2, flag=True,
                       items=["a", "b"])
    assert job.status in ("queued", "running")
    job.wait(timeout=120, progress=False)
    assert job.status == "succeeded", job.logs()
    assert job.progress == 1.0
    assert job.user == "alice"
    # what went in
    notebook = TEST_WORKFLOWS / "echo.ipynb"
    assert job.notebook["sha256"] == hashlib.sha256(notebook.read_bytes()).hexdigest()
    assert job.parameters == {"message": "hello from a job", "times": 3, "scale": 2.0,
                              "flag": True, "items": ["a", "b"]}
    record = httpx.get(f"{stack.run['jobs_url']}/api/jobs/{job.id}",
                       headers={"Authorization": f"token {stack.home.secret('admin_service_token')}"}
                       ).json()
    assert record["started"] <= record["ended"]
    # what came out
    paths = {a["path"] for a in job.artifacts()}
    assert paths == {"out/message.txt", "out/values.json"}
    values = json.loads(job.read("out/values.json"))
    assert values == {"message": "hello from a job", "times": 3, "scale": 2.0, "flag": True,
                      "items": ["a", "b"], "user": "alice"}
    nb = job.output_notebook()
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and 'message = "hello from a job"' in injected[0].source
    assert "message: 'hello from a job' times 3" in job.logs()
    # the job's own token was deleted when it ended: the user has no job token left
    admin = {"Authorization": f"token {stack.home.secret('admin_service_token')}"}
    hub_tokens = httpx.get(f"{stack.run['hub_api']}/users/alice/tokens", headers=admin).json()
    assert not [t for t in hub_tokens["api_tokens"] if f"job {job.id}" in (t["note"] or "")]


def test_package_versions_are_recorded(alice, stack):
    import importlib.metadata

    job = alice.submit("echo").wait(timeout=120, progress=False)
    from imaginghub.hub.services.jobs.db import JobStore

    store = JobStore(f"sqlite:///{stack.home.path / 'jobs' / 'jobs.sqlite'}")
    packages = json.loads(store.get(job.id).packages)
    assert packages["papermill"] == importlib.metadata.version("papermill")
    assert packages["pydicom"] == importlib.metadata.version("pydicom")


def test_bad_parameters_are_refused_and_nothing_is_queued(alice):
    before = len(alice.list(limit=500))
    with pytest.raises(ValueError, match="has no parameter nope; its parameters are message"):
        alice.submit("echo", nope=1)
    with pytest.raises(ValueError, match="parameter times of workflow echo takes int, not str"):
        alice.submit("echo", times="3")
    with pytest.raises(ValueError, match="takes list\\[str\\], not list"):
        alice.submit("echo", items=[1, 2])
    with pytest.raises(NotFound, match="no workflow called 'nope'"):
        alice.submit("nope")
    with pytest.raises(ValueError, match="time_limit"):
        alice.submit("echo", time_limit=10**9)
    assert len(alice.list(limit=500)) == before


def test_a_string_parameter_with_code_runs_as_data(alice, tmp_path):
    marker = tmp_path / "pwned"
    attacks = [f'"); open("{marker}", "w").write("x"); ("',
               f"'); open('{marker}', 'w').write('x'); ('",
               f'\\"\nopen("{marker}", "w").write("x")\n#',
               f'"""; open("{marker}", "w").write("x"); """']
    jobs = [alice.submit("echo", message=text) for text in attacks]
    for text, job in zip(attacks, jobs):
        job.wait(timeout=120, progress=False)
        assert job.status == "succeeded", job.logs()
        assert job.read("out/message.txt").decode() == text
    assert not marker.exists()


def test_a_failing_cell_keeps_the_notebook_and_says_where(alice):
    job = alice.submit("fail", why="the test says so").wait(timeout=120, progress=False)
    assert job.status == "failed"
    assert job.reason == "RuntimeError: failing on purpose: the test says so"
    nb = job.output_notebook()
    failing = nb.cells[job.failed_cell]
    assert "raise RuntimeError" in failing.source
    assert any(o.get("ename") == "RuntimeError" for o in failing.outputs)
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                      for o in c.get("outputs", []))
    assert "before the failure" in printed and "never reached" not in printed
    assert "failing on purpose" in job.logs()


def test_cancel_a_running_job(alice):
    job = alice.submit("sleep", seconds=120)
    wait_for(lambda: job.refresh().status == "running" and job.progress > 0, 60,
             "the job to run its cells")
    job.cancel()
    job.wait(timeout=30, progress=False)
    assert job.status == "cancelled"
    wait_for(lambda: not job_processes(job.id), 15, "the job's processes to end")
    assert job.output_notebook() is not None  # kept as far as it ran


def test_cancel_a_queued_job(stack, alice, tokens):
    # fill alice's two running places, then queue one more
    blockers = [alice.submit("sleep", seconds=120) for _ in range(2)]
    queued = alice.submit("echo")
    try:
        wait_for(lambda: all(b.refresh().status == "running" for b in blockers), 60,
                 "the first two to run")
        assert queued.refresh().status == "queued"
        queued.cancel()
        assert queued.status == "cancelled"
        assert queued.reason == "cancelled before it started"
    finally:
        for b in blockers:
            b.cancel()


def test_time_limit_stops_the_job(alice):
    job = alice.submit("sleep", seconds=120, time_limit=4).wait(timeout=60, progress=False)
    assert job.status == "timed_out"
    assert job.reason == "stopped after its time limit of 4 s"
    wait_for(lambda: not job_processes(job.id), 15, "the job's processes to end")


def test_a_killed_job_process_is_failed_and_keeps_what_it_did(stack, alice):
    job = alice.submit("sleep", seconds=120)
    procs = wait_for(lambda: job.refresh().status == "running" and job.progress > 0
                     and job_processes(job.id), 60, "the job to start its cells")
    pids = {p.pid for p in procs}
    child = [p for p in procs if p.ppid() not in pids]  # the job's; the kernel is its child
    assert len(child) == 1
    # neither the job's process nor its kernel can read the service's secrets
    service_token = stack.home.secret("admin_service_token")
    jobs_token = psutil.Process(_service_pid(stack)).environ()["JUPYTERHUB_API_TOKEN"]
    for p in procs:
        assert not secrets_in_environ(p, service_token, jobs_token)
    child[0].send_signal(signal.SIGKILL)
    job.wait(timeout=30, progress=False)
    assert job.status == "failed"
    assert "ended (signal 9) before the notebook finished" in job.reason
    assert job.output_notebook().cells  # saved after every cell
    # the kernel that papermill had started does not outlive the job
    wait_for(lambda: not job_processes(job.id), 15, "the job's kernel to end")


def test_per_series_fan_out(stack, alice, tokens):
    uids = sorted(demo.series(k).series_uid for k in SMALL)
    catalog = Catalog(stack.run["gateway_url"].rsplit("/dicom-web", 1)[0] + "/api",
                      tokens["alice"])
    cohort = catalog.new_cohort("fan-out-test", "oncology", series=uids).save()
    job = alice.submit("series-info", cohort=cohort.ref).wait(timeout=180, progress=False)
    assert job.status == "succeeded", [c.logs() for c in job.children()]
    assert job.per_series and job.model["children"]["count"] == 3
    assert job.cohort == {"ref": cohort.ref, "series_hash": cohort.info["series_hash"],
                          "project": "oncology"}
    kids = job.children()
    assert sorted(k.parameters["series"][0] for k in kids) == uids
    assert all(k.status == "succeeded" and k.parent == job.id for k in kids)
    files = {a["path"] for a in job.artifacts()}
    assert files == {f"{k.id}/info/{k.parameters['series'][0]}.json" for k in kids}
    one = json.loads(job.read(f"{kids[0].id}/info/{kids[0].parameters['series'][0]}.json"))
    assert one["study_uid"]


def test_fan_out_with_a_series_it_cannot_read(alice):
    other = demo.series("mr-head").series_uid  # bob's project
    ok = demo.series("ct-small").series_uid
    job = alice.submit("series-info", series=[ok, other]).wait(timeout=180, progress=False)
    assert job.status == "failed"
    assert job.reason == "1 of 2 series did not succeed (failed)"
    bad = [k for k in job.children() if k.status == "failed"]
    assert bad[0].parameters["series"] == [other] and "NotFound" in bad[0].reason


def test_rerun_gives_the_same_qc_csv(stack, alice, tokens):
    uids = sorted(demo.series(k).series_uid for k in SMALL)
    catalog = Catalog(stack.run["gateway_url"].rsplit("/dicom-web", 1)[0] + "/api",
                      tokens["alice"])
    cohort = catalog.new_cohort("rerun-test", "oncology", series=uids).save()
    first = alice.submit("cohort-qc", cohort="rerun-test")  # the latest version, pinned
    first.wait(timeout=180, progress=False)
    assert first.status == "succeeded", first.logs()
    assert first.parameters["cohort"] == cohort.ref
    assert first.parameters["project"] == "oncology"
    # a newer version of the cohort does not change what a rerun reads
    catalog.new_cohort("rerun-test", "oncology", series=uids[:1]).save()
    again = first.rerun().wait(timeout=180, progress=False)
    assert again.status == "succeeded", again.logs()
    assert again.rerun_of == first.id
    assert again.parameters == first.parameters and again.notebook == first.notebook
    assert again.cohort == first.cohort
    csv = first.read("qc-output/qc.csv")
    assert csv == again.read("qc-output/qc.csv")
    assert csv.count(b"\n") == 4  # header and the three series


def test_users_see_only_their_jobs_unless_shared(stack, as_user):
    alice, bob, dora = as_user["alice"], as_user["bob"], as_user["dora"]
    job = alice.submit("echo", message="private").wait(timeout=120, progress=False)
    for other in (bob, dora):
        for path in (f"jobs/{job.id}", f"jobs/{job.id}/log", f"jobs/{job.id}/notebook",
                     f"jobs/{job.id}/artifacts", f"jobs/{job.id}/artifacts/out/message.txt"):
            assert raw(other, "GET", path).status_code == 404, path
        for action in ("cancel", "rerun"):
            assert raw(other, "POST", f"jobs/{job.id}/{action}").status_code == 404
        assert job.id not in set(other.list(limit=500)["id"])
    job.share()  # in alice's only project
    assert raw(dora, "GET", f"jobs/{job.id}").status_code == 200
    job.share(False)
    # shared with the cohort's project: dora (oncology) sees it, bob (neuro) does not
    uid = demo.series("ct-small").series_uid
    shared = alice.submit("echo", shared=True, message="for the project")
    assert shared.project == "oncology" and shared.shared
    qc = alice.submit("series-info", series=[uid], shared=True)
    assert qc.project == "oncology"  # alice's only project
    qc.wait(timeout=120, progress=False)
    assert dora.get(qc.id).status == "succeeded"
    assert qc.id in set(dora.list(limit=500)["id"])
    assert raw(dora, "POST", f"jobs/{qc.id}/cancel").status_code == 403
    assert raw(bob, "GET", f"jobs/{qc.id}").status_code == 404
    qc.share(False)
    assert raw(dora, "GET", f"jobs/{qc.id}").status_code == 404
    shared.wait(timeout=120, progress=False)


def test_cli_submit_list_logs(stack):
    out = stack.cli("jobs", "submit", "echo", "--user", "alice", "-p", "message=from the cli",
                    "-p", "times=2", "--wait").stdout
    job_id = out.split()[1]
    assert f"job {job_id} succeeded" in out
    assert job_id in stack.cli("jobs", "list").stdout
    assert "message: 'from the cli' times 2" in stack.cli("jobs", "logs", job_id).stdout
    shown = json.loads(stack.cli("jobs", "show", job_id).stdout)
    assert shown["user"] == "alice" and shown["parameters"]["times"] == 2
    bad = stack.cli("jobs", "submit", "echo", "--user", "alice", "-p", "times=many",
                    check=False)
    assert bad.returncode == 1 and "takes int, not str 'many'" in bad.stderr
    rerun = stack.cli("jobs", "rerun", job_id, "--wait").stdout
    assert "succeeded" in rerun


def _service_pid(stack) -> int:
    for p in psutil.process_iter(["cmdline", "environ"]):
        try:
            if "imaginghub.hub.services.jobs" in (p.info["cmdline"] or []) and \
                    (p.info["environ"] or {}).get("IMAGINGHUB_HOME") == str(stack.home.path):
                return p.pid
        except (psutil.Error, TypeError):
            continue
    raise AssertionError("the job service is not running")


def test_service_restart_adopts_running_and_starts_queued(stack, alice):
    # two run (long enough to be running when the service is back), one waits
    jobs = [alice.submit("sleep", seconds=s) for s in (30, 30, 1)]
    wait_for(lambda: sum(j.refresh().status == "running" for j in jobs) == 2, 60,
             "two jobs to run")
    old = _service_pid(stack)
    os.kill(old, signal.SIGKILL)
    # JupyterHub restarts its managed service (it looks every 10 s)
    wait_for(lambda: _try_pid(stack) not in (None, old), 60, "the service to restart")
    wait_for(lambda: _refreshed(jobs[0]), 30, "the restarted service to answer")
    # adopted: still running, or (on a slow machine the restart takes longer
    # than they do) ended well; a job the service did not adopt would have
    # been ended as interrupted
    states = [(j.refresh().status, j.reason) for j in jobs[:2]]
    assert all(s in ("running", "succeeded") and not r for s, r in states), states
    for j in jobs:
        wait_for(lambda: _refreshed(j), 60, "the service to answer")
        j.wait(timeout=120, progress=False)
        assert j.status == "succeeded", j.reason
        assert j.read("done.txt") == b"done"


def _try_pid(stack):
    try:
        return _service_pid(stack)
    except AssertionError:
        return None


def _refreshed(job) -> bool:
    try:
        job.refresh()
        return True
    except Exception:
        return False


@pytest.mark.stack
def test_whole_stack_restart():
    """Queued jobs start after the workspace restarts; a job that was running
    is marked interrupted, with the reason, and can be rerun."""
    home = new_home("jobrestart", {"JobService": {"workflow_dirs": [str(TEST_WORKFLOWS)],
                                                  "max_running": 1}})
    try:
        _whole_stack_restart(home)
    finally:
        remove_site(home)


def _whole_stack_restart(home):
    proc, output = start_stack(home)

    s = RunningStack(home, proc, output)
    try:
        jobs = Jobs(s.run["jobs_url"], s.home.secret("admin_service_token"))
        body = {"workflow": "sleep", "parameters": {"seconds": 60}, "user": "admin"}
        running = jobs.get(jobs._json("POST", "jobs", body)["id"])
        queued = jobs.get(jobs._json("POST", "jobs", dict(body, parameters={"seconds": 0.1}))
                          ["id"])
        wait_for(lambda: running.refresh().status == "running", 60, "the first job to run")
        assert queued.refresh().status == "queued"
    finally:
        assert stop_stack(proc) == 0, output.read_text()
    proc, output = start_stack(home)
    s = RunningStack(home, proc, output)
    try:
        jobs = Jobs(s.run["jobs_url"], s.home.secret("admin_service_token"))
        running, queued = jobs.get(running.id), jobs.get(queued.id)
        assert running.status == "interrupted"
        assert "stopped while it ran; rerun it" in running.reason
        queued.wait(timeout=120, progress=False)
        assert queued.status == "succeeded"
        again = running.rerun()
        assert again.parameters == {"seconds": 60} and again.user == "admin"
        again.cancel()
    finally:
        assert stop_stack(proc) == 0, output.read_text()


def test_a_job_maps_over_series_on_a_cluster_of_its_user(stack, alice, tokens):
    """cluster() and map_series in a job: the gateway gives the cluster to
    the job's user (the job's token is alice's), and the workers read the
    series through the data service as her."""
    from imaginghub.kernels.cluster import gateway

    uids = [demo.series(k).series_uid for k in ("ct-small", "ct-head-reversed")]
    job = alice.submit("dask-map", series=uids).wait(timeout=240, progress=False)
    assert job.status == "succeeded", job.logs()
    out = json.loads(job.read("map.json"))
    assert out["cluster"] in out["mine"]  # listed among the job user's clusters
    rows = {r["series_uid"]: r for r in out["rows"]}
    assert rows[uids[1]]["slices"] == 120 and rows[uids[1]]["error"] is None
    assert rows[uids[0]]["slices"] == 1
    # the job shut its cluster down; bob never saw it
    bob = gateway(token=tokens["bob"], environ=dict(os.environ, **_gateway_env(stack)))
    assert out["cluster"] not in [c.name for c in bob.list_clusters()]


def _gateway_env(stack) -> dict:
    """What a user's server gets to find the gateway (from the hub's config)."""
    env = json.loads(psutil.Process(_service_pid(stack)).environ()["IMAGINGHUB_USER_ENV"])
    return {k: v for k, v in env.items() if "DASK" in k}
