"""What every user's server gets (hub/servers.py): one place for the
embedded stack's hub configuration and the Kubernetes chart's."""

from __future__ import annotations

import json

from traitlets.config import Config

from imaginghub.hub.servers import LAB_OVERRIDES, ServerSettings, write_lab_settings


def settings(tmp_path) -> ServerSettings:
    return ServerSettings(data_url="http://data:8890/services/data/",
                          jobs_url="http://jobs:8891/services/jobs",
                          jupyter_path="/opt/share/jupyter",
                          lab_settings=str(write_lab_settings(tmp_path)),
                          dask_environment={"DASK_GATEWAY__ADDRESS": "http://hub/services/dask"})


def test_what_a_server_gets(tmp_path):
    s = settings(tmp_path)
    assert s.cmd()[1:] == ["-m", "imaginghub.hub.singleuser"]
    assert "--KernelManager.transport=ipc" in s.args()  # kernels never on loopback TCP
    assert "--MultiKernelManager.default_kernel_name=imaging" in s.args()
    env = s.environment()
    assert env["IMAGINGHUB_DICOMWEB_URL"] == "http://data:8890/services/data/dicom-web"
    assert env["IMAGINGHUB_JOBS_URL"] == "http://jobs:8891/services/jobs"
    assert env["DASK_GATEWAY__ADDRESS"] == "http://hub/services/dask"
    assert {"access:services!service=data", "access:services!service=jobs",
            "access:services!service=dask-gateway"} <= set(s.token_scopes())
    assert not any("admin" in scope or scope.startswith("read:") for scope in s.token_scopes())
    overrides = json.loads((tmp_path / "lab" / "settings" / "overrides.json").read_text())
    assert overrides == LAB_OVERRIDES


def test_applied_to_any_spawner_class(tmp_path):
    c = Config()
    settings(tmp_path).apply(c, "KubeSpawner")
    assert c.KubeSpawner.cmd[1:] == ["-m", "imaginghub.hub.singleuser"]
    assert c.KubeSpawner.environment["IMAGINGHUB_JOBS_URL"].endswith("/services/jobs")
    assert c.KubeSpawner.default_url == "/lab"
    assert "Spawner" not in c
