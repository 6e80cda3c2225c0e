"""One machine, many users: alice's own code (her kernel, her job, her Dask
worker) cannot read the site's state, the services' secrets, bob's files,
processes, kernels or tokens, nor reach the archive; what she may do still
works. On the real multi-user stack: real accounts, the service account,
nftables on the archive's ports (CI runs the tests as root)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import stat
import threading
import time
from pathlib import Path

import psutil
import pytest
from hubclient import UserSession

from imaginghub.hub import demo
from imaginghub.hub.accounts import SERVICE_ACCOUNT, Account
from imaginghub.kernels.jobs import Jobs

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="multi-user mode needs root")

ATTACKS = (Path(__file__).parent / "attacks.py").read_text()
BOB_SAYS = "BOB-PRIVATE-OUTPUT"


def _account(stack, user) -> Account:
    return stack.home.accounts().lookup(user)


@pytest.fixture(scope="module")
def bob(stack):
    """bob's server with a kernel that keeps printing while alice attacks."""
    session = UserSession(stack.url, "bob", stack.token("bob"))
    session.start_server()
    kernel = session.start_kernel()
    code = f"import time\nfor i in range(3000):\n    print('{BOB_SAYS}', i)\n    time.sleep(0.1)"
    threading.Thread(target=lambda: _quiet(session.execute, kernel["id"], code, 400),
                     daemon=True).start()
    time.sleep(1)
    yield session, kernel
    session.server("POST", f"/kernels/{kernel['id']}/interrupt")
    session.hub("DELETE", "/users/bob/server")


def _quiet(fn, *args):
    try:
        fn(*args)
    except Exception:
        pass


@pytest.fixture(scope="module")
def alice(stack):
    session = UserSession(stack.url, "alice", stack.token("alice"))
    session.start_server()
    return session


@pytest.fixture(scope="module")
def targets(stack, bob):
    """What alice aims at (paths and pids she could find herself; handed to
    her code so that every attack names a real target)."""
    home = stack.home
    bob_account = _account(stack, "bob")
    service = Account.named(SERVICE_ACCOUNT)
    state_files = [str(p) for p in sorted(home.path.rglob("*"))
                   if p.is_file() and "orthanc/db" not in str(p)][:400]
    service_pids, bob_pids = [], []
    for p in psutil.process_iter(["uids", "cmdline"]):
        try:
            uid, cmd = p.info["uids"].real, " ".join(p.info["cmdline"] or [])
        except (psutil.Error, TypeError, AttributeError):
            continue
        if uid == bob_account.uid:
            bob_pids.append(p.pid)
        elif uid in (0, service.uid) and (str(home.path) in cmd or "dask-gateway" in cmd):
            service_pids.append(p.pid)
    runtime = home.runtime_dir() / str(bob_account.uid)
    bob_files = sorted(str(p) for p in runtime.iterdir())
    stack.cli("modalities", "add", "attackable", "--aet", "SCANNERF", "--host", "127.0.0.1",
              "--port", "11119", "--allow-find")
    settings = {**home.load_state(), "dicom_port": stack.run["dicom_port"]}
    yield {
        "state_dir": str(home.path), "state_files": state_files,
        "service_pids": service_pids, "bob_pids": bob_pids, "bob_uid": bob_account.uid,
        "bob_home": bob_account.home, "bob_runtime": str(runtime),
        "bob_files": [f for f in bob_files if not f.split("-")[-1].isdigit()],
        "bob_sockets": [f for f in bob_files if stat.S_ISSOCK(os.stat(f).st_mode)],
        "archive_ports": [settings["orthanc_http_port"], settings["dicom_port"]],
        "dicom_port": settings["dicom_port"], "modality_aet": "SCANNERF",
    }
    stack.cli("modalities", "remove", "attackable")


