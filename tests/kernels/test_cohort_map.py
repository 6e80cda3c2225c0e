"""``map_series`` and ``Cohort.map`` on a real gateway cluster of the demo
stack: results equal a serial run, a function error stays in its row, a
worker killed mid-map does not lose series, transient failures are retried,
no token reaches a log; and the LocalCluster fallback."""

from __future__ import annotations

import os
import re
import signal
import threading
import time

import numpy as np
import pytest

from imaginghub.hub import demo
from imaginghub.hub.services.dask_gateway import client_environment
from imaginghub.kernels import cluster as cluster_mod
from imaginghub.kernels import mapping
from imaginghub.kernels.catalog import Catalog
from imaginghub.kernels.cluster import cluster
from imaginghub.kernels.mapping import map_series
from imaginghub.kernels.dicomweb import PACS

# small series of project oncology (alice): volumes, single slices, a SEG,
# and two that are not volumes (no geometry: NM, a secondary capture)
KEYS = ["ct-head-reversed", "ct-slice", "ct-slice-j2k", "ct-small", "ct-enhanced",
        "nm-jpeg-lossless", "sc-jpeg-baseline", "seg-liver"]
UIDS = [demo.series(k).series_uid for k in KEYS]
NOT_VOLUMES = {demo.series(k).series_uid for k in ("nm-jpeg-lossless", "sc-jpeg-baseline")}


def measure(volume, meta):
    """A deterministic per-series result (module level: pickled by reference)."""
    a = volume.array
    return {"modality": meta["Modality"], "slices": int(a.shape[0]), "mean": float(a.mean()),
            "p90": float(np.percentile(a, 90)), "spacing_z": float(volume.spacing[2])}


@pytest.fixture(scope="module")
def alice(stack):
    """A kernel's environment for alice: the gateway, the data service, her token."""
    token = stack.token("alice")
    with pytest.MonkeyPatch.context() as mp:
        env = client_environment(stack.url, stack.home.load_state()["dask_gateway_port"])
        for k, v in env.items():
            mp.setenv(k, v)
        mp.setenv("IMAGINGHUB_DICOMWEB_URL", stack.run["gateway_url"])
        mp.setenv("IMAGINGHUB_DICOMWEB_TOKEN", token)
        mp.setenv("IMAGINGHUB_CACHE_DIR", "off")
        mp.delenv("JUPYTERHUB_API_TOKEN", raising=False)
        mp.delenv("IMAGINGHUB_DICOMWEB_USER", raising=False)
        yield token


@pytest.fixture(scope="module")
def client(alice):
    c = cluster(2)
    yield c
    c.shutdown()


@pytest.fixture(scope="module")
def serial(stack, alice):
    """The same computation, one series after the other in this process."""
    pacs = PACS(stack.run["gateway_url"], token=alice)
    out = {}
    for uid in UIDS:
        try:
            vol = pacs.load_series(uid, progress=False)
        except Exception as e:
            out[uid] = type(e).__name__
            continue
        out[uid] = measure(vol, {"series_uid": uid, **vol.metadata})
    return out


def test_map_equals_a_serial_run(client, serial):
    df = map_series(measure, UIDS, progress=False)
    assert list(df["series_uid"]) == UIDS  # one row per series, in order
    assert list(df.columns) == ["series_uid", "modality", "slices", "mean", "p90", "spacing_z",
                                "error"]
    for row in df.to_dict("records"):
        expected = serial[row["series_uid"]]
        if row["series_uid"] in NOT_VOLUMES:
            assert isinstance(expected, str)
            assert row["error"].startswith(f"loading the series: {expected}:")
            continue
        assert row["error"] is None
        assert {k: row[k] for k in expected} == expected
    assert (df["error"].isna()).sum() == len(UIDS) - len(NOT_VOLUMES)


def test_a_function_error_stays_in_its_row(client):
    bad = demo.series("ct-small").series_uid

    def picky(volume, meta):
        if meta["series_uid"] == bad:
            raise ValueError(f"cannot handle {meta['SeriesDescription']}")
        return volume.shape[0]

    volumes = [u for u in UIDS if u not in NOT_VOLUMES]
    df = map_series(picky, volumes, progress=False)
    row = df.set_index("series_uid").loc[bad]
    assert row["error"] == "ValueError: cannot handle CT small"
    i = volumes.index(bad)
    assert "in picky" in df.attrs["tracebacks"][i]  # where in the function
    ok = df[df["series_uid"] != bad]
    assert ok["error"].isna().all() and (ok["result"] >= 1).all()


