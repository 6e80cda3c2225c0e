"""The Kubernetes job runner against a real API server and its job
controller. No kubelet runs here: the test plays it by writing the pod's
status (exit codes), and plays the job by sending files the way
jobs/pod.py does (the service's side of that is FilesHandler). The runner
uses the admin's kubeconfig here; the job service's rights in the chart are
checked in test_chart_cluster.py."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import pytest
from traitlets.config import Config

from imaginghub.hub.services.jobs.kubernetes import MOUNT, KubernetesJobRunner, job_name
from imaginghub.hub.services.jobs.runner import GONE

NS = "jobs-test"
TOKEN = "job-token-5e2f71"


@pytest.fixture(scope="module")
def jobs_ns(kube):
    kube.kubectl("create", "namespace", NS)
    # pods are refused until the namespace's default ServiceAccount has its token
    for _ in range(100):
        sa = kube.get("serviceaccount", "default", "-n", NS) if kube.kubectl(
            "get", "serviceaccount", "default", "-n", NS, check=False).returncode == 0 else {}
        if sa.get("secrets"):
            break
        time.sleep(0.1)
    return kube


def make_runner(kube, tmp_path) -> KubernetesJobRunner:
    return KubernetesJobRunner(runs_dir=tmp_path / "runs", config=Config({
        "KubernetesJobRunner": {
            "namespace": NS, "kubeconfig": str(kube.admin),
            "image": "registry.example.org/imaginghub/user:0.1.0",
            "upload_url": "http://ih-imaginghub-jobs:8080/services/jobs/",
            "extra_labels": {"imaginghub.org/user-code": "true"},
            "ttl_seconds_after_finished": 600}}))


def notebook(tmp_path):
    path = tmp_path / "input.ipynb"
    path.write_text(json.dumps({"cells": [], "metadata": {}, "nbformat": 4,
                                "nbformat_minor": 5}))
    return path


ENV = {"JUPYTERHUB_API_TOKEN": TOKEN, "IMAGINGHUB_DICOMWEB_TOKEN": TOKEN,
       "IMAGINGHUB_DICOMWEB_URL": "http://ih-imaginghub-data:8080/services/data/dicom-web",
       "JUPYTERHUB_USER": "alice", "HOME": "/home/alice", "PATH": "/usr/bin"}


def pod_of(kube, handle: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pods = kube.get("pods", "-n", NS, "-l", f"job-name={handle}")["items"]
        if pods:
            return pods[0]
        time.sleep(0.2)
    raise AssertionError(f"the job controller made no pod for {handle}")


def play_kubelet(kube, handle: str, exit_code: int) -> None:
    """What a kubelet would report of the job's container: it ended."""
    pod = pod_of(kube, handle)
    status = {"status": {
        "phase": "Succeeded" if exit_code == 0 else "Failed",
        "containerStatuses": [{"name": "job", "image": "x", "imageID": "", "ready": False,
                               "restartCount": 0,
                               "state": {"terminated": {"exitCode": exit_code}}}]}}
    kube.kubectl("patch", "pod", pod["metadata"]["name"], "-n", NS, "--subresource=status",
                 "--type=merge", "-p", json.dumps(status))