@pytest.fixture(scope="module")
def secrets(stack, bob, targets) -> dict[str, str]:
    """Every secret alice must not learn: the site's secrets, the services'
    and bob's tokens (read by root from their processes), bob's output."""
    found = {p.name: p.read_text().strip() for p in stack.home.secrets_dir.iterdir()
             if p.is_file() and p.name != "demo_logins.json"}
    for name, password in json.loads((stack.home.secrets_dir /
                                      "demo_logins.json").read_text()).items():
        found[f"{name}'s password"] = password
    for pid in targets["service_pids"] + targets["bob_pids"]:
        try:
            env = psutil.Process(pid).environ()
        except psutil.Error:
            continue
        for key in ("JUPYTERHUB_API_TOKEN", "CONFIGPROXY_AUTH_TOKEN", "JPY_API_TOKEN"):
            if env.get(key):
                found[f"{key} of {pid}"] = env[key]
    found["bob's output"] = BOB_SAYS
    assert len(found) > 8
    return found


def check(results: dict, secrets: dict, where: str) -> None:
    assert len(results) > 20, results
    through = {name: r for name, r in results.items() if r["ok"]}
    assert not through, f"from alice's {where}, these got through: {through}"
    text = json.dumps(results)
    leaked = [name for name, value in secrets.items() if value and value in text]
    assert not leaked, f"alice's {where} learned: {leaked}"
    why = " ".join(r["why"] for r in results.values())
    assert "PermissionError" in why and "ConnectionRefusedError" in why


def test_attacks_from_alices_kernel(alice, targets, secrets):
    kernel = alice.start_kernel()
    code = f"{ATTACKS}\nimport json\nprint(json.dumps(run_attacks(json.loads({json.dumps(targets)!r}))))"
    out = alice.execute(kernel["id"], code, timeout=180)
    assert out["error"] is None, out
    check(json.loads(out["stdout"].strip().splitlines()[-1]), secrets, "kernel")


def test_attacks_from_alices_job(stack, targets, secrets):
    jobs = Jobs(stack.run["jobs_url"], stack.token("alice"))
    job = jobs.submit("attack", code=ATTACKS, targets=json.dumps(targets))
    job.wait(timeout=240, progress=False)
    assert job.status == "succeeded", job.logs()
    check(json.loads(job.read("out/attacks.json")), secrets, "job")
    # the job's kernel talked to papermill over IPC, in her private runtime folder
    kernel = json.loads(job.read("out/kernel.json"))
    assert kernel["transport"] == "ipc"
    assert (kernel["uid"], kernel["umask"]) == (_account(stack, "alice").uid, "0077")
    assert kernel["ip"].startswith(f"{stack.home.runtime_dir()}/{_account(stack, 'alice').uid}/")


def test_attacks_from_alices_dask_worker(alice, targets, secrets):
    kernel = alice.start_kernel()
    code = (f"{ATTACKS}\nimport json\nclient = cluster(1)\n"
            f"result = client.submit(run_attacks, json.loads({json.dumps(targets)!r}),"
            " pure=False).result()\nclient.shutdown()\nprint(json.dumps(result))")
    out = alice.execute(kernel["id"], code, timeout=240)
    assert out["error"] is None, out
    check(json.loads(out["stdout"].strip().splitlines()[-1]), secrets, "Dask worker")


def test_a_job_cannot_make_the_service_read_for_it(stack, secrets):
    """A job whose log, progress, notebook, result and outputs are links to
    the service's secrets: the service answers as if they were not there."""
    target = stack.home.secrets_dir / "admin_service_token"
    jobs = Jobs(stack.run["jobs_url"], stack.token("alice"))
    job = jobs.submit("symlinks", secret=str(target), folder=str(stack.home.secrets_dir))
    job.wait(timeout=120, progress=False)
    assert job.status == "failed" and "signal 9" in job.reason, (job.status, job.reason)
    token = target.read_text().strip()
    answers = [job.logs(), json.dumps(job.model), json.dumps(job.artifacts())]
    for path in ("leak.txt", "folder/admin_service_token", "out/nested.txt"):
        r = jobs._raw("GET", f"jobs/{job.id}/artifacts/{path}")
        assert r.status_code == 404, path
        answers.append(r.text)
    r = jobs._raw("GET", f"jobs/{job.id}/notebook")
    assert r.status_code == 404
    answers.append(r.text)
    assert job.artifacts() == []
    for text in answers:
        assert token not in text
        assert not [n for n, v in secrets.items() if v in text]


