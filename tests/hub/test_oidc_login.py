"""Login with an identity provider: a real OpenID Connect provider process
on loopback (oidc-provider-mock, a provider meant for tests: it signs real
tokens and serves the authorize, token and userinfo endpoints) and a real
JupyterHub with imaginghub's OIDC authenticator, driven as a browser drives
them (the provider's login form, the redirects, the hub's cookie). The
provider's groups become projects; Keycloak's group paths are handled; a
name imaginghub cannot take, or a user without a project, is refused."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from imaginghub.hub.state import free_port

USERS = [
    {"sub": "u-alice", "preferred_username": "Alice",
     "groups": ["/project-oncology", "/imaginghub-admins", "/staff"]},
    {"sub": "u-bob", "preferred_username": "bob", "groups": ["/imaging/project-neuro"]},
    {"sub": "u-root", "preferred_username": "root", "groups": ["/project-oncology"]},
    {"sub": "u-carol", "preferred_username": "carol", "groups": ["/staff"]},
    {"sub": "u-erin", "preferred_username": "Erin", "groups": ["/project-neuro"]},
]


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{url}: the process exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:  # (the proxy's 404 first)
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} did not answer in {timeout} s:\n{log.read_text()[-3000:]}")


def login_settings(idp: str, hub_url: str, secret: str) -> str:
    """The lines of a hub's configuration that log in with the provider at
    ``idp`` (``secret``: the line that gives the client secret)."""
    return f"""
# by its entry-point name, as a site would choose it
c.JupyterHub.authenticator_class = "imaginghub-oidc"
a = c.ImagingOIDCAuthenticator
a.client_id = "imaginghub"
{secret}
a.authorize_url = "{idp}/oauth2/authorize"
a.token_url = "{idp}/oauth2/token"
a.userdata_url = "{idp}/userinfo"
a.oauth_callback_url = "{hub_url}/hub/oauth_callback"
a.scope = ["openid", "profile"]
a.username_claim = "preferred_username"
"""


def start_provider(tmp: Path) -> tuple[str, subprocess.Popen, Path]:
    """The provider process with USERS: (its URL, the process, its log)."""
    port = free_port()
    log = tmp / "idp.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "oidc_provider_mock", "-p", str(port),
         *[a for u in USERS for a in ("--user-claims", json.dumps(u))]],
        stdout=log.open("w"), stderr=subprocess.STDOUT)
    return f"http://127.0.0.1:{port}", proc, log


@pytest.fixture(scope="module")
def oidc_hub(tmp_path_factory):
    """The provider, and a hub that logs in with it."""
    tmp = tmp_path_factory.mktemp("oidc")
    hub_port, hub_api, proxy_api = (free_port() for _ in range(3))
    idp, idp_proc, idp_log = start_provider(tmp)
    procs = [idp_proc]
    token = secrets.token_hex(16)
    hub_url = f"http://127.0.0.1:{hub_port}"
    (tmp / "jupyterhub_config.py").write_text(f"""
c = get_config()  # noqa
c.JupyterHub.bind_url = "{hub_url}"
c.JupyterHub.hub_bind_url = "http://127.0.0.1:{hub_api}"
c.JupyterHub.db_url = "sqlite:///{tmp}/hub.sqlite"
c.JupyterHub.cookie_secret_file = "{tmp}/cookie_secret"
c.JupyterHub.proxy_class = "imaginghub.hub.proxy.HubProxy"
c.TraefikProxy.traefik_api_url = "http://127.0.0.1:{proxy_api}"
c.TraefikProxy.traefik_api_username = "jupyterhub"
c.TraefikProxy.traefik_api_password = "{secrets.token_hex(8)}"
c.TraefikProxy.static_config_file = "{tmp}/traefik.toml"
c.TraefikFileProviderProxy.dynamic_config_file = "{tmp}/routes.toml"
{login_settings(idp, hub_url, 'a.client_secret = "not-checked-by-this-provider"')}
a.admin_groups = {{"imaginghub-admins"}}
c.JupyterHub.services = [{{"name": "check", "api_token": "{token}"}}]
c.JupyterHub.load_roles = [{{"name": "check", "services": ["check"],
                             "scopes": ["read:users", "read:groups", "admin:users"]}}]
