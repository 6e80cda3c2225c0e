"""Every tutorial runs top to bottom in the imaging kernel against the demo
archive, as alice would run it: through the gateway with her token."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from imaginghub.hub.hubconfig import data_dir

TUTORIALS = sorted((Path(__file__).parents[2] / "notebooks" / "tutorials").glob("*.ipynb"))


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.name)
def test_tutorial_runs(stack, path, monkeypatch, tmp_path):
    monkeypatch.setenv("JUPYTER_PATH", str(data_dir(stack.home)))
    monkeypatch.setenv("IMAGINGHUB_DICOMWEB_URL", stack.run["gateway_url"])
    monkeypatch.setenv("IMAGINGHUB_DICOMWEB_TOKEN", stack.token("alice"))
    monkeypatch.setenv("IMAGINGHUB_CACHE_DIR", str(tmp_path / "cache"))
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="imaging", resources={
        "metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "the figure was not drawn"