def _kernel_facts(code_prefix=""):
    return (code_prefix + "import json, os\n"
            "def facts():\n"
            "    import os\n"
            "    umask = [l.split()[1] for l in open('/proc/self/status') if l.startswith('Umask')]\n"
            "    return {'uid': os.getuid(), 'home': os.environ['HOME'], 'umask': umask[0]}\n")


def test_alice_runs_as_herself_and_still_gets_her_work_done(stack, alice):
    """Her server, kernel, job and Dask worker run as her account (umask 077,
    a private home), and she still loads her series in each of them."""
    account = _account(stack, "alice")
    home = Path(account.home)
    assert stat.S_IMODE(home.stat().st_mode) == 0o700 and home.stat().st_uid == account.uid
    tutorials = home / "tutorials"
    assert all(p.stat().st_uid == account.uid for p in [tutorials, *tutorials.iterdir()])
    uid = demo.series("ct-small").series_uid
    kernel = alice.start_kernel()
    code = _kernel_facts() + (
        f"vol = pacs.load_series({uid!r}, progress=False)\n"
        "client = cluster(1)\n"
        f"df = map_series(lambda v, m: {{'mean': float(v.array.mean())}}, [{uid!r}])\n"
        "worker = client.submit(facts, pure=False).result()\n"
        "client.shutdown()\n"
        "print(json.dumps({'kernel': facts(), 'worker': worker, 'shape': vol.shape,\n"
        "                  'error': df['error'][0], 'mean': df['mean'][0]}))")
    out = alice.execute(kernel["id"], code, timeout=240)
    assert out["error"] is None, out
    got = json.loads(out["stdout"].strip().splitlines()[-1])
    for where in ("kernel", "worker"):
        assert got[where] == {"uid": account.uid, "home": account.home, "umask": "0077"}, where
    assert got["shape"] == [1, 128, 128] and got["error"] is None and got["mean"] is not None
    jobs = Jobs(stack.run["jobs_url"], stack.token("alice"))
    job = jobs.submit("series-info", series=[uid]).wait(timeout=180, progress=False)
    assert job.status == "succeeded", job.logs()
    # the job's process and the files it left are hers
    run = stack.home.runs_dir() / job.children()[0].id
    assert run.stat().st_uid == account.uid
    assert all(p.stat().st_uid == account.uid for p in run.rglob("*") if p.is_file())
    # the service reads them through its group, nobody else can
    assert stat.S_IMODE(run.stat().st_mode) & 0o007 == 0


def test_processes_run_as_the_right_accounts(stack, alice):
    service = Account.named(SERVICE_ACCOUNT)
    alice_account = _account(stack, "alice")
    roles = {"services.data": "-m imaginghub.hub.services.data",
             "services.jobs": "-m imaginghub.hub.services.jobs ",
             "jobs.starter": "-m imaginghub.hub.services.jobs.starter",
             "services.dask_gateway": "-m imaginghub.hub.services.dask_gateway",
             "Orthanc": "Orthanc ", "jupyterhub -f": "jupyterhub -f"}
    by_role: dict[str, set[int]] = {}
    for p in psutil.process_iter(["uids", "cmdline", "environ"]):
        try:
            cmd = " ".join(p.info["cmdline"] or []) + " "
            env = p.info["environ"] or {}
        except (psutil.Error, TypeError):
            continue
        if env.get("IMAGINGHUB_HOME") != str(stack.home.path) and str(stack.home.path) not in cmd:
            continue
        for role, mark in roles.items():
            if mark in cmd:
                by_role.setdefault(role, set()).add(p.info["uids"].real)
    assert by_role["services.data"] == {service.uid}
    assert by_role["services.jobs"] == {service.uid}
    assert by_role["Orthanc"] == {service.uid}
    # only what switches users runs as root: the hub (spawner), the job
    # starter, the Dask gateway (its backend)
    assert by_role["jupyterhub -f"] == {0}
    assert by_role["jobs.starter"] == {0}
    assert by_role["services.dask_gateway"] == {0}
    proxy = [p for p in psutil.process_iter(["uids", "cmdline"])
             if "traefik" in " ".join(p.info["cmdline"] or [])
             and str(stack.home.hub_dir) in " ".join(p.info["cmdline"] or [])]
    assert proxy and {p.info["uids"].real for p in proxy} == {service.uid}
    servers = [p for p in psutil.process_iter(["uids", "cmdline"])
               if "imaginghub.hub.singleuser" in " ".join(p.info["cmdline"] or [])
               and p.info["uids"].real == alice_account.uid]
    assert servers
    # the state directory is the service account's alone
    st = stack.home.path.stat()
    assert st.st_uid == service.uid and stat.S_IMODE(st.st_mode) == 0o700


