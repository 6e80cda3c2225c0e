"""Trained segmentation models: versioned folders, the input grid they were
trained on, and the pairs of images and labels they are trained from.

Used by the workflows ``train-segmentation`` and ``segment``
(``notebooks/workflows``); the functions work in any notebook too.

A model is a folder ``<models_dir>/<name>/v<N>/``:

``model.pt``
    the network's weights (a PyTorch ``state_dict``);
``model.json``
    what it takes to use the model again and what it was made from: the
    architecture and its arguments, the label names, the input grid and
    intensity normalisation, the training series and their hash, seed,
    epochs, final loss and per-label Dice, the SHA-256 of ``model.pt`` and
    the versions of imaginghub, MONAI and PyTorch (see :func:`save_model`);
any other files the training wrote (``loss.png``).

Versions are never changed once written: :func:`save_model` writes a new
folder ``v<N+1>`` next to the others (in a temporary folder first, so that a
half-written version never shows), and :func:`load_model` refuses weights
whose SHA-256 is not the one ``model.json`` recorded.

A model is named by a reference: ``"phantom-unet@2"`` (version 2),
``"phantom-unet"`` (its latest version) or the path of a model folder
(``"~/models/phantom-unet/v2"``, ``"./my-model"``).

The input grid (``model.json``'s ``input``): a series is resampled (linear
interpolation) onto a cube of ``size`` voxels of ``spacing`` mm whose axes
are the patient axes (LPS: ``i`` to the left, ``j`` posterior, ``k``
superior, whatever the series' own orientation) and whose centre is the
centre of the series' volume. So an axial and an oblique series of the same
anatomy look the same to the network. Intensities are divided by the
series' 99th percentile (``normalisation``), which keeps air at 0 (the value
outside the series, too). Predictions (class probabilities) are resampled
back onto the series' own grid and the most probable class taken there.
"""

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

import numpy as np

from .errors import NotFound, PACSError
from .volume import Volume
from .workflow import sha256_of

log = logging.getLogger(__name__)

DEFAULT_MODELS_DIR = "~/models"
FORMAT = 1  # of model.json
WEIGHTS = "model.pt"
INFO = "model.json"
# model.json may name network classes from these modules only
ARCHITECTURE_MODULES = ("monai.networks.nets",)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_VERSION_DIR = re.compile(r"^v([1-9][0-9]*)$")
# slices of a series' grid resampled at once (bounds memory on large series)
_SLAB_VOXELS = 8 * 1024**2


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


# -- the input grid -------------------------------------------------------------------
def input_spec(spacing: float, size: int, patch_size: int, percentile: float = 99.0) -> dict:
    """The ``input`` block of ``model.json``: the grid, the normalisation
    and the window size of sliding-window inference (ValueError for a grid
    or window the network cannot take)."""
    if not spacing > 0 or size < 8:
        raise ValueError(f"the input grid needs a spacing above 0 mm and at least 8 voxels a "
                         f"side (got spacing_mm {spacing}, grid_size {size})")
    if patch_size % 4 or not 8 <= patch_size <= size:
        raise ValueError(f"patch_size {patch_size}: it must be a multiple of 4 (the network "
                         f"halves it twice) from 8 to grid_size ({size})")
    return {"grid": "patient axes (LPS), centred on the series",
            "spacing": [float(spacing)] * 3, "size": [int(size)] * 3,
            "interpolation": "linear",
            "normalisation": {"method": "divide by percentile", "percentile": percentile},
            "patch_size": [int(patch_size)] * 3}


def grid_affine(volume: Volume, spec: dict) -> np.ndarray:
    """The 4x4 affine (index ``(i, j, k)`` to LPS mm) of the model's input
    grid for ``volume``: patient axes, ``spec``'s spacing and size, centred
    on the volume's centre."""
    spacing = np.asarray(spec["spacing"], float)
    size = np.asarray(spec["size"], float)
    centre = volume.index_to_world((np.asarray(volume.shape[::-1], float) - 1) / 2)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = centre - spacing * (size - 1) / 2
    return affine


def normalise(array: np.ndarray, spec: dict) -> np.ndarray:
    """Intensities as the model expects them (``spec["normalisation"]``)."""
    norm = spec["normalisation"]
    if norm.get("method") != "divide by percentile":
        raise ModelError(f"unknown intensity normalisation {norm!r}")
    finite = array[np.isfinite(array)]
    scale = float(np.percentile(finite, norm["percentile"])) if finite.size else 0.0
    if scale <= 0:
        scale = float(np.abs(finite).max()) if finite.size else 0.0
    out = np.nan_to_num(array.astype(np.float32), nan=0.0)
    return out / scale if scale > 0 else out


