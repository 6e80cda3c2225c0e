"""The input grid of a model: a series resampled onto a cube along the
patient axes, normalised; predictions back onto the series' own grid."""

from __future__ import annotations

import numpy as np

from ..volume import Volume
from .registry import ModelError

# slices of a series' grid resampled at once (bounds memory on large series)
_SLAB_VOXELS = 8 * 1024**2


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