def test_kernels_talk_over_ipc(stack, alice):
    kernel = alice.start_kernel()
    out = alice.execute(kernel["id"], "import json, ipykernel.connect as c\n"
                                      "info = c.get_connection_info(unpack=True)\n"
                                      "info.pop('key')\n"
                                      "print(json.dumps(info))")
    assert out["error"] is None, out
    info = json.loads(out["stdout"].strip())
    assert info["transport"] == "ipc"
    sockets = [f"{info['ip']}-{info[k]}" for k in ("shell_port", "iopub_port", "stdin_port",
                                                    "control_port", "hb_port")]
    for path in sockets:
        assert stat.S_ISSOCK(os.stat(path).st_mode) and len(path.encode()) < 107
    folder = Path(info["ip"]).parent
    assert stat.S_IMODE(folder.stat().st_mode) & 0o777 == 0o700  # (Jupyter adds the sticky bit)
    assert folder.stat().st_uid == _account(stack, "alice").uid


def test_her_terminal_runs_as_her(stack, alice):
    """A JupyterLab terminal is a shell of her account, umask 077."""
    import websockets

    account = _account(stack, "alice")
    term = alice.server("POST", "/terminals").json()["name"]
    url = (stack.url.replace("http://", "ws://")
           + f"/user/alice/terminals/websocket/{term}")

    async def run() -> str:
        seen = ""
        async with websockets.connect(url, additional_headers=alice.headers) as ws:
            await ws.send(json.dumps(["stdin", "echo UID=$(id -u) MASK=$(umask) DONE\r"]))
            async with asyncio.timeout(30):
                while not re.search(r"UID=\d+ MASK=\d+ DONE", seen):
                    msg = json.loads(await ws.recv())
                    if msg[0] == "stdout":
                        seen += msg[1]
        return seen

    seen = asyncio.run(run())
    assert f"UID={account.uid} MASK=0077 DONE" in seen, seen
    alice.server("DELETE", f"/terminals/{term}")


def test_links_in_her_folders_never_lead_root_astray(stack, alice):
    """Root acts in folders alice controls: it copies the tutorials into a
    new home and keeps a stopped cluster's logs. Links she left there must
    not make it touch anything else."""
    import shutil

    victim = Path("/tmp/iht/victim-" + os.urandom(4).hex())
    victim.mkdir()
    (victim / "system.conf").write_text("root's")
    (victim / "system.conf").chmod(0o644)
    try:
        # a cluster whose logs folder she swaps for a link, then stops
        kernel = alice.start_kernel()
        code = ("import os\nclient = cluster(1)\n"
                "def swap():\n"
                "    import os\n"
                "    os.rename('logs', 'logs.mine')\n"
                f"    os.symlink({str(victim)!r}, 'logs')\n"
                "    return os.getcwd()\n"
                "print(client.run_on_scheduler(swap))\nclient.shutdown()")
        out = alice.execute(kernel["id"], code, timeout=180)
        assert out["error"] is None, out
        time.sleep(3)  # the gateway cleans up after the cluster stopped
        assert (victim / "system.conf").read_text() == "root's"
        assert stat.S_IMODE((victim / "system.conf").stat().st_mode) == 0o644
        assert victim.stat().st_uid == 0 and not victim.is_symlink()
        # a new user whose tutorials folder is a link to elsewhere before the first start
        stack.cli("users", "add", "lena", "--project", "oncology")
        account = stack.home.accounts().lookup("lena")
        os.symlink(victim / "tutorials", Path(account.home) / "tutorials")
        lena = UserSession(stack.url, "lena", stack.token("lena"))
        lena.start_server()
        assert not (victim / "tutorials").exists()
        lena.hub("DELETE", "/users/lena/server")
    finally:
        shutil.rmtree(victim, ignore_errors=True)