def to_input(volume: Volume, spec: dict):
    """``(tensor, affine)``: the volume on the model's grid, normalised, as a
    float32 tensor ``(1, k, j, i)`` (channel first), and the grid's affine."""
    import torch

    affine = grid_affine(volume, spec)
    image = torch.from_numpy(normalise(volume.array, spec))[None]
    return resample(image, volume.affine, affine, tuple(spec["size"][::-1])), affine


def labels_to_grid(labels: Volume | np.ndarray, volume: Volume, affine: np.ndarray,
                   spec: dict) -> np.ndarray:
    """A label array on ``volume``'s grid put onto the model's grid
    (nearest neighbour): uint8 ``[k, j, i]``."""
    import torch

    array = labels.array if isinstance(labels, Volume) else np.asarray(labels)
    moved = resample(torch.from_numpy(array.astype(np.float32))[None], volume.affine, affine,
                     tuple(spec["size"][::-1]), mode="nearest")
    return moved[0].round().to(torch.uint8).numpy()


def to_series_grid(probabilities, affine: np.ndarray, volume: Volume) -> np.ndarray:
    """Class probabilities ``(C, k, j, i)`` on the model's grid (``affine``)
    as labels on ``volume``'s own grid: resampled linearly, then the most
    probable class per voxel (background outside the model's grid). Returns
    ``[k, j, i]`` uint8 (uint16 beyond 255 classes)."""
    import torch

    probs = torch.as_tensor(probabilities, dtype=torch.float32)
    channels = probs.shape[0]
    dtype = np.uint8 if channels <= 256 else np.uint16
    out = np.zeros(volume.shape, dtype)
    k_total, rows, cols = volume.shape
    step = max(1, _SLAB_VOXELS // max(1, rows * cols * channels))
    for k0 in range(0, k_total, step):
        k1 = min(k_total, k0 + step)
        slab = volume.affine.copy()
        slab[:3, 3] = volume.index_to_world((0, 0, k0))
        moved = resample(probs, affine, slab, (k1 - k0, rows, cols))
        out[k0:k1] = moved.argmax(0).numpy().astype(dtype)
    return out


def predict(network, image, patch_size, *, overlap: float = 0.25, batch_size: int = 4):
    """Class probabilities ``(C, k, j, i)`` of ``network`` (its outputs are
    logits) for one input ``(1, k, j, i)`` from :func:`to_input`, by MONAI's
    sliding-window inference over windows of ``patch_size`` voxels."""
    import torch
    from monai.inferers import sliding_window_inference

    size = [int(patch_size)] * 3 if np.isscalar(patch_size) else [int(p) for p in patch_size]
    with torch.no_grad():
        logits = sliding_window_inference(torch.as_tensor(image)[None], size, batch_size,
                                          network, overlap=overlap, mode="gaussian")
    return logits.softmax(1)[0]


def resample(image, src_affine: np.ndarray, dst_affine: np.ndarray, dst_shape,
             mode: str = "linear"):
    """A channel-first tensor ``(C, k, j, i)`` on the grid ``src_affine``
    resampled onto the grid ``dst_affine`` of ``dst_shape`` ``(k, j, i)``:
    voxel centres map exactly (PyTorch's ``grid_sample`` with
    ``align_corners=True``); zeros outside. ``mode``: "linear" or "nearest"."""
    import torch
    import torch.nn.functional as F

    image = torch.as_tensor(image, dtype=torch.float32)
    src_shape = image.shape[1:]  # (k, j, i)
    # destination index (i, j, k) -> source index (i, j, k)
    m = np.linalg.inv(np.asarray(src_affine, float)) @ np.asarray(dst_affine, float)
    k, j, i = (torch.arange(n, dtype=torch.float64) for n in dst_shape)
    kk, jj, ii = torch.meshgrid(k, j, i, indexing="ij")
    dst = torch.stack([ii, jj, kk], dim=-1)  # (k, j, i, 3) in (i, j, k) order
    src = dst @ torch.from_numpy(m[:3, :3].T) + torch.from_numpy(m[:3, 3])
    # grid_sample's grid holds (x, y, z) = (i, j, k), normalised to [-1, 1] over the centres
    sizes = torch.tensor([src_shape[2], src_shape[1], src_shape[0]], dtype=torch.float64)
    grid = (2 * src / (sizes - 1).clamp(min=1) - 1).to(torch.float32)
    out = F.grid_sample(image[None], grid[None], mode="bilinear" if mode == "linear" else mode,
                        padding_mode="zeros", align_corners=True)
    return out[0]


# -- training pairs: images and their reference segmentations -------------------------
def _value(item: dict, tag: str):
    v = item.get(tag, {}).get("Value")
    return v[0] if v else None


def segmentation_record(pacs, study_uid: str, seg_uid: str) -> dict:
    """What a SEG series' metadata says: ``{"seg_uid", "instances",
    "references" (series UIDs), "segments" ({number: name}), "automatic"
    (every segment made by an algorithm), "description"}`` (of its first
    instance)."""
    found = pacs.retrieve_series_metadata(study_uid, seg_uid)
    item = found[0] if found else {}
    refs = [_value(r, "0020000E") for r in item.get("00081115", {}).get("Value", [])]
    segments = item.get("00620002", {}).get("Value", [])
    return {
        "seg_uid": seg_uid,
        "instances": len(found),
        "references": sorted({r for r in refs if r}),
        "segments": {int(_value(s, "00620004")): str(_value(s, "00620005") or "")
                     for s in segments},
        "automatic": bool(segments) and all(_value(s, "00620008") == "AUTOMATIC"
                                            for s in segments),
        "description": str(_value(item, "0008103E") or ""),
    }


def reference_segmentation(pacs, series_uid: str) -> dict:
    """The reference segmentation of an image series: the one SEG series of
    the same study that references it and was not made by an algorithm
    (segment algorithm type MANUAL or SEMIAUTOMATIC). Raises ModelError when
    there is none or there are several (pass the SEG UIDs then)."""
    record = pacs.find_series(series_uid)
    study = _value(record, "0020000D")
    candidates = []
    for seg in pacs.search_for_series(study, search_filters={"Modality": "SEG"}):
        info = segmentation_record(pacs, study, _value(seg, "0020000E"))
        if series_uid in info["references"]:
            candidates.append(info)
    chosen = [c for c in candidates if not c["automatic"] and c["instances"] == 1]
    if len(chosen) == 1:
        return chosen[0]
    if not chosen:
        automatic = sum(c["automatic"] for c in candidates)
        made = (f" ({automatic} made by an algorithm are not taken as labels)"
                if automatic else "")
        if len(candidates) > automatic:
            made += f" ({len(candidates) - automatic} of several instances are left out)"
        raise ModelError(
            f"series {series_uid} has no reference segmentation in its study{made}: store "
            "one (a DICOM SEG that references the series), or pass the SEG series to train "
            "on in the parameter label_series")
    listed = "; ".join(f"{c['seg_uid']} ({c['description']})" for c in chosen)
    raise ModelError(
        f"series {series_uid} has {len(chosen)} reference segmentations: {listed}. Say "
        "which to train on in the parameter label_series")


def training_pairs(pacs, series_uids, label_series=()) -> dict[str, dict]:
    """``{image series UID: segmentation record}`` for training: each image's
    SEG from ``label_series`` (SEG series UIDs, matched to the images by the
    series they reference) or else found by :func:`reference_segmentation`."""
    if isinstance(label_series, str):
        label_series = label_series.replace(",", " ").split()
    given = {}
    for seg_uid in dict.fromkeys(u.strip() for u in label_series or () if u.strip()):
        record = pacs.find_series(seg_uid)
        if _value(record, "00080060") != "SEG":
            raise ModelError(f"label_series: {seg_uid} is not a segmentation (Modality "
                             f"{_value(record, '00080060')}, not SEG)")
        info = segmentation_record(pacs, _value(record, "0020000D"), seg_uid)
        if info["instances"] != 1:
            raise ModelError(f"label_series: segmentation series {seg_uid} holds "
                             f"{info['instances']} instances; train on SEG series of one "
                             "instance each")
        for ref in info["references"]:
            if ref in given:
                raise ModelError(f"label_series: {given[ref]['seg_uid']} and {seg_uid} both "
                                 f"label series {ref}: give one SEG per image series")
            given[ref] = info
    unused = sorted({i["seg_uid"] for i in given.values()
                     if not set(i["references"]) & set(series_uids)})
    if unused:
        raise ModelError(f"label_series: {', '.join(unused)} label none of the series to train "
                         "on (a SEG goes with the series its ReferencedSeriesSequence names)")
    pairs = {}
    for uid in series_uids:
        pairs[uid] = given[uid] if uid in given else reference_segmentation(pacs, uid)
    return pairs


def dice_per_label(predicted: np.ndarray, truth: np.ndarray,
                   labels: dict[int, str]) -> dict[str, float]:
    """Dice coefficient of each label between two label arrays of one shape
    (1.0 where neither has the label)."""
    out = {}
    for value, name in labels.items():
        p, t = predicted == value, truth == value
        total = int(p.sum()) + int(t.sum())
        out[name] = 1.0 if total == 0 else 2.0 * int((p & t).sum()) / total
    return out
