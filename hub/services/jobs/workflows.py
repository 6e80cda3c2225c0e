"""Workflows: notebooks with a cell tagged ``parameters`` and a metadata block.

A workflow is found in a folder the site configures (the project's
``notebooks/workflows`` first) or in an installed package that registers it
with an entry point in the group ``imaginghub.workflows`` (the entry point
loads to a notebook's path, or a folder of them). Its name is the file name
without ``.ipynb``. The notebook's ``metadata.imaginghub`` holds ``title``,
``description``, ``reads``, ``writes``, ``per_series`` (run once per
series of a cohort), ``federated`` (a federated study's workflow:
:func:`check_federated`) and ``resources`` (what one run needs where a runner
places it: ``{"cpu": 2, "memory": "8Gi", "gpu": 1}``, see
:func:`check_resources`; a job may ask for other values). Parameter names,
types and defaults come from papermill's notebook inspection; submitted
values are checked against them.
"""

from __future__ import annotations

import importlib.metadata
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ....kernels.workflow import sha256_of
from .errors import ParameterError

log = logging.getLogger("imaginghub.jobs")

ENTRY_POINT_GROUP = "imaginghub.workflows"


def project_workflows() -> Path:
    """imaginghub's own workflows (data of the package imaginghub.notebooks)."""
    from importlib.resources import files

    return Path(str(files("imaginghub.notebooks") / "workflows"))


# what the selection parameters of a workflow are called (see kernels/workflow.py)
SELECTION = ("cohort", "project", "series")


@dataclass
class Workflow:
    name: str
    path: Path
    sha256: str
    title: str
    description: str
    reads: str
    writes: str
    per_series: bool
    parameters: dict[str, dict] = field(default_factory=dict)  # name: {type, default, help}
    resources: dict = field(default_factory=dict)  # check_resources' form
    federated: dict = field(default_factory=dict)  # check_federated's form; {}: not federated

    @property
    def takes_cohort(self) -> bool:
        return "cohort" in self.parameters and "series" in self.parameters

    def model(self) -> dict:
        return {"name": self.name, "title": self.title, "description": self.description,
                "reads": self.reads, "writes": self.writes, "per_series": self.per_series,
                "sha256": self.sha256, "parameters": self.parameters,
                "resources": self.resources, "federated": self.federated}

    def check(self, values: dict) -> dict:
        """``values`` checked against the notebook's parameters: a
        ParameterError names the unknown names and the wrong types."""
        unknown = sorted(set(values) - set(self.parameters))
        if unknown:
            raise ParameterError(
                f"workflow {self.name} has no parameter {', '.join(unknown)}; its parameters "
                f"are {', '.join(self.parameters) or '(none)'}")
        out = {}
        for name, value in values.items():
            kind = self.parameters[name]["type"]
            if not fits(kind, value):
                raise ParameterError(
                    f"parameter {name} of workflow {self.name} takes {kind}, not "
                    f"{type(value).__name__} {value!r:.80}")
            out[name] = float(value) if kind == "float" else value
        return out


RESOURCES = {"cpu": "CPU cores (a number, e.g. 2 or 0.5)",
             "memory": 'memory as Kubernetes writes it (e.g. "8Gi", "512Mi")',
             "gpu": "GPUs (a whole number)"}
_MEMORY = re.compile(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|K|M|G|T)?$")