def test_a_worker_killed_mid_map_loses_no_series(client, stack):
    """Kill a worker's process while it runs a series: its series run
    again elsewhere and every series has its result."""
    uid = demo.series("ct-head-reversed").series_uid
    uids = [uid] * 8

    def slow(volume, meta):
        import time as t

        t.sleep(1.0)
        return float(volume.array.mean())

    killed = {}

    def kill_a_busy_worker():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            busy = {w: ks for w, ks in client.processing().items() if ks}
            if busy:
                worker = sorted(busy)[0]
                pid = client.run(os.getpid, workers=[worker])[worker]
                killed.update(worker=worker, pid=pid, tasks=list(busy[worker]))
                os.kill(pid, signal.SIGKILL)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_a_busy_worker)
    killer.start()
    df = map_series(slow, uids, progress=False, retries=0)
    killer.join()
    assert killed, "no worker was busy"
    assert killed["worker"] not in client.scheduler_info()["workers"]
    expected = float(PACS(stack.run["gateway_url"], token=os.environ["IMAGINGHUB_DICOMWEB_TOKEN"])
                     .load_series(uid, progress=False).array.mean())
    assert len(df) == 8 and df["error"].isna().all(), df["error"].tolist()
    assert (df["result"] == expected).all()
    client.wait_for_workers(2, timeout=60)  # the cluster is whole again


def test_cohort_map(stack, alice, client):
    api = stack.run["gateway_url"].rsplit("/dicom-web", 1)[0] + "/api"
    volumes = [u for u in UIDS if u not in NOT_VOLUMES]
    cohort = Catalog(api, alice).new_cohort("dask-map", "oncology", series=volumes).save()
    df = cohort.map(measure, progress=False)
    assert list(df["series_uid"]) == cohort.series
    assert df["error"].isna().all()
    assert df.set_index("series_uid").loc[volumes[0], "mean"] == pytest.approx(
        map_series(measure, volumes[:1], progress=False)["mean"][0])


def test_unreachable_data_service_is_retried_then_reported(alice, client):
    """Loading retried (Dask logs each failed attempt with the task's
    arguments), then the series' error; the token stays hidden."""
    nowhere = PACS("http://127.0.0.1:9/services/data/dicom-web", token=alice)
    df = map_series(measure, UIDS[:2], pacs=nowhere, retries=1, progress=False)
    assert df["error"].str.startswith("ServiceUnavailable").all(), df["error"].tolist()
    # Dask logs a failed task as its repr, arguments included when short: the
    # token shows as <token> (a plain string would show itself)
    from dask._task_spec import Task

    hidden = mapping.HiddenToken(alice)
    assert repr(Task("k", mapping.run_one, hidden)) == "<Task 'k' run_one(<token>)>"
    assert alice in repr(Task("k", mapping.run_one, alice))
    assert alice not in str(hidden) and alice not in repr([hidden])


def test_the_map_needs_a_token_not_a_password(stack):
    with pytest.raises(cluster_mod.ClusterError, match="never a user name and password"):
        map_series(measure, UIDS[:1], pacs=PACS(stack.run["gateway_url"], username="alice",
                                                password="x"))


def test_no_token_or_password_in_any_log(stack, alice, client):
    """Run after the maps: the scheduler and worker logs (kept in the state
    directory), the gateway's and the hub's logs hold no token or password."""
    name = client.cluster.name
    client.shutdown()
    kept = stack.home.path / "dask-gateway" / "logs" / name
    deadline = time.monotonic() + 30
    while not (kept / "scheduler.log").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    cluster_logs = {p.name: p.read_text() for p in kept.iterdir()}
    assert "scheduler.log" in cluster_logs
    assert sum(n.startswith("worker-") for n in cluster_logs) >= 2
    text = "\n".join(cluster_logs.values())
    # the failed attempts of the unreachable map were logged, with their task
    assert text.count("Compute Failed") >= 2 and "ServiceUnavailable" in text
    logs = [stack.home.path / "logs" / name for name in ("dask-gateway.log", "jupyterhub.log")]
    text += "\n".join(p.read_text() for p in logs)
    secrets = {p.name: p.read_text().strip() for p in stack.home.secrets_dir.iterdir()
               if p.is_file() and p.suffix != ".json"}
    secrets["alice_token"] = alice
    for label, value in secrets.items():
        assert value and value not in text, f"{label} appears in a log"
    for password in re.findall(r'"\w+": "([^"]+)"',
                               (stack.home.secrets_dir / "demo_logins.json").read_text()):
        assert password not in text


def test_without_a_gateway_a_local_cluster_with_a_note(alice, monkeypatch, capsys):
    import dask.config

    for k in ("DASK_GATEWAY__ADDRESS", "DASK_GATEWAY__PROXY_ADDRESS",
              "DASK_GATEWAY__PUBLIC_ADDRESS"):
        monkeypatch.delenv(k)
    with dask.config.set({"gateway.address": None}):  # dask read the environment at import
        local = cluster(1)
    try:
        said = capsys.readouterr().out
        assert "no Dask Gateway is configured in this kernel" in said
        assert "LocalCluster of 1 worker process on this machine" in said
        assert type(local.cluster).__name__ == "LocalCluster"
        df = map_series(measure, UIDS[:1], cluster=local, progress=False)
        assert df["error"].isna().all() and df["slices"][0] == 120
    finally:
        local.shutdown()