""")
    hub_log = tmp / "hub.log"
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "jupyterhub", "-f", str(tmp / "jupyterhub_config.py")],
        cwd=tmp, stdout=hub_log.open("w"), stderr=subprocess.STDOUT,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}))
    try:
        wait_http(f"{idp}/.well-known/openid-configuration", procs[0], idp_log)
        wait_http(f"{hub_url}/hub/api", procs[1], hub_log)
        yield {"hub": hub_url, "idp": idp, "token": token, "log": hub_log}
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()


def login(hub: str, sub: str) -> httpx.Response:
    """A browser's login: the hub's login button, the provider's form (the
    user is chosen by subject), and the way back to the hub."""
    with httpx.Client(follow_redirects=True, timeout=30) as browser:
        form = browser.get(f"{hub}/hub/oauth_login")
        assert form.status_code == 200 and 'name="sub"' in form.text, form.text[:500]
        action = re.search(r'<form[^>]*action="([^"]*)"', form.text)
        target = httpx.URL(str(form.url)).join(action.group(1).replace("&amp;", "&")) \
            if action and action.group(1) else form.url
        back = browser.post(target, data={"sub": sub}, follow_redirects=False)
        assert back.status_code == 302 and "/hub/oauth_callback" in back.headers["location"]
        # the hub's answer to the provider's redirect (not what it leads to:
        # there is no server to spawn here)
        done = browser.get(back.headers["location"], follow_redirects=False)
        done.logged_in = "jupyterhub-hub-login" in browser.cookies
        return done


def user(hub: dict, name: str) -> httpx.Response:
    return httpx.get(f"{hub['hub']}/hub/api/users/{name}",
                     headers={"Authorization": f"token {hub['token']}"})


def test_a_provider_user_logs_in_with_projects_from_groups(oidc_hub):
    done = login(oidc_hub["hub"], "u-alice")
    assert done.status_code == 302 and done.logged_in, done.text[:500]
    assert "login" not in done.headers["location"]
    alice = user(oidc_hub, "alice").json()  # lower-cased
    assert alice["admin"] is True  # /imaginghub-admins
    # (the hub lists groups in the order it added them)
    assert sorted(alice["groups"]) == ["imaginghub-admins", "project-oncology"]  # not /staff
    assert login(oidc_hub["hub"], "u-bob").logged_in
    got = user(oidc_hub, "bob").json()
    assert sorted(got["groups"]) == ["project-neuro"] and got["admin"] is False
    # the provider is the source of the projects: bob moved from neuro to
    # oncology there has oncology only at his next login
    moved = {k: v for k, v in USERS[1].items() if k != "sub"}
    moved["groups"] = ["/project-oncology"]
    assert httpx.put(f"{oidc_hub['idp']}/users/u-bob", json=moved).status_code == 204
    assert login(oidc_hub["hub"], "u-bob").logged_in
    assert sorted(user(oidc_hub, "bob").json()["groups"]) == ["project-oncology"]


@pytest.mark.parametrize("sub, name", [("u-root", "root"), ("u-carol", "carol")])
def test_refused_logins(oidc_hub, sub, name):
    got = login(oidc_hub["hub"], sub)
    assert got.status_code == 403 and not got.logged_in, (got.status_code, got.text[:300])
    assert user(oidc_hub, name).status_code == 404  # no hub user was made


def test_an_embedded_site_logs_in_with_its_provider(tmp_path_factory):
    """`imaginghub up` with the site's provider (imaginghub_config.py, the
    client secret in a file of root's): a user the site's registry does not
    know logs in there, gets the projects of her provider groups, sees those
    projects' series and no others, and her server runs as a Unix account
    of her own."""
    from conftest import (MULTI_USER, RunningStack, new_home, private_folder, remove_site,
                          start_stack, stop_stack)

    from imaginghub.hub import demo
    from imaginghub.kernels.dicomweb import PACS

    tmp = tmp_path_factory.mktemp("oidc-embedded")
    idp, idp_proc, idp_log = start_provider(tmp)
    secret = private_folder("oidcsec") / "client-secret"
    secret.write_text("the-sites-client-secret\n")
    os.chmod(secret, 0o600)
    port = free_port()
    hub_url = f"http://127.0.0.1:{port}"
    home = new_home("oidc", extra=login_settings(idp, hub_url,
                                                 f'a.client_secret_file = "{secret}"'))
    proc = output = None
    try:
        wait_http(f"{idp}/.well-known/openid-configuration", idp_proc, idp_log)
        proc, output = start_stack(home, "--demo", port=port)
        assert proc.poll() is None, output.read_text()
        s = RunningStack(home, proc, output)
        assert "erin" not in s.cli("users", "list").stdout  # not in the site's registry
        done = login(hub_url, "u-erin")
        assert done.status_code == 302 and done.logged_in, done.text[:500]
        admin = {"Authorization": f"token {s.home.secret('admin_service_token')}"}
        erin = httpx.get(f"{hub_url}/hub/api/users/erin", headers=admin, timeout=30).json()
        assert erin["groups"] == ["project-neuro"]
        pacs = PACS(s.run["gateway_url"], token=s.token("erin"))
        def found(key: str) -> bool:
            uid = demo.series(key).series_uid
            return bool(pacs.search_for_series(search_filters={"SeriesInstanceUID": uid}))

        assert found("mr-head") and not found("ct-head")  # neuro's, not oncology's
        # her server: spawned as a Unix account of her own
        started = httpx.post(f"{hub_url}/hub/api/users/erin/server", headers=admin,
                             timeout=60)
        assert started.status_code in (201, 202), started.text
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            model = httpx.get(f"{hub_url}/hub/api/users/erin", headers=admin,
                              timeout=30).json()
            if model["servers"].get("", {}).get("ready"):
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"erin's server did not start:\n{output.read_text()[-3000:]}")
        if MULTI_USER:
            account = s.home.accounts().lookup("erin")
            assert account is not None and account.name.endswith("erin")
        assert "the-sites-client-secret" not in (home / "logs" / "jupyterhub.log").read_text()
    finally:
        if proc is not None:
            assert stop_stack(proc) == 0, output.read_text()
        remove_site(home)
        idp_proc.terminate()
        idp_proc.wait(20)


def test_the_client_secret_file_is_checked(tmp_path):
    from imaginghub.hub.errors import ConfigError
    from imaginghub.hub.oidc import ImagingOIDCAuthenticator

    f = tmp_path / "secret"
    f.write_text("s3cret-value\n")
    os.chmod(f, 0o600)
    assert ImagingOIDCAuthenticator(client_secret_file=str(f)).client_secret == "s3cret-value"
    os.chmod(f, 0o644)
    with pytest.raises(ConfigError, match="open to every account"):
        ImagingOIDCAuthenticator(client_secret_file=str(f)).client_secret
    with pytest.raises(ConfigError, match="cannot be read"):
        ImagingOIDCAuthenticator(client_secret_file=str(tmp_path / "none")).client_secret
