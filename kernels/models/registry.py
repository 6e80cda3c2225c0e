"""Versioned model folders: references, saving and loading (see the
package's docstring for the folder's layout)."""

from __future__ import annotations

import datetime as dt
import importlib
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import NotFound, PACSError
from ..workflow import sha256_of

log = logging.getLogger(__name__)

DEFAULT_MODELS_DIR = "~/models"
FORMAT = 1  # of model.json
WEIGHTS = "model.pt"
INFO = "model.json"
# model.json may name network classes from these modules only
ARCHITECTURE_MODULES = ("monai.networks.nets",)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_VERSION_DIR = re.compile(r"^v([1-9][0-9]*)$")


class ModelError(PACSError):
    """A model cannot be found, read or used (the message says why)."""


class ModelNotFound(ModelError, NotFound):
    """No model at that reference."""


class ModelIntegrityError(ModelError):
    """The weights are not the ones the model was saved with."""


# -- references and versions --------------------------------------------------
def check_name(name: str) -> str:
    """``name`` if it can name a model (letters, digits, ``.``, ``_``, ``-``)."""
    if not isinstance(name, str) or not _NAME.match(name) or name in (".", ".."):
        raise ModelError(
            f"{name!r} cannot name a model: use letters, digits, '.', '_' and '-' (at most "
            "128, starting with a letter or digit), such as 'phantom-unet'")
    return name


def versions(models_dir: str | os.PathLike, name: str) -> list[int]:
    """The versions of model ``name`` in ``models_dir``, ascending."""
    folder = Path(models_dir).expanduser() / check_name(name)
    if not folder.is_dir():
        return []
    found = (_VERSION_DIR.match(p.name) for p in folder.iterdir() if p.is_dir())
    return sorted(int(m[1]) for m in found if m and (folder / m[0] / INFO).is_file())


def resolve_model(ref: str, models_dir: str | os.PathLike = DEFAULT_MODELS_DIR) -> Path:
    """The folder of the model that ``ref`` names: ``"name@N"``, ``"name"``
    (the latest version) or a path to a model folder. Raises ModelNotFound
    with what there is instead."""
    ref = str(ref or "").strip()
    if not ref:
        raise ModelNotFound(
            'no model given: set the parameter model to a reference such as "phantom-unet@1", '
            '"phantom-unet" (its latest version) or the path of a model folder')
    root = Path(models_dir).expanduser()
    if "/" in ref or os.sep in ref or ref.startswith(("~", ".")):
        folder = Path(ref).expanduser()
        if not (folder / INFO).is_file():
            what = "does not exist" if not folder.exists() else f"has no {INFO}"
            raise ModelNotFound(f"{folder} {what}: it is not a model folder (one holds "
                                f"{INFO} and {WEIGHTS}, as train-segmentation writes them)")
        return folder
    name, at, number = ref.partition("@")
    check_name(name)
    have = versions(root, name)
    if not have:
        others = sorted(p.name for p in root.iterdir()
                        if _NAME.match(p.name) and versions(root, p.name)) if root.is_dir() else []
        there = (f"the models there are {', '.join(others)}" if others
                 else "there are no models there (train one with train-segmentation)")
        raise ModelNotFound(f"no model named {name!r} in {root}: {there}")
    if not at:
        return root / name / f"v{have[-1]}"
    if not number.isdigit() or int(number) not in have:
        raise ModelNotFound(
            f"model {name!r} has no version {number!r} in {root}: its versions are "
            f"{', '.join(map(str, have))} (or leave out @N for the latest)")
    return root / name / f"v{int(number)}"


# -- saving and loading -------------------------------------------------------------
def save_model(models_dir: str | os.PathLike, name: str, network, info: dict, *,
               files: dict[str, bytes] | None = None) -> Path:
    """Write ``network``'s weights and ``info`` as the next version of model
    ``name``; returns the new folder ``<models_dir>/<name>/v<N>``.

    ``info`` is what :func:`model_info` builds; ``name``, ``version``,
    ``created``, ``weights`` (file and SHA-256) and ``versions`` are filled
    in here. ``files`` are written next to them (``{"loss.png": bytes}``).
    """
    import torch

    check_name(name)
    base = Path(models_dir).expanduser() / name
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".new-", dir=base))
    try:
        torch.save(network.state_dict(), work / WEIGHTS)
        for file, data in (files or {}).items():
            if Path(file).name != file or file in (WEIGHTS, INFO):
                raise ModelError(f"{file!r}: extra files are plain names other than "
                                 f"{WEIGHTS} and {INFO}")
            (work / file).write_bytes(data)
        while True:  # the next free version; another run may take it meanwhile
            taken = (_VERSION_DIR.match(p.name) for p in base.iterdir())
            version = max((int(m[1]) for m in taken if m), default=0) + 1
            full = {"format": FORMAT, "name": name, "version": version,
                    "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                    **info,
                    "weights": {"file": WEIGHTS, "sha256": sha256_of(work / WEIGHTS)},
                    "versions": package_versions()}
            (work / INFO).write_text(json.dumps(full, indent=2) + "\n")
            target = base / f"v{version}"
            try:
                os.mkdir(target)  # claims the version: fails if it exists
            except FileExistsError:
                continue
            for p in sorted(work.iterdir(), key=lambda p: p.name == INFO):  # model.json last
                os.replace(p, target / p.name)
            break
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("saved model %s@%d in %s", name, version, target)
    return target


