"""The egress gate: the only way a federated round's results leave a site.

A federated workflow declares what may leave it in its metadata
(``metadata.imaginghub.federated.shares``), and the site admin approves
that notebook by its SHA-256, so the declaration is part of what was
approved. After a round's job has ended, :func:`release` reads only the
declared outputs from the job's ``work/federated/`` folder (never through a
link: :mod:`imaginghub.hub.safeio`), checks each against its declaration,
suppresses small cells itself (it does not trust the notebook to), and
**encodes the values anew**. So none of the run's own bytes leave: not a
safetensors header's free-form metadata, not a JSON file's extra keys,
spacing or comments. It returns the bytes to send with each one's SHA-256
and size for the site's audit.

Nothing is ever unpickled: weights are read with safetensors, or from
``.npz`` with ``allow_pickle=False``; numbers and counts are JSON.

Declarations (a share's name is ``[A-Za-z_][A-Za-z0-9_]*``, at most 64):

- ``"int"`` / ``{"type": "int", "min": 0, "max": 10**9}``: a whole number in
  ``federated/NAME.json``.
- ``"float"`` / ``{"type": "float"}``: a finite number.
- ``{"type": "counts", "categories": [...], "min_cell": 5}``: counts by
  category (a JSON object whose keys are the declared categories: a key that
  is not declared refuses the output, since a key could carry anything, a
  patient's name among them); or ``{"type": "counts", "bins": 20,
  "min_cell": 5}``: a histogram's counts (a JSON list of that length). A
  count above 0 and below ``min_cell`` (or the site's minimum, if larger) is
  sent as 0 and reported as suppressed. The short form
  ``"counts(min_cell=5, bins=20)"`` says the same.
- ``{"type": "state_dict", "max_bytes": 50_000_000}``: tensors of floating
  point numbers in ``federated/NAME.safetensors`` (or ``.npz``), all finite,
  with exactly the names, shapes and dtypes of the reference the round
  started from (the model the coordinator sent), or of the declaration's
  own ``"tensors": {name: [shape...]}``. Names come from the reference, so
  they cannot carry anything either.

What the gate cannot see is said here too: numbers and weights can still
encode information in their values (the site admin looks at a round before
approving it: :func:`release` is also the preview), and a total minus the
sent cells can reveal a suppressed one when the total is shared too.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from ... import safeio

FOLDER = "federated"  # below the job's work/ folder
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
KINDS = ("int", "float", "counts", "state_dict")
FLOAT_DTYPES = ("float16", "float32", "float64")
MAX_JSON = 1 << 20  # bytes of a number's or counts' file
MAX_CATEGORIES = 1000
DEFAULT_MAX_BYTES = 100 << 20  # a state_dict's, unless declared


class EgressError(ValueError):
    """An output that may not leave: what is wrong with it, for the site's
    admin and the study's researchers (never its content)."""


@dataclass(frozen=True)
class Share:
    """One declared output (see the module's text)."""

    name: str
    kind: str
    min_cell: int = 0
    categories: tuple[str, ...] = ()
    bins: int = 0
    low: float | None = None
    high: float | None = None
    max_bytes: int = DEFAULT_MAX_BYTES
    tensors: dict[str, tuple[int, ...]] = field(default_factory=dict)


@dataclass
class Released:
    """One output as it leaves: its bytes, their SHA-256 and size, and the
    cells the gate suppressed (their category, or their bin's index)."""

    name: str
    kind: str
    data: bytes
    sha256: str
    size: int
    suppressed: list = field(default_factory=list)

    def audit(self) -> dict:
        return {"name": self.name, "kind": self.kind, "sha256": self.sha256,
                "bytes": self.size, "suppressed": len(self.suppressed)}


# -- declarations ---------------------------------------------------------------------
_SHORT = re.compile(r"^(\w+)(?:\((.*)\))?$")


def parse_shares(declared) -> dict[str, Share]:
    """A workflow's ``shares`` as :class:`Share` objects; an EgressError
    names what is wrong with a declaration."""
    if not isinstance(declared, dict) or not declared:
        raise EgressError("a federated workflow declares what may leave it: "
                          'metadata.imaginghub.federated.shares, e.g. {"num_examples": "int"}')
    return {name: parse_share(name, d) for name, d in declared.items()}


