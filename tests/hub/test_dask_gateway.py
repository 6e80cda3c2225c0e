"""Dask Gateway as the hub service ``dask-gateway`` of the real stack: its
configuration, clusters' lifecycle, users kept apart, limits, idle timeout,
and ``cluster()`` in a user's own server."""

from __future__ import annotations

import json
import os
import stat
import time
import warnings

import httpx
import psutil
import pytest
from hubclient import UserSession

from imaginghub.hub.services.dask_gateway import client_environment
from imaginghub.hub.services.dask_gateway.limits import DaskLimits
from imaginghub.kernels.cluster import ClusterError, cluster, gateway


@pytest.fixture(scope="module")
def env(stack):
    """dask-gateway's settings as the hub gives them to user servers."""
    port = stack.home.load_state()["dask_gateway_port"]
    return client_environment(stack.url, port)


@pytest.fixture(scope="module")
def tokens(stack):
    return {"alice": stack.token("alice"), "bob": stack.token("bob")}


@pytest.fixture
def as_user(monkeypatch, env, tokens):
    """Set the environment of a kernel of ``user``; returns their Gateway."""
    opened = []

    def become(user):
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        monkeypatch.setenv("IMAGINGHUB_DICOMWEB_TOKEN", tokens[user])
        monkeypatch.delenv("JUPYTERHUB_API_TOKEN", raising=False)
        g = gateway()
        opened.append(g)
        return g

    yield become
    for g in opened:  # nothing a test made outlives it
        for report in g.list_clusters():
            g.stop_cluster(report.name)
        g.close()


def cluster_processes(name: str) -> list[psutil.Process]:
    """The scheduler and worker processes of the gateway cluster ``name``."""
    found = []
    for p in psutil.process_iter(["pid", "environ"]):
        try:
            if (p.info["environ"] or {}).get("DASK_GATEWAY_CLUSTER_NAME") == name:
                found.append(p)
        except psutil.Error:
            continue
    return found


def wait_until(check, timeout=30.0, every=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"not true within {timeout} s: {check}")


def test_config_is_written_readable_and_holds_no_secret(stack):
    home = stack.home
    text = (home.hub_dir / "dask_gateway_config.py").read_text()
    secrets = {p.name: p.read_text().strip() for p in home.secrets_dir.iterdir() if p.is_file()}
    assert "dask_gateway_proxy_token" in secrets
    for name, value in secrets.items():
        assert value not in text, f"secret {name} written in the gateway's config"
    assert 'secret("dask_gateway_proxy_token")' in text
    token_file = home.secrets_dir / "dask_gateway_proxy_token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    # on loopback, routed by the hub, authenticated by JupyterHub, limits from settings
    port = home.load_state()["dask_gateway_port"]
    assert f'c.Proxy.address = "127.0.0.1:{port}"' in text
    assert "c.Proxy.prefix = '/services/dask-gateway'" in text
    assert "dask_gateway_server.auth.JupyterHubAuthenticator" in text
    assert f"LIMITS = {DaskLimits().as_dict()!r}" in text
    hub = (home.hub_dir / "jupyterhub_config.py").read_text()
    assert '"name": "dask-gateway"' in hub and f"http://127.0.0.1:{port}" in hub
    assert "access:services!service=dask-gateway" in hub


def test_cluster_lifecycle_and_dashboard_through_the_hub(stack, as_user):
    g = as_user("alice")
    gc = g.new_cluster(workers=1)
    try:
        reports = {r.name: r for r in g.list_clusters()}
        assert reports[gc.name].status.name == "RUNNING"
        client = gc.get_client(set_as_default=False)
        client.wait_for_workers(1, timeout=60)
        gc.scale(2)
        client.wait_for_workers(2, timeout=60)
        assert client.submit(sum, [1, 2, 3]).result() == 6
        assert len(client.scheduler_info()["workers"]) == 2
        assert len(cluster_processes(gc.name)) >= 3  # scheduler, 2 workers (and nannies)
        # dask-gateway-server 2026.3.0 would chown every character of the
        # certificate's path, "/" included, to the user (backend.py)
        assert os.stat("/").st_uid == 0 and os.stat("/tmp").st_uid == 0
        assert stat.S_IMODE(os.stat("/tmp").st_mode) == 0o1777
        gc.scale(1)
        wait_until(lambda: len(client.scheduler_info()["workers"]) == 1)
        # the dashboard through the hub's proxy, at the link the cluster gives
        assert gc.dashboard_link.startswith("/services/dask-gateway/clusters/")
        r = httpx.get(stack.url + gc.dashboard_link, follow_redirects=True, timeout=30)
        assert r.status_code == 200 and "Dask" in r.text and "bokeh" in r.text.lower()
        client.close()
    finally:
        gc.shutdown()
    assert gc.name not in {r.name for r in g.list_clusters()}
    wait_until(lambda: not cluster_processes(gc.name))
    # its logs are kept in the state directory
    kept = stack.home.path / "dask-gateway" / "logs" / gc.name
    wait_until(lambda: (kept / "scheduler.log").exists())
    assert stat.S_IMODE((kept / "scheduler.log").stat().st_mode) == 0o600