def check_resources(value, where: str) -> dict:
    """What one run needs, as a workflow's metadata or a job asks for it:
    ``{"cpu": 2, "memory": "8Gi", "gpu": 1}``, each key optional; the same
    keys with checked values (cpu a float, memory a string, gpu an int). A
    ParameterError says which value is wrong (``where``: whose they are)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ParameterError(f"{where}: resources must be an object such as "
                             '{"cpu": 2, "memory": "8Gi", "gpu": 1}')
    unknown = sorted(set(value) - set(RESOURCES))
    if unknown:
        raise ParameterError(f"{where}: no resource {', '.join(unknown)}; a run may ask for "
                             + "; ".join(f"{k}: {v}" for k, v in RESOURCES.items()))
    out = {}
    if "cpu" in value:
        cpu = value["cpu"]
        if isinstance(cpu, str):
            try:
                cpu = int(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)
            except ValueError:
                cpu = None
        if isinstance(cpu, bool) or not isinstance(cpu, (int, float)) \
                or not math.isfinite(cpu) or cpu <= 0:
            raise ParameterError(f"{where}: cpu must be {RESOURCES['cpu']}, not {value['cpu']!r}")
        out["cpu"] = float(cpu)
    if "memory" in value:
        memory = value["memory"]
        if not isinstance(memory, str) or not _MEMORY.match(memory) \
                or not float(re.match(r"[0-9.]+", memory).group()) > 0:
            raise ParameterError(f"{where}: memory must be {RESOURCES['memory']}, "
                                 f"not {memory!r}")
        out["memory"] = memory
    if "gpu" in value:
        gpu = value["gpu"]
        if isinstance(gpu, bool) or not isinstance(gpu, int) or gpu < 0:
            raise ParameterError(f"{where}: gpu must be {RESOURCES['gpu']}, not {gpu!r}")
        out["gpu"] = gpu
    return out


FEDERATED_ROLES = {"train": ("fedavg",), "query": ("counts",)}
FEDERATED_MODEL_MODULE = "monai.networks.nets"  # as kernels.models.ARCHITECTURE_MODULES


def check_federated(value, where: str) -> dict:
    """A federated workflow's block (``metadata.imaginghub.federated``):
    ``role`` (``train``: local training whose weights are averaged;
    ``query``: statistics), its ``aggregator`` (``fedavg``; ``counts``), and
    ``shares``, what may leave a site (see federation/egress.py). A training
    workflow also names its ``model`` (``{"class", "args"}``, a class of
    ``monai.networks.nets``), which the coordinator builds the first round's
    weights from, and shares exactly one ``state_dict`` and the int
    ``num_examples`` its weights are averaged by. A ValueError names what is
    wrong; None: not a federated workflow."""
    if value is None:
        return {}
    from ..federation.egress import EgressError, parse_shares

    if not isinstance(value, dict):
        raise ValueError(f"{where}: federated is an object with role, aggregator and shares")
    role, aggregator = value.get("role"), value.get("aggregator")
    if role not in FEDERATED_ROLES or aggregator not in FEDERATED_ROLES[role]:
        raise ValueError(f"{where}: a federated workflow's role and aggregator are one of "
                         + "; ".join(f"{r} with {' or '.join(a)}"
                                     for r, a in FEDERATED_ROLES.items()))
    allowed = {"role", "aggregator", "shares"} | ({"model"} if role == "train" else set())
    unknown = set(value) - allowed
    if unknown:
        raise ValueError(f"{where}: federated has no setting {', '.join(sorted(unknown))}")
    try:
        shares = parse_shares(value.get("shares"))
    except EgressError as e:
        raise ValueError(f"{where}: {e}") from None
    out = {"role": role, "aggregator": aggregator, "shares": value["shares"]}
    if role == "train":
        model = value.get("model")
        if not isinstance(model, dict) or set(model) != {"class", "args"} \
                or not isinstance(model["args"], dict) \
                or not str(model["class"]).startswith(FEDERATED_MODEL_MODULE + "."):
            raise ValueError(f"{where}: a training workflow names its model as {{\"class\": "
                             f"\"{FEDERATED_MODEL_MODULE}.NAME\", \"args\": {{...}}}}")
        kinds = sorted(s.kind for s in shares.values())
        if kinds != ["int", "state_dict"] or shares.get("num_examples", None) is None \
                or shares["num_examples"].kind != "int":
            raise ValueError(f"{where}: a training workflow shares one state_dict (its "
                             "weights) and the int num_examples, and nothing else")
        out["model"] = model
    return out


def fits(kind: str, value) -> bool:
    """Whether a JSON value fits a parameter's annotated type (as papermill
    names it: str, int, float, bool, list[str], dict ...; anything else or
    no annotation takes any JSON value)."""
    kind = kind.replace(" ", "").lower()
    if kind.startswith("optional[") or kind.endswith("|none"):
        if value is None:
            return True
        kind = kind[9:-1] if kind.startswith("optional[") else kind[:-5]
    if kind == "str":
        return isinstance(value, str)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return (isinstance(value, (int, float)) and not isinstance(value, bool)
                and math.isfinite(value))
    if kind.startswith(("list", "tuple")):
        if not isinstance(value, list):
            return False
        inner = kind[kind.find("[") + 1:-1] if "[" in kind else ""
        return all(fits(inner, v) for v in value) if inner else True
    if kind.startswith("dict"):
        return isinstance(value, dict)
    return True


def load(path: Path) -> Workflow:
    """A workflow from its notebook; ValueError when it is not one."""
    import nbformat
    import papermill

    nb = nbformat.read(str(path), as_version=4)
    if not any("parameters" in c.get("metadata", {}).get("tags", []) for c in nb.cells):
        raise ValueError(f"{path} has no cell tagged 'parameters': it is not a workflow")
    meta = nb.metadata.get("imaginghub", {})
    params = {}
    for name, p in papermill.inspect_notebook(str(path)).items():
        params[name] = {"type": p["inferred_type_name"], "default": p["default"],
                        "help": p["help"]}
    try:
        resources = check_resources(meta.get("resources"), f"{path.name}'s metadata")
    except ParameterError as e:
        raise ValueError(str(e)) from None
    federated = check_federated(meta.get("federated"), path.name)
    return Workflow(name=path.stem, path=path.resolve(), sha256=sha256_of(path),
                    title=meta.get("title", path.stem), description=meta.get("description", ""),
                    reads=meta.get("reads", ""), writes=meta.get("writes", ""),
                    per_series=bool(meta.get("per_series", False)), parameters=params,
                    resources=resources, federated=federated)


class Registry:
    """The workflows of the configured folders and entry points, read again
    when a notebook changes (by its modification time)."""

    def __init__(self, folders: list[Path] | None = None):
        own = project_workflows()
        if not own.is_dir():
            raise FileNotFoundError(f"imaginghub's own workflows are not installed at {own}: "
                                    "reinstall imaginghub (make setup)")
        self.folders = [own, *(Path(f) for f in folders or [])]
        self._missing: set[Path] = set()
        self._cache: dict[Path, tuple[float, Workflow | None]] = {}
        self._entry_points = self._from_packages()  # installed packages change with a restart

    @staticmethod
    def _from_packages() -> list[Path]:
        paths = []
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            try:
                target = Path(str(ep.load()))
            except Exception as e:
                log.warning("workflow entry point %s cannot be loaded: %s", ep.name, e)
                continue
            paths += sorted(target.glob("*.ipynb")) if target.is_dir() else [target]
        return paths

    def _paths(self) -> list[Path]:
        paths = []
        for folder in self.folders:
            if folder.is_dir():
                paths += sorted(folder.glob("*.ipynb"))
                self._missing.discard(folder)
            elif folder not in self._missing:  # said once, again if it comes and goes
                self._missing.add(folder)
                log.error("the workflow folder %s (c.JobService.workflow_dirs) is not a "
                          "folder: its workflows cannot run", folder)
        return paths + self._entry_points

    def all(self) -> dict[str, Workflow]:
        found: dict[str, Workflow] = {}
        for path in self._paths():
            if path.name.startswith(".") or path.stem in found:  # the first of a name wins
                continue
            try:
                mtime = os.stat(path).st_mtime
            except OSError:
                continue
            hit = self._cache.get(path)
            if hit is None or hit[0] != mtime:
                try:
                    hit = (mtime, load(path))
                except Exception as e:
                    log.warning("%s is not a usable workflow: %s", path, e)
                    hit = (mtime, None)
                self._cache[path] = hit
            if hit[1] is not None:
                found[path.stem] = hit[1]
        return found

    def get(self, name: str) -> Workflow | None:
        return self.all().get(name)
