"""The "Imaging (Python 3)" kernelspec: an IPython kernel that preloads
``pacs`` and friends (see :mod:`imaginghub.kernels.preload`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

KERNEL_NAME = "imaging"
DISPLAY_NAME = "Imaging (Python 3)"


def kernelspec(python: str | None = None) -> dict:
    return {
        "argv": [python or sys.executable, "-m", "imaginghub.kernels.kernel",
                 "-f", "{connection_file}"],
        "display_name": DISPLAY_NAME,
        "language": "python",
        "metadata": {"debugger": True},
    }


def install(data_dir: Path, python: str | None = None) -> Path:
    """Write the kernelspec under ``data_dir/kernels/imaging`` (a Jupyter data
    directory, for example one listed in JUPYTER_PATH)."""
    dest = Path(data_dir) / "kernels" / KERNEL_NAME
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "kernel.json").write_text(json.dumps(kernelspec(python), indent=2) + "\n")
    return dest