def parse_share(name: str, d) -> Share:
    if not isinstance(name, str) or not NAME.match(name):
        raise EgressError(f"share name {name!r:.80}: letters, digits and _, at most 64, "
                          "not starting with a digit")
    if isinstance(d, str):  # "int", "counts(min_cell=5, bins=20)"
        m = _SHORT.match(d.replace(" ", ""))
        if not m:
            raise EgressError(f"share {name}: cannot read {d!r:.80}")
        spec = {"type": m.group(1)}
        for part in filter(None, (m.group(2) or "").split(",")):
            key, _, value = part.partition("=")
            try:
                spec[key] = json.loads(value)
            except ValueError:
                raise EgressError(f"share {name}: {part!r} is not key=number") from None
        d = spec
    if not isinstance(d, dict) or d.get("type") not in KINDS:
        raise EgressError(f"share {name}: the type is one of {', '.join(KINDS)}")
    kind = d["type"]
    allowed = {"int": {"min", "max"}, "float": {"min", "max"}, "state_dict": {
        "max_bytes", "tensors"}, "counts": {"min_cell", "categories", "bins"}}[kind]
    unknown = set(d) - allowed - {"type"}
    if unknown:
        raise EgressError(f"share {name} ({kind}) has no setting {', '.join(sorted(unknown))}; "
                          f"it takes {', '.join(sorted(allowed))}")

    def whole(key, low=0):
        v = d.get(key, 0)
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise EgressError(f"share {name}: {key} is a whole number of at least {low}")
        return v

    if kind in ("int", "float"):
        bounds = {}
        for key in ("min", "max"):
            v = d.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise EgressError(f"share {name}: {key} is a number")
            bounds[key] = v
        return Share(name, kind, low=bounds["min"], high=bounds["max"])
    if kind == "counts":
        categories, bins = d.get("categories"), whole("bins")
        if (categories is None) == (bins == 0):
            raise EgressError(f"share {name}: counts need either categories (a list of "
                              "names) or bins (how many), exactly one of them")
        if categories is not None:
            if (not isinstance(categories, list) or not categories
                    or len(categories) > MAX_CATEGORIES
                    or not all(isinstance(c, str) and 0 < len(c) <= 64 for c in categories)
                    or len(set(categories)) != len(categories)):
                raise EgressError(f"share {name}: categories are 1 to {MAX_CATEGORIES} "
                                  "different names of at most 64 characters")
        if bins > MAX_CATEGORIES:
            raise EgressError(f"share {name}: at most {MAX_CATEGORIES} bins")
        return Share(name, kind, min_cell=whole("min_cell", 1) if "min_cell" in d else 1,
                     categories=tuple(categories or ()), bins=bins)
    max_bytes = whole("max_bytes", 1) if "max_bytes" in d else DEFAULT_MAX_BYTES
    tensors = d.get("tensors") or {}
    if not isinstance(tensors, dict) or not all(
            isinstance(k, str) and isinstance(v, list) and all(
                isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in v)
            for k, v in tensors.items()):
        raise EgressError(f"share {name}: tensors maps each tensor's name to its shape")
    return Share(name, kind, max_bytes=max_bytes,
                 tensors={k: tuple(v) for k, v in tensors.items()})


# -- the gate ----------------------------------------------------------------------------
def release(work: Path, shares: dict[str, Share], *, site_min_cell: int = 1,
            reference: dict[str, tuple[str, tuple[int, ...]]] | None = None
            ) -> dict[str, Released]:
    """Every declared output of the run whose work folder is ``work``,
    checked and encoded anew, by name (in the declaration's order). An
    EgressError if any is missing or wrong: then nothing leaves.
    ``site_min_cell`` raises every count's minimum cell size;
    ``reference`` is the state dict the round started from ({name: (dtype,
    shape)}), which a state_dict output must match."""
    out = {}
    for name, share in shares.items():
        if share.kind == "state_dict":
            value = _read_tensors(work, name, share)
            data = _check_tensors(name, value, share, reference)
            out[name] = _released(name, share.kind, data)
            continue
        raw = _read(work, f"{name}.json", MAX_JSON, name)
        try:
            value = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise EgressError(f"output {name} is not JSON") from None
        if share.kind == "counts":
            value, suppressed = _check_counts(name, value, share,
                                              max(share.min_cell, site_min_cell))
        else:
            value, suppressed = _check_number(name, value, share), []
        data = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
        out[name] = _released(name, share.kind, data, suppressed)
    return out


def _released(name, kind, data: bytes, suppressed=()) -> Released:
    return Released(name, kind, data, hashlib.sha256(data).hexdigest(), len(data),
                    list(suppressed))


def _read(work: Path, file: str, limit: int, name: str) -> bytes:
    try:
        data = safeio.read_file(work, f"{FOLDER}/{file}", limit=limit + 1)
    except (safeio.Unsafe, OSError):
        data = None
    if data is None:
        raise EgressError(f"the round wrote no output {name} ({FOLDER}/{file} in its work "
                          "folder, a plain file)")
    if len(data) > limit:
        raise EgressError(f"output {name} is over its limit of {limit} bytes")
    return data