async def until_done(runner, handle: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = await runner.poll(handle)
        if code is not None:
            return code
        await asyncio.sleep(0.2)
    raise AssertionError(f"{handle} did not end")


def test_a_job_runs_succeeds_and_cleans_up(jobs_ns, tmp_path):
    kube = jobs_ns

    async def life():
        runner = make_runner(kube, tmp_path)
        spec = {"parameters": {"x": 1}, "kernel": "imaging",
                "resources": {"cpu": 2.0, "memory": "6Gi"}}  # the workflow's and the job's
        handle = await runner.start("a1b2c3d4e5f60718", "alice", spec, notebook(tmp_path), ENV)
        assert handle == job_name("a1b2c3d4e5f60718")
        job = await asyncio.to_thread(kube.get, "job", handle, "-n", NS)
        secret = await asyncio.to_thread(kube.get, "secret", handle, "-n", NS)
        assert await runner.poll(handle) is None
        await asyncio.to_thread(play_kubelet, kube, handle, 0)
        code = await until_done(runner, handle)
        log = await runner.log("a1b2c3d4e5f60718")
        await runner.clean_up("a1b2c3d4e5f60718")
        gone = await asyncio.to_thread(kube.kubectl, "get", "secret", handle, "-n", NS,
                                       check=False)
        await runner.close()
        return job, secret, code, log, gone

    job, secret, code, log, gone = asyncio.run(life())
    assert code == 0
    spec = job["spec"]
    assert spec["ttlSecondsAfterFinished"] == 600 and spec["backoffLimit"] == 0
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "registry.example.org/imaginghub/user:0.1.0"
    assert container["resources"] == {"requests": {"cpu": "2", "memory": "6Gi"},
                                      "limits": {"memory": "6Gi"}}
    assert pod["automountServiceAccountToken"] is False
    assert spec["template"]["metadata"]["labels"]["imaginghub.org/user-code"] == "true"
    # the token only in the job's Secret
    assert TOKEN not in json.dumps(job)
    env = {e["name"]: e for e in container["env"]}
    assert env["JUPYTERHUB_API_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == job_name(
        "a1b2c3d4e5f60718")
    assert env["IMAGINGHUB_JOB_UPLOAD_URL"]["value"] == \
        "http://ih-imaginghub-jobs:8080/services/jobs"
    assert "PATH" not in env  # the image's own
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert data["JUPYTERHUB_API_TOKEN"] == TOKEN
    assert json.loads(data["spec.json"])["notebook"] == "/run/imaginghub/job/input.ipynb"
    assert json.loads(data["input.ipynb"])["nbformat"] == 4
    # no kubelet, so no log: said, not failed
    assert log.startswith(b"(logs unavailable")
    assert gone.returncode != 0 and "NotFound" in gone.stderr


def test_a_failed_job_gives_its_exit_code(jobs_ns, tmp_path):
    async def life():
        runner = make_runner(jobs_ns, tmp_path)
        handle = await runner.start("0000000000000f01", "alice", {"parameters": {}},
                                    notebook(tmp_path), ENV)
        await asyncio.to_thread(play_kubelet, jobs_ns, handle, 3)
        code = await until_done(runner, handle)
        await runner.close()
        return code

    assert asyncio.run(life()) == 3


def test_cancel_or_time_limit_deletes_the_job(jobs_ns, tmp_path):
    async def life():
        runner = make_runner(jobs_ns, tmp_path)
        handle = await runner.start("0000000000000c01", "alice", {"parameters": {}},
                                    notebook(tmp_path), ENV)
        await asyncio.to_thread(pod_of, jobs_ns, handle)
        await runner.stop(handle)
        code = await until_done(runner, handle)
        left = await asyncio.to_thread(jobs_ns.kubectl, "get", "secret", handle, "-n", NS,
                                       check=False)
        await runner.close()
        return code, left

    code, left = asyncio.run(life())
    assert code == GONE
    assert "NotFound" in left.stderr


def test_a_restarted_service_adopts_a_running_job(jobs_ns, tmp_path):
    async def first():
        runner = make_runner(jobs_ns, tmp_path)
        handle = await runner.start("0000000000000a01", "alice", {"parameters": {}},
                                    notebook(tmp_path), ENV)
        await runner.close()  # the service stops; the job goes on
        return handle

    handle = asyncio.run(first())

    async def second():
        runner = make_runner(jobs_ns, tmp_path)  # a new service, same handle
        running = await runner.poll(handle)
        await asyncio.to_thread(play_kubelet, jobs_ns, handle, 0)
        code = await until_done(runner, handle)
        await runner.close()
        return running, code

    assert asyncio.run(second()) == (None, 0)


def test_a_job_that_asks_for_a_gpu_gets_one_and_the_gpu_nodes(tmp_path):
    runner = KubernetesJobRunner(runs_dir=tmp_path, config=Config({"KubernetesJobRunner": {
        "namespace": NS, "image": "reg/user:1", "gpu_image": "reg/user-gpu:1",
        "node_selector": {"zone": "a"}, "gpu_node_selector": {"gpu": "true"},
        "gpu_tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}]}}))
    gpu = runner.job_manifest("0000000000000d01", "alice",
                              {"resources": {"gpu": 1, "memory": "24Gi"}}, ENV)
    pod = gpu["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "reg/user-gpu:1"
    assert container["resources"] == {"requests": {"cpu": "1", "memory": "24Gi"},
                                      "limits": {"memory": "24Gi", "nvidia.com/gpu": 1}}
    assert pod["nodeSelector"] == {"zone": "a", "gpu": "true"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists"}]
    cpu = runner.job_manifest("0000000000000d02", "alice", {"resources": {}}, ENV)
    pod = cpu["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "reg/user:1"
    assert pod["containers"][0]["resources"] == runner.resources  # the runner's defaults
    assert pod["nodeSelector"] == {"zone": "a"} and "tolerations" not in pod


def test_a_jobs_input_files_travel_in_its_secret_up_to_its_limit(tmp_path):
    """The spec (with the job's input files, base64) goes in the job's
    Secret, which the pod mounts; input files a Secret cannot hold stop the
    start with a message that says so."""
    runner = KubernetesJobRunner(runs_dir=tmp_path, config=Config({"KubernetesJobRunner": {
        "namespace": NS, "image": "reg/user:1"}}))
    spec = {"parameters": {}, "inputs": {"w.safetensors": base64.b64encode(b"w" * 1000).decode()}}
    secret = runner.secret_manifest("0000000000000d03", spec, notebook(tmp_path), ENV)
    carried = json.loads(secret["stringData"]["spec.json"])
    assert base64.b64decode(carried["inputs"]["w.safetensors"]) == b"w" * 1000
    spec["inputs"]["big"] = base64.b64encode(b"0" * 900_000).decode()
    with pytest.raises(ValueError, match="over the 1000000 a Kubernetes Secret holds"):
        runner.secret_manifest("0000000000000d04", spec, notebook(tmp_path), ENV)


def test_what_a_run_may_send(tmp_path):
    runner = KubernetesJobRunner(runs_dir=tmp_path, config=Config(
        {"KubernetesJobRunner": {"namespace": NS}}))
    runner.store("0000000000000b01", "result.json", b'{"status": "succeeded"}')
    runner.store("0000000000000b01", "work/masks/seg.dcm", b"DICM")
    for bad in ("../escape", "work/../../x", "spec.json", "work/", "log.txt", "/abs"):
        with pytest.raises(ValueError, match="a run may send"):
            runner.store("0000000000000b01", bad, b"x")

    async def read():
        return (await runner.result("0000000000000b01"),
                await runner.artifacts("0000000000000b01"))

    result, artifacts = asyncio.run(read())
    assert result == {"status": "succeeded"}
    assert artifacts == [("masks/seg.dcm", 4)]


def test_a_job_service_on_kubernetes_takes_a_jobs_files_only_from_the_job(jobs_ns):
    """The whole path of a job's results on Kubernetes, with a real job
    service (runner "kubernetes") behind a real hub: the service makes the
    Job; the test plays the kubelet by running the pod's command
    (``jobs/pod.py``) as the user's account with what the Job's pod would
    get (its environment, its Secret mounted), and then by writing the pod's
    exit code. The run sends its files with the job's own token; another
    token of the same user, a name the run may not send, and anything after
    the job ended are refused."""
    import grp
    import os
    import shutil
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    import httpx
    from conftest import (MULTI_USER, TEST_WORKFLOWS, RunningStack, as_account, new_home,
                          private_folder, remove_site, start_stack, stop_stack)

    from imaginghub.hub.accounts import ensure_service_account
    from imaginghub.hub.state import free_port
    from imaginghub.kernels.jobs import Jobs
    from tests_support import wait_for

    kube = jobs_ns
    if MULTI_USER:
        ensure_service_account()  # the kubeconfig's group
    secrets = private_folder("k8sjob")
    kubeconfig = secrets / "kubeconfig"
    shutil.copyfile(kube.admin, kubeconfig)  # the service's identity in the cluster
    os.chmod(kubeconfig, 0o640)
    if MULTI_USER:
        os.chown(kubeconfig, 0, grp.getgrnam("imaginghub").gr_gid)
    port = free_port()
    upload_url = f"http://127.0.0.1:{port}/services/jobs"  # through the hub's proxy
    home = new_home("k8sjob", {
        "JobService": {"runner": "kubernetes", "workflow_dirs": [str(TEST_WORKFLOWS)]},
        "KubernetesJobRunner": {"namespace": NS, "kubeconfig": str(kubeconfig),
                                "image": "registry.example.org/imaginghub/user:0.1.0",
                                "upload_url": upload_url}})
    proc, output = start_stack(home, port=port)
    try:
        assert proc.poll() is None, output.read_text()
        s = RunningStack(home, proc, output)
        s.cli("users", "add", "alice", "--project", "k8s")
        alice_token = s.token("alice")
        alice = Jobs(s.run["jobs_url"], alice_token)
        job = alice.submit("echo", message="sent from the pod", times=2,
                           resources={"cpu": 2, "memory": "6Gi"})
        handle = job_name(job.id)
        k8s_job = wait_for(lambda: _get_or_none(kube, "job", handle), what="the service's Job")
        secret = kube.get("secret", handle, "-n", NS)
        assert wait_for(lambda: job.refresh().status == "running", what="the job to run")

        # the pod's files and environment, as a kubelet would give them
        data = {k: base64.b64decode(v) for k, v in secret["data"].items()}
        job_token = data["JUPYTERHUB_API_TOKEN"].decode()
        assert job_token != alice_token
        account = s.home.accounts().ensure("alice") if s.home.multi_user else None
        mount = private_folder("k8smnt")
        (mount / "input.ipynb").write_bytes(data["input.ipynb"])
        # the kubelet would mount the Secret at MOUNT; here it is a folder of its own
        spec = json.loads(data["spec.json"])
        assert spec["notebook"] == f"{MOUNT}/input.ipynb"
        (mount / "spec.json").write_text(json.dumps({**spec,
                                                      "notebook": str(mount / "input.ipynb")}))
        container = k8s_job["spec"]["template"]["spec"]["containers"][0]
        assert container["resources"]["requests"] == {"cpu": "2", "memory": "6Gi"}
        env = {e["name"]: (e["value"] if "value" in e
                           else data[e["valueFrom"]["secretKeyRef"]["key"]].decode())
               for e in container["env"]}
        assert env["IMAGINGHUB_JOB_UPLOAD_URL"] == upload_url
        assert container["command"][-1] == MOUNT
        assert env["HOME"] == "/tmp"  # the pod's own; here a short private one (kernels'
        pod_home = Path(tempfile.mkdtemp(prefix="k8s", dir="/tmp"))  # socket paths)
        env.update(PATH=f"{Path(sys.executable).parent}:/usr/bin:/bin", HOME=str(pod_home))
        if account:
            for p in (mount, *mount.iterdir(), pod_home):
                os.chown(p, account.uid, account.gid)

        files = f"{upload_url}/api/jobs/{job.id}/files"

        def put(name: str, token: str, body: bytes = b'{"status": "succeeded"}'):
            return httpx.put(f"{files}/{name}", content=body, timeout=30,
                             headers={"Authorization": f"token {token}"})

        # the attacks: alice's own token is not the job's; a run sends only its files
        assert put("result.json", alice_token).status_code == 404
        refused = put("spec.json", job_token)
        assert refused.status_code == 400 and "a run may send" in refused.text

        ran = subprocess.run(
            [*as_account(account.name if account else None), "env", "-i",
             *[f"{k}={v}" for k, v in env.items()], *container["command"][:-1], str(mount)],
            capture_output=True, text=True, timeout=300, cwd="/")
        # (the pod's command is "python3 -m ..."; on this PATH, the venv's)
        assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
        assert "refused" not in ran.stderr, ran.stderr
        play_kubelet(kube, handle, ran.returncode)
        done = job.wait(timeout=120, progress=False)
        assert done.status == "succeeded", (done.reason, done.logs())
        assert json.loads(done.read("out/values.json")) == {
            "message": "sent from the pod", "times": 2, "scale": 1.0, "flag": False,
            "items": [], "user": "alice"}
        assert {a["path"] for a in done.artifacts()} >= {"out/message.txt", "out/values.json"}
        executed = done.output_notebook()
        assert any("sent from the pod" in "".join(o.get("text", ""))
                   for c in executed.cells for o in c.get("outputs", []))
        assert done.logs().startswith("(logs unavailable")
        # after the end, not even the job's token may send; the token is gone
        assert put("result.json", job_token).status_code == 404
        hub_api = s.url.rstrip("/") + "/hub/api/user"
        assert httpx.get(hub_api, headers={"Authorization": f"token {job_token}"},
                         timeout=30).status_code == 403
        assert wait_for(lambda: _get_or_none(kube, "secret", handle) is None,
                        what="the job's Secret to go")
    finally:
        assert stop_stack(proc) == 0, output.read_text()
        remove_site(home)
        if "pod_home" in locals():
            shutil.rmtree(pod_home, ignore_errors=True)


def _get_or_none(kube, kind: str, name: str):
    got = kube.kubectl("get", kind, name, "-n", NS, "-o", "json", check=False)
    return json.loads(got.stdout) if got.returncode == 0 else None

