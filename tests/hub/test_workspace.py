"""End to end on the real stack: a demo user logs in, starts a server, and a
kernel of the default kernelspec reads the archive."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import psutil
import pytest
from hubclient import UserSession

from conftest import AUTH_CACHE

from imaginghub.hub import demo


@pytest.fixture(scope="module")
def alice(stack):
    session = UserSession(stack.url, "alice", stack.token("alice"))
    session.start_server()
    return session


def test_kernel_reads_the_archive(stack, alice):
    kernel = alice.start_kernel()  # no name: the server's default kernelspec
    assert kernel["name"] == "imaging"
    specs = alice.server("GET", "/kernelspecs").json()
    assert specs["default"] == "imaging"
    assert specs["kernelspecs"]["imaging"]["spec"]["display_name"] == "Imaging (Python 3)"

    uid = demo.series("ct-head").series_uid
    code = f"""
import json
found = pacs.search_for_series(search_filters={{"PatientName": "Demo*"}})
vol = pacs.load_series({uid!r}, progress=False)
k, j, i = 150, 256, 256
print(json.dumps({{
    "n_series": len(found),
    "shape": vol.shape,
    "spacing": vol.spacing,
    "origin": vol.origin,
    "corner": vol.array[:, 0, 0].tolist(),
    "centre": float(vol.array[k, j, i]),
}}))
"""
    out = alice.execute(kernel["id"], code)
    assert out["error"] is None, out
    got = json.loads(out["stdout"])
    # through the data service: only the series of alice's project
    assert got["n_series"] == sum(s.project == "oncology" for s in demo.SERIES)
    assert got["shape"] == [300, 512, 512]
    assert got["spacing"] == pytest.approx([0.7, 0.7, 1.25])
    assert got["origin"] == pytest.approx([-179.3, -179.3, -200.0])
    # Each slice stores its InstanceNumber at [0, 0]: slices come back in order,
    # in Hounsfield units (RescaleIntercept -1024).
    assert got["corner"] == [n - 1024 for n in range(1, 301)]
    expected = demo.built_slice("ct-head", 150)[256, 256] - 1024
    assert got["centre"] == expected


def test_preload_needs_no_import_and_hides_credentials_in_repr(stack, alice):
    kernel = alice.start_kernel()
    code = ("import os; print(repr(pacs)); print(type(pacs).__module__); "
            "print(sorted(os.environ.items()))")
    out = alice.execute(kernel["id"], code)
    assert out["error"] is None, out
    assert stack.run["gateway_url"] in out["stdout"]
    # the kernel holds no archive credentials at all, only its hub token
    assert stack.home.secret("archive_password") not in out["stdout"]
    assert "IMAGINGHUB_DICOMWEB_PASSWORD" not in out["stdout"]
    assert stack.run["archive_url"] not in out["stdout"]
    assert "imaginghub.kernels.dicomweb" in out["stdout"]


def _login(url: str, username: str, password: str) -> httpx.Response:
    with httpx.Client(base_url=url, follow_redirects=False, timeout=30) as c:
        page = c.get("/hub/login")
        xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page.text)
        data = {"username": username, "password": password}
        if xsrf:
            data["_xsrf"] = xsrf.group(1)
        return c.post("/hub/login", data=data)


def test_password_login(stack):
    logins = json.loads((stack.home.secrets_dir / "demo_logins.json").read_text())
    ok = _login(stack.url, "alice", logins["alice"])
    assert ok.status_code == 302, ok.text[:500]
    assert any(k.startswith("jupyterhub-session-id") or k == "jupyterhub-hub-login"
               for k in ok.cookies)
    bad = _login(stack.url, "alice", logins["alice"] + "x")
    assert bad.status_code == 403
    assert "jupyterhub-hub-login" not in bad.cookies
    nobody = _login(stack.url, "mallory", "whatever")
    assert nobody.status_code == 403


def test_users_and_projects(stack):
    admin = UserSession(stack.url, "admin", stack.token("admin"))
    groups = {g["name"]: g["users"] for g in admin.hub("GET", "/groups").json()}
    assert "alice" in groups["project-oncology"] and "bob" not in groups["project-oncology"]
    assert "bob" in groups["project-neuro"] and "alice" not in groups["project-neuro"]

    out = stack.cli("users", "add", "carol", "--project", "oncology", "--project", "neuro").stdout
    password = re.search(r"password: (\S+)", out).group(1)
    groups = {g["name"]: g["users"] for g in admin.hub("GET", "/groups").json()}
    assert "carol" in groups["project-oncology"] and "carol" in groups["project-neuro"]
    assert _login(stack.url, "carol", password).status_code == 302

    listing = stack.cli("users", "list").stdout
    assert re.search(r"^carol\s+user\s+neuro, oncology$", listing, re.M), listing
    assert re.search(r"^admin\s+admin", listing, re.M), listing

    bad = stack.cli("users", "add", "Bad Name", check=False)
    assert bad.returncode != 0 and "invalid user name" in bad.stderr

    carol = UserSession(stack.url, "carol", stack.token("carol"))
    assert carol.hub("GET", "/user").json()["name"] == "carol"
    assert stack.cli("token", "nobody", check=False).returncode != 0


def test_state_is_private_and_config_is_safe(stack):
    home = stack.home.path
    for name in ("archive_password", "jupyterhub_cookie_secret", "proxy_auth_token",
                 "admin_service_token", "demo_logins.json"):
        assert (home / "secrets" / name).stat().st_mode & 0o777 == 0o600, name
    for path in (home / "users.json", home / "orthanc" / "orthanc.json", home / "run.json"):
        assert path.stat().st_mode & 0o777 == 0o600, path

    config = json.loads((home / "orthanc" / "orthanc.json").read_text())
    assert config["RemoteAccessAllowed"] is False
    assert config["AuthenticationEnabled"] is True
    assert config["HttpCompressionEnabled"] is False
    assert config["DicomAlwaysAllowStore"] is False
    assert config["DicomWeb"]["Host"].startswith("127.0.0.1:")

    # a user's token, used through the proxy, is not logged either
    bob_token = stack.token("bob")
    bob = UserSession(stack.url, "bob", bob_token)
    assert bob.hub("GET", "/user").status_code == 200

    hub_config = (home / "hub" / "jupyterhub_config.py").read_text()
    assert '"http://127.0.0.1:' in hub_config
    for secret in ("archive_password", "jupyterhub_cookie_secret", "proxy_auth_token",
                   "admin_service_token"):
        value = stack.home.secret(secret)
        assert value not in hub_config
        for log in (home / "logs").iterdir():
            assert value not in log.read_text(errors="replace"), (secret, log)
    logins = json.loads((home / "secrets" / "demo_logins.json").read_text())
    for log in (home / "logs").iterdir():
        text = log.read_text(errors="replace")
        assert logins["alice"] not in text
        assert bob_token not in text
        assert "Demo^" not in text  # no patient names


def test_archive_needs_credentials(stack):
    url = stack.run["archive_url"]
    assert httpx.get(f"{url}/dicom-web/studies", timeout=10).status_code == 401
    archive = stack.archive()
    with archive.rest() as c:
        assert c.get("/dicom-web/studies").status_code == 200


def test_dimse_store_only_from_known_modalities(stack):
    """An unknown calling AE cannot C-STORE: refused at association or per
    store, and nothing reaches the archive."""
    from pydicom import dcmread
    from pynetdicom import AE

    ds = dcmread(demo.to_bytes_path(demo.series("ct-small")))
    ds.SOPInstanceUID = demo.uid("instance", "dimse-intruder")
    ae = AE(ae_title="STRANGER")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", stack.run["dicom_port"], ae_title="IMAGINGHUB")
    status = None
    if assoc.is_established:
        status = assoc.send_c_store(ds)
        assoc.release()
    # refused: no association, an aborted one (empty status) or a failure status
    assert status is None or status.get("Status", 0xFFFF) != 0x0000
    with stack.archive().rest() as c:
        found = c.post("/tools/find", json={"Level": "Instance",
                                            "Query": {"SOPInstanceUID": ds.SOPInstanceUID}})
        assert found.json() == []


def test_demo_data_command_is_idempotent(stack):
    with stack.archive().rest() as c:
        before = c.get("/statistics").json()["CountInstances"]
    assert before >= demo.count_instances()  # other tests may have stored more
    out = stack.cli("demo-data").stdout
    assert f"stored {demo.count_instances()}" in out
    with stack.archive().rest() as c:
        assert c.get("/statistics").json()["CountInstances"] == before


def test_up_refuses_demo_series_it_does_not_know(stack):
    r = stack.cli("up", "--demo", "--demo-series", "mr-head,nope", check=False)
    assert r.returncode != 0
    assert "no demo series nope; the demo series are" in r.stderr and "mr-head-seg" in r.stderr


def test_a_stopped_servers_token_stops_working(stack, alice):
    """The kernel's token (the server's) reaches the gateway while the server
    runs, and not once it is stopped (after the gateway's 10 s cache)."""
    import time

    kernel = alice.start_kernel()
    out = alice.execute(kernel["id"], "import os; print(os.environ['JUPYTERHUB_API_TOKEN'])")
    server_token = out["stdout"].strip()
    gateway = stack.run["gateway_url"] + "/series"
    headers = {"Authorization": f"token {server_token}"}
    assert httpx.get(gateway, headers=headers, timeout=30).status_code == 200
    assert alice.hub("DELETE", "/users/alice/server").status_code in (202, 204)
    deadline = time.monotonic() + 60
    while alice.hub("GET", "/users/alice").json().get("servers"):
        assert time.monotonic() < deadline, "the server did not stop"
        time.sleep(0.5)
    time.sleep(AUTH_CACHE + 1)  # the gateway trusts a checked token for a while
    assert httpx.get(gateway, headers=headers, timeout=30).status_code == 401


def test_hub_names_that_cannot_be_accounts_are_refused(stack):
    """In multi-user mode every hub user gets an account PREFIX+NAME: names
    too long for useradd, system accounts and accounts imaginghub did not
    make are refused before anything is written."""
    import pwd
    import subprocess

    if not stack.home.multi_user:
        pytest.skip("accounts exist in multi-user mode only")
    prefix = stack.home.site.account_prefix
    long_name = "a" * (33 - len(prefix))
    r = stack.cli("users", "add", long_name, check=False)
    assert r.returncode == 1 and "too long for a Unix account" in r.stderr
    assert "at most 32" in r.stderr and prefix in r.stderr
    assert stack.cli("users", "add", "b" * (32 - len(prefix))).returncode == 0
    foreign = prefix + "mallory"
    subprocess.run(["useradd", "--no-create-home", "--comment", "not imaginghub's", foreign],
                   check=True)
    try:
        r = stack.cli("users", "add", "mallory", check=False)
        assert r.returncode == 1 and "imaginghub did not make" in r.stderr
    finally:
        subprocess.run(["userdel", foreign], check=True)
    listing = stack.cli("users", "list").stdout
    assert long_name not in listing and "mallory" not in listing
    # with no prefix, the system's own accounts are refused by name
    from imaginghub.hub.accounts import AccountError, Accounts

    bare = Accounts("test", prefix="")
    for name in ("root", "orthanc", "postgres", "imaginghub", "daemon"):
        with pytest.raises(AccountError, match="system account|imaginghub did not make"):
            bare.name(name)
    assert pwd.getpwnam(prefix + "b" * (32 - len(prefix)))


def test_removing_a_user_locks_their_account_and_keeps_their_home(stack):
    import subprocess

    if not stack.home.multi_user:
        pytest.skip("accounts exist in multi-user mode only")
    out = stack.cli("users", "add", "zed", "--project", "oncology").stdout
    password = re.search(r"password: (\S+)", out).group(1)
    account = stack.home.accounts().lookup("zed")
    assert account is not None and f"Unix account: {account.name}" in out
    zed = UserSession(stack.url, "zed", stack.token("zed"))
    zed.start_server()
    (Path(account.home) / "notes.txt").write_text("mine")
    out = stack.cli("users", "remove", "zed").stdout
    assert f"locked the Unix account {account.name}" in out and account.home in out
    from imaginghub.hub.accounts import locked

    assert locked(account.name)
    shadow = subprocess.run(["getent", "shadow", account.name], capture_output=True,
                            text=True).stdout.split(":")
    assert shadow[1].startswith("!") and shadow[7] == "1"  # no password, expired
    assert (Path(account.home) / "notes.txt").read_text() == "mine"
    assert not [p for p in psutil.process_iter(["uids"]) if p.info["uids"].real == account.uid]
    assert "zed" not in stack.cli("users", "list").stdout
    assert _login(stack.url, "zed", password).status_code == 403
    r = httpx.get(f"{stack.run['hub_api']}/users/zed", timeout=30, headers={
        "Authorization": f"token {stack.home.secret('admin_service_token')}"})
    assert r.status_code == 404
    # added again later: the same account, unlocked, the home as it was
    stack.cli("users", "add", "zed")
    again = stack.home.accounts().lookup("zed")
    assert again.uid == account.uid
    assert not locked(account.name)
    assert (Path(account.home) / "notes.txt").exists()


def test_up_prints_only_its_own_lines(stack):
    """The session's stack was started with --demo on a fresh home: what it
    printed is its progress, the address and the logins, and no library's
    INFO or DEBUG line (highdicom's, alembic's: they go to the log files)."""
    text = stack.output.read_text()
    lines = [line for line in re.split(r"[\r\n]+", text) if line.strip()]
    foreign = [line for line in lines
               if re.search(r"\b(INFO|DEBUG)\b", line) and " imaginghub" not in line]
    assert not foreign, foreign
    assert any(line.startswith("imaginghub is running at") for line in lines)
    assert any("demo data" in line for line in lines)  # its progress
