"""The widgets' browser code, shipped in this package (no CDN)."""

from pathlib import Path

HERE = Path(__file__).parent


def esm(name: str) -> str:
    """The ES module ``name`` with the shared helpers (``_common.js``) before it."""
    return (HERE / "_common.js").read_text() + "\n" + (HERE / name).read_text()
