"""What the chart's tests share: its paths, rendering with Helm's SDK, and
the hub's configuration as the chart's jupyterhub_config.py makes it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from unittest import mock

import helm_python as helm
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "imaginghub"
VALUES = sorted((CHART / "ci" / "values").glob("*.yaml"))
# the release and namespace of every test; the control plane's "hub" identity
# is the chart's hub ServiceAccount
RELEASE, NAMESPACE = "ih", "imaginghub"
HUB_SA = f"{RELEASE}-imaginghub-hub"


def values_of(name: str) -> dict:
    return yaml.safe_load((CHART / "ci" / "values" / f"{name}.yaml").read_text()) or {}


def render(values: dict | None = None) -> list[dict]:
    out = helm.Chart.load(str(CHART)).render(values or {}, name="ih", namespace=NAMESPACE,
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