def _check_number(name: str, value, share: Share):
    if share.kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise EgressError(f"output {name} must be a whole number")
    elif isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value):
        raise EgressError(f"output {name} must be a finite number")
    if share.low is not None and value < share.low or \
            share.high is not None and value > share.high:
        raise EgressError(f"output {name} is outside its declared bounds")
    return value if share.kind == "int" else float(value)


def _count(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise EgressError(f"output {name}: counts are whole numbers of at least 0")
    return v


def _check_counts(name: str, value, share: Share, min_cell: int):
    suppressed = []
    if share.categories:
        if not isinstance(value, dict):
            raise EgressError(f"output {name} must be an object of counts by category")
        undeclared = set(value) - set(share.categories)
        if undeclared:
            # the keys are not shown: one could be anything the notebook read
            raise EgressError(f"output {name} has {len(undeclared)} categor"
                              f"{'y' if len(undeclared) == 1 else 'ies'} its declaration "
                              "does not name")
        cells = {c: _count(name, value.get(c, 0)) for c in share.categories}
        for c, n in cells.items():
            if 0 < n < min_cell:
                cells[c] = 0
                suppressed.append(c)
        return cells, suppressed
    if not isinstance(value, list) or len(value) != share.bins:
        raise EgressError(f"output {name} must be a list of {share.bins} counts")
    cells = [_count(name, v) for v in value]
    for i, n in enumerate(cells):
        if 0 < n < min_cell:
            cells[i] = 0
            suppressed.append(i)
    return cells, suppressed


def _read_tensors(work: Path, name: str, share: Share) -> dict:
    """{tensor name: numpy array} of ``NAME.safetensors`` or ``NAME.npz``."""
    import numpy as np

    for ext in ("safetensors", "npz"):
        try:
            raw = _read(work, f"{name}.{ext}", share.max_bytes, name)
        except EgressError as e:
            if "over its limit" in str(e):
                raise
            continue
        try:
            if ext == "safetensors":
                from safetensors.numpy import load

                return load(raw)
            with np.load(io.BytesIO(raw), allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except Exception as e:  # a malformed file: said, never trusted
            raise EgressError(f"output {name} is not a readable {ext} file "
                              f"({type(e).__name__})") from None
    raise EgressError(f"the round wrote no output {name} ({FOLDER}/{name}.safetensors or "
                      ".npz in its work folder)")


def _check_tensors(name: str, tensors: dict, share: Share, reference) -> bytes:
    from safetensors.numpy import save

    clean = check_tensors(name, tensors, share, reference)
    data = save(clean)  # no metadata: only names from the reference, dtypes, shapes, values
    if len(data) > share.max_bytes:
        raise EgressError(f"output {name} is over its limit of {share.max_bytes} bytes")
    return data


def check_tensors(name: str, tensors: dict, share: Share, reference) -> dict:
    """``tensors`` ({name: numpy array}) if they are what ``share`` and the
    ``reference`` ({name: (dtype, shape)}) allow: exactly its names, floating
    point of its dtypes and shapes, all finite; in name order. Used by the
    gate on what a round wrote, and by the coordinator on what arrived."""
    import numpy as np

    expected = {k: (None, s) for k, s in share.tensors.items()} if share.tensors else None
    if reference is not None:
        expected = {k: (str(d), tuple(s)) for k, (d, s) in reference.items()}
    if expected is None:
        raise EgressError(f"output {name}: a state_dict leaves only with the names and shapes "
                          "of the model the round started from (or declared tensors)")
    if set(tensors) != set(expected):
        raise EgressError(f"output {name} has {len(set(tensors) - set(expected))} tensor(s) "
                          f"the model does not have and lacks "
                          f"{len(set(expected) - set(tensors))} of its own")
    clean = {}
    for key in sorted(expected):
        dtype, shape = expected[key]
        a = tensors[key]
        if a.dtype.name not in FLOAT_DTYPES or (dtype and a.dtype.name != dtype):
            raise EgressError(f"output {name}: tensor {key} is {a.dtype.name}, not "
                              f"{dtype or 'floating point'}")
        if tuple(a.shape) != tuple(shape):
            raise EgressError(f"output {name}: tensor {key} has shape {tuple(a.shape)}, not "
                              f"{tuple(shape)}")
        if not np.isfinite(a).all():
            raise EgressError(f"output {name}: tensor {key} has values that are not finite")
        clean[key] = np.ascontiguousarray(a)
    return clean