@dataclass
class Model:
    """A loaded model: ``network`` (in eval mode, on the CPU), ``info``
    (``model.json``) and the ``folder`` it came from."""

    folder: Path
    info: dict
    network: object

    @property
    def ref(self) -> str:
        """``"name@N"``."""
        return f"{self.info['name']}@{self.info['version']}"

    @property
    def labels(self) -> dict[int, str]:
        """``{label value: name}`` of the classes it predicts (0 is background)."""
        return {int(k): v for k, v in self.info["labels"].items()}

    def __repr__(self) -> str:
        return f"<Model {self.ref} ({', '.join(self.labels.values())}) in {self.folder}>"


def load_model(ref: str, models_dir: str | os.PathLike = DEFAULT_MODELS_DIR) -> Model:
    """The model that ``ref`` names (see :func:`resolve_model`), its weights
    checked against the SHA-256 in its ``model.json`` (ModelIntegrityError
    when they differ) and loaded with ``torch.load(weights_only=True)``."""
    import torch

    folder = resolve_model(ref, models_dir)
    try:
        info = json.loads((folder / INFO).read_text())
        expected = info["weights"]["sha256"]
        missing = [k for k in ("name", "version", "architecture", "labels", "input")
                   if k not in info]
        if missing:
            raise KeyError(", ".join(missing))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelError(f"{folder / INFO} cannot be read as a model description "
                         f"({type(e).__name__}: {e}): was it written by save_model?") from None
    if info.get("format") != FORMAT:
        raise ModelError(f"{folder / INFO} has format {info.get('format')!r}; this imaginghub "
                         f"reads format {FORMAT}")
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise ModelNotFound(f"{weights} is missing: the model folder is incomplete")
    actual = sha256_of(weights)
    if actual != expected:
        raise ModelIntegrityError(
            f"the weights {weights} have SHA-256 {actual[:16]}..., but {INFO} records "
            f"{expected[:16]}...: the file was changed or damaged after training. Restore it, "
            "or train a new version; a changed model is never used")
    network = build_network(info["architecture"])
    state = torch.load(weights, map_location="cpu", weights_only=True)
    try:
        network.load_state_dict(state)
    except RuntimeError as e:
        raise ModelError(f"the weights {weights} do not fit the architecture in {INFO}: "
                         f"{str(e).splitlines()[0]}") from None
    network.eval()
    return Model(folder, info, network)


def build_network(architecture: dict):
    """A network from ``{"class": "monai.networks.nets.UNet", "args": {...}}``
    (classes of :data:`ARCHITECTURE_MODULES` only)."""
    path = str(architecture.get("class", ""))
    module, _, cls = path.rpartition(".")
    if module not in ARCHITECTURE_MODULES:
        raise ModelError(f"architecture class {path!r} is not allowed: it must come from "
                         f"{', '.join(ARCHITECTURE_MODULES)}")
    try:
        factory = getattr(importlib.import_module(module), cls)
        return factory(**architecture.get("args", {}))
    except (AttributeError, ImportError) as e:
        raise ModelError(f"architecture {path} is not available here ({e}): install the "
                         "[ml] extra, or the MONAI version the model was trained with") from None
    except TypeError as e:
        raise ModelError(f"architecture {path} does not take the arguments in model.json: "
                         f"{e}") from None


def model_info(*, architecture: dict, labels: dict[int, str], input_spec: dict,
               training: dict) -> dict:
    """The body of ``model.json`` (what :func:`save_model` completes)."""
    return {"architecture": architecture,
            "labels": {str(int(k)): str(v) for k, v in sorted(labels.items())},
            "input": input_spec, "training": training}


def package_versions() -> dict[str, str]:
    """Versions of imaginghub, MONAI and PyTorch."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("imaginghub", "monai", "torch"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "unknown"
    return out
