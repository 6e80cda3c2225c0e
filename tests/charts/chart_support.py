"""What the chart's tests share: its paths, rendering with Helm's SDK, and
the hub's configuration as the chart's jupyterhub_config.py makes it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from unittest import mock

import helm_python as helm
import yaml
from kube_support import HUB_SA, NAMESPACE, RELEASE  # noqa: F401 (the tests import them here)

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "imaginghub"
VALUES = sorted((CHART / "ci" / "values").glob("*.yaml"))


def values_of(name: str) -> dict:
    return yaml.safe_load((CHART / "ci" / "values" / f"{name}.yaml").read_text()) or {}


def render(values: dict | None = None, namespace: str = NAMESPACE) -> list[dict]:
    out = helm.Chart.load(str(CHART)).render(values or {}, name=RELEASE, namespace=namespace,
                                             is_install=True)
    return [d for text in out.values() for d in yaml.safe_load_all(text) if d]


def one(objects, kind, name):
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


def rendered_values(objects) -> dict:
    secret = one(objects, "Secret", "ih-imaginghub-config")
    return json.loads(secret["stringData"]["values.json"])


def hub_config(values: dict, tmp_path: Path, env: dict | None = None):
    """The hub's configuration as the chart's jupyterhub_config.py makes it."""
    from traitlets.config import PyFileConfigLoader

    objects = render(values)
    secret = one(objects, "Secret", "ih-imaginghub-config")["stringData"]
    (tmp_path / "values.json").write_text(secret["values.json"])
    (tmp_path / "jupyterhub_config.py").write_text(secret["jupyterhub_config.py"])
    environ = {"IMAGINGHUB_CHART_VALUES": str(tmp_path / "values.json"), **(env or {})}
    with mock.patch.dict(os.environ, environ):
        return PyFileConfigLoader("jupyterhub_config.py", path=str(tmp_path)).load_config()




def crds() -> list[dict]:
    """The chart's CustomResourceDefinitions (crds/)."""
    return [d for p in sorted((CHART / "crds").glob("*.yaml"))
            for d in yaml.safe_load_all(p.read_text()) if d]


def crd_schema(obj: dict) -> dict | None:
    """The schema of ``obj``'s kind when the chart defines it, else None."""
    group, _, version = obj["apiVersion"].rpartition("/")
    for crd in crds():
        if crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == obj["kind"]:
            for v in crd["spec"]["versions"]:
                if v["name"] == version:
                    return v["schema"]["openAPIV3Schema"]
    return None


def dask_config(values: dict, tmp_path: Path):
    """Dask Gateway's configuration as the chart's dask_gateway_config.py makes it."""
    from traitlets.config import PyFileConfigLoader

    secret = one(render(values), "Secret", "ih-imaginghub-config")["stringData"]
    (tmp_path / "values.json").write_text(secret["values.json"])
    (tmp_path / "dask_gateway_config.py").write_text(secret["dask_gateway_config.py"])
    with mock.patch.dict(os.environ, {"IMAGINGHUB_CHART_VALUES": str(tmp_path / "values.json")}):
        return PyFileConfigLoader("dask_gateway_config.py", path=str(tmp_path)).load_config()