def test_a_user_cannot_see_use_scale_or_stop_another_users_cluster(as_user):
    alice = as_user("alice")
    theirs = alice.new_cluster(workers=1)
    alice_client = theirs.get_client(set_as_default=False)
    alice_client.wait_for_workers(1, timeout=60)
    bob = as_user("bob")
    assert theirs.name not in {r.name for r in bob.list_clusters()}
    for attempt in (lambda: bob.connect(theirs.name),
                    lambda: bob.scale_cluster(theirs.name, 3),
                    lambda: bob.stop_cluster(theirs.name)):
        with pytest.raises(Exception) as e:
            attempt()
        assert "403" in str(e.value) or "Forbidden" in str(e.value)
    del e
    # bob's own cluster's TLS credentials do not open alice's scheduler
    from distributed import Client

    own = bob.new_cluster()
    try:
        with pytest.raises(OSError):  # refused in the TLS handshake, until the timeout
            Client(theirs.scheduler_address, security=own.security, timeout=2,
                   set_as_default=False)
        # (the same connection with alice's credentials works)
        Client(theirs.scheduler_address, security=theirs.security, timeout=10,
               set_as_default=False).close()
    finally:
        own.shutdown()
    # alice's cluster is untouched
    assert {r.name: r for r in alice.list_clusters()}[theirs.name].status.name == "RUNNING"
    assert len(alice_client.scheduler_info()["workers"]) == 1
    assert alice_client.submit(lambda: "still mine").result() == "still mine"
    alice_client.close()
    theirs.shutdown()


def test_limits_are_enforced_with_a_clear_message(as_user):
    as_user("alice")
    lim = DaskLimits()
    with pytest.raises(ClusterError, match=rf"workers=9 is over this hub's limit for you: "
                                           rf"at most {lim.max_workers_per_cluster}"):
        cluster(9)
    with pytest.raises(ClusterError, match=r"worker_memory=64 is over .* at most 4"):
        cluster(1, worker_memory=64)
    with pytest.raises(ClusterError, match=r"4 workers of 4 GiB need 16 GiB: over this hub's "
                                           r"limit for you of 8 GiB per cluster"):
        cluster(4, worker_memory=4)
    with pytest.raises(ClusterError, match=r"unknown cluster option\(s\) \['colour'\]"):
        cluster(1, colour="blue")
    # at most max_clusters_per_user at once; then a clear refusal
    g = as_user("alice")
    made = [g.new_cluster() for _ in range(lim.max_clusters_per_user)]
    with pytest.raises(ClusterError, match=r"alice has 2 Dask clusters already, the most this "
                                           r"hub allows per user \(2\)"):
        cluster(0)
    # bob is not counted against alice
    as_user("bob").new_cluster().shutdown()
    # scaling past the limit is capped, and said
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        made[0].scale(50)
    assert any("exceed resource limit of 4 workers" in str(w.message) for w in said)
    for gc in made:
        gc.shutdown()


def test_idle_cluster_shuts_down(as_user):
    g = as_user("alice")
    with pytest.raises(ValueError, match="idle_timeout=7200 is over"):
        g.submit(idle_timeout=7200)  # longer than the site allows
    gc = g.new_cluster(idle_timeout=2)
    name = gc.name
    wait_until(lambda: name not in {r.name for r in g.list_clusters()}, timeout=30)
    wait_until(lambda: not cluster_processes(name))
    gc.close()


def test_cluster_in_a_users_own_server(stack, tokens):
    """In bob's server the hub's environment and server token are enough."""
    bob = UserSession(stack.url, "bob", tokens["bob"])
    bob.start_server()
    kernel = bob.start_kernel()
    code = """
import json, os
client = cluster(1)
report = {"workers": len(client.scheduler_info()["workers"]), "name": client.cluster.name,
          "link": client.dashboard_link,
          "has_dicomweb_token": "IMAGINGHUB_DICOMWEB_TOKEN" in os.environ,
          "home": client.run(lambda: os.environ["HOME"])}
client.shutdown()
print(json.dumps(report))
"""
    out = bob.execute(kernel["id"], code, timeout=120)
    assert out["error"] is None, out
    got = json.loads(out["stdout"].strip().splitlines()[-1])
    assert got["workers"] == 1 and not got["has_dicomweb_token"]  # the server's own token
    assert got["link"] == f"/services/dask-gateway/clusters/{got['name']}/status"
    assert set(got["home"].values()) == {str(stack.user_home("bob"))}
    assert f"Dask cluster {got['name']}: 1 worker, ready in" in out["stdout"]
    bob.hub("DELETE", "/users/bob/server")


def test_per_user_limits_from_settings():
    """c.DaskLimits and its user_limits become each user's options and
    bounds (no stack needed: the functions the config uses)."""
    from dask_gateway_server.models import User
    from traitlets.config import Config

    from imaginghub.hub.services.dask_gateway import site_limits
    from imaginghub.hub.services.dask_gateway.backend import cluster_options

    alice = {"max_workers_per_cluster": 8, "max_memory_gb_per_cluster": 32}
    limits, per_user = site_limits(Config({"DaskLimits": {
        "max_workers_per_cluster": 3, "idle_timeout_seconds": 600,
        "user_limits": {"alice": alice}}}))
    options = cluster_options(limits, per_user)
    spec = {u: {f["field"]: f for f in options(User(u)).get_specification()}
            for u in ("alice", "bob")}
    assert spec["alice"]["workers"]["spec"]["max"] == 8
    assert spec["bob"]["workers"]["spec"]["max"] == 3
    assert spec["bob"]["idle_timeout"]["spec"]["max"] == 600
    bob = options(User("bob"))
    config = bob.get_configuration(bob.parse_options({"workers": 2, "worker_memory": 3}),
                                   User("bob"))
    assert config["worker_memory"] == 3 * 2**30 and config["workers"] == 2
    assert config["cluster_max_workers"] == 2  # 8 GiB per cluster / 3 GiB per worker
    assert config["idle_timeout"] == 600
    with pytest.raises(ValueError, match="workers=4 is over this hub's limit for you: at most 3"):
        bob.parse_options({"workers": 4})
    with pytest.raises(ValueError, match=r"unknown Dask limits \['max_gpus'\]"):
        site_limits(Config({"DaskLimits": {"user_limits": {"bob": {"max_gpus": 1}}}}))
