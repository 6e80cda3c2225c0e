"""Finding a plugin class by its name in an entry-point group (job runners,
archive feeds): imaginghub's own are registered the same way (pyproject.toml)."""

from __future__ import annotations

import importlib.metadata


def plugin_class(group: str, name: str, base: type, *, kind: str, setting: str) -> type:
    """The subclass of ``base`` registered as ``name`` in ``group``; a
    ValueError that names the ``setting`` and what is installed when there
    is none, or when it is not such a subclass."""
    eps = list(importlib.metadata.entry_points(group=group))
    found = [ep for ep in eps if ep.name == name]
    if not found:
        known = ", ".join(sorted({e.name for e in eps})) or "(none)"
        raise ValueError(f"no {kind} called {name!r} ({setting}): the installed ones are "
                         f"{known}; install the package that provides it")
    cls = found[0].load()
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ValueError(f"the {kind} {name!r} ({found[0].value}) is not a subclass of "
                         f"{base.__module__}.{base.__qualname__}")
    return cls
