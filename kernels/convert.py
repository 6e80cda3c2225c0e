"""Conversions between :class:`~imaginghub.kernels.volume.Volume` and
SimpleITK, NIfTI (nibabel) and MONAI, keeping the physical geometry.

Conventions:

- ``Volume`` follows ITK: ``array[k, j, i]``; ``spacing``, ``origin`` and the
  columns of ``direction`` in ``(i, j, k)`` order; world coordinates in DICOM
  patient space, **LPS** (x to the patient's Left, y Posterior, z Superior),
  millimetres. ``Volume.affine`` maps ``(i, j, k, 1)`` to LPS.
- SimpleITK uses the same conventions: ``to_sitk`` copies spacing, origin and
  direction as they are (LPS), and the pixels once.
- NIfTI's world is **RAS** (x to the Right, y Anterior, z Superior), so x and y
  change sign: ``affine_ras = diag(-1, -1, 1, 1) @ affine_lps`` (the same
  matrix converts back). The data array is in ``(i, j, k)`` order (a transposed
  view of ``Volume.array``, no copy); qform and sform codes are 1 (scanner),
  units mm.
- MONAI's loaders give channel-first tensors ``(1, i, j, k)`` whose ``affine``
  maps ``(i, j, k, 1)`` to **RAS** by default (``meta["space"] == "RAS"``);
  ``to_monai(space="LPS")`` gives the LPS affine instead, as MONAI's ITK reader
  does with ``affine_lps_to_ras=False``. The tensor is a contiguous copy, like
  the ones ``LoadImage`` returns.

Voxel ``(i, j, k)`` is at the same physical point in every target; only the
sign of x and y differs between the RAS and LPS descriptions of that point.
The libraries are imported when a conversion is used, not with this module.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # type hints only: volume.py imports this module, not the reverse
    import nibabel
    import SimpleITK
    from monai.data import MetaTensor

    from .volume import Volume

# diag(-1, -1, 1, 1): LPS <-> RAS for 4x4 affines (its own inverse).
_FLIP_XY = np.diag([-1.0, -1.0, 1.0, 1.0])


def lps_to_ras(affine: np.ndarray) -> np.ndarray:
    """A 4x4 affine to LPS turned into the same affine to RAS (and back)."""
    return _FLIP_XY @ np.asarray(affine, float)


ras_to_lps = lps_to_ras


def _from_lps_affine(array_ijk: np.ndarray, affine_lps, metadata, cls) -> Volume:
    """A ``cls`` (Volume) from an ``(i, j, k)`` array and its affine to LPS; the array
    becomes C-contiguous ``[k, j, i]`` (copied only if it is not already)."""
    if array_ijk.ndim != 3:
        raise ValueError(f"expected a 3D image, got shape {array_ijk.shape}")
    affine_lps = np.asarray(affine_lps, float)
    m = affine_lps[:3, :3]
    spacing = np.linalg.norm(m, axis=0)
    return cls(
        array=np.ascontiguousarray(array_ijk.transpose(2, 1, 0)),
        spacing=tuple(float(s) for s in spacing),
        origin=tuple(float(o) for o in affine_lps[:3, 3]),
        direction=m / spacing,
        metadata=dict(metadata or {}),
    )


# SimpleITK (LPS, same conventions as Volume)

def to_sitk(volume: Volume) -> SimpleITK.Image:
    """A ``SimpleITK.Image`` (LPS, like ``Volume``) holding a copy of the pixels."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(volume.array)  # [k, j, i] is SimpleITK's numpy order
    image.SetSpacing(tuple(float(s) for s in volume.spacing))
    image.SetOrigin(tuple(float(o) for o in volume.origin))
    image.SetDirection(tuple(float(d) for d in np.asarray(volume.direction).ravel()))
    return image


def from_sitk(image: SimpleITK.Image, metadata: dict | None, cls) -> Volume:
    """A Volume from a 3D scalar ``SimpleITK.Image`` (LPS); the pixels are copied."""
    import SimpleITK as sitk

    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError("expected a 3D image with one value per voxel")
    return cls(
        array=sitk.GetArrayFromImage(image),
        spacing=tuple(image.GetSpacing()),
        origin=tuple(image.GetOrigin()),
        direction=np.array(image.GetDirection(), float).reshape(3, 3),
        metadata=dict(metadata or {}),
    )


# NIfTI (RAS)

def to_nifti(volume: Volume) -> nibabel.Nifti1Image:
    """A ``Nifti1Image`` with the RAS affine and the data in ``(i, j, k)`` order
    (a view of ``volume.array``)."""
    import nibabel as nib

    affine_ras = lps_to_ras(volume.affine)
    img = nib.Nifti1Image(volume.array.transpose(2, 1, 0), affine_ras)
    img.set_sform(affine_ras, code="scanner")
    img.set_qform(affine_ras, code="scanner")
    img.header.set_xyzt_units(xyz="mm")
    return img


def from_nifti(img: nibabel.Nifti1Image | str | os.PathLike, metadata: dict | None,
               cls) -> Volume:
    """A Volume from a 3D NIfTI image (or its path): its affine (nibabel's
    best of sform and qform, RAS) is converted to LPS."""
    import nibabel as nib

    if isinstance(img, (str, os.PathLike)):
        img = nib.load(img)
    return _from_lps_affine(np.asanyarray(img.dataobj), ras_to_lps(img.affine), metadata, cls)


def save_nifti(volume: Volume, path: str | os.PathLike) -> None:
    """Write ``volume`` as NIfTI (RAS); ``.nii.gz`` paths are compressed."""
    import nibabel as nib

    nib.save(to_nifti(volume), os.fspath(path))


# MONAI (RAS by default, or LPS)

def to_monai(volume: Volume, space: str = "RAS") -> MetaTensor:
    """A channel-first ``MetaTensor`` ``(1, i, j, k)`` with the metadata MONAI's
    readers set; its affine maps ``(i, j, k, 1)`` to ``space``, "RAS" (MONAI's
    default) or "LPS"."""
    import torch
    from monai.data import MetaTensor
    from monai.utils import MetaKeys, SpaceKeys, convert_to_tensor

    space = SpaceKeys(space)
    affine = volume.affine if space == SpaceKeys.LPS else lps_to_ras(volume.affine)
    meta = {
        MetaKeys.AFFINE: torch.as_tensor(affine, dtype=torch.float64),
        MetaKeys.ORIGINAL_AFFINE: affine.copy(),
        MetaKeys.SPACE: space,
        MetaKeys.SPATIAL_SHAPE: np.asarray(volume.shape[::-1]),
        # As LoadImage(ensure_channel_first=True) leaves it: no channel in the source.
        MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan"),
    }
    return MetaTensor(convert_to_tensor(volume.array.transpose(2, 1, 0)[None]), meta=meta)


def from_monai(tensor: MetaTensor, metadata: dict | None, cls) -> Volume:
    """A Volume from a ``MetaTensor`` ``(1, i, j, k)`` or ``(i, j, k)``; its
    affine is read as RAS or LPS according to ``meta["space"]`` (RAS if unset,
    as MONAI assumes)."""
    from monai.utils import MetaKeys, SpaceKeys

    data = tensor.as_tensor().detach().cpu().numpy()
    if data.ndim == 4 and data.shape[0] == 1:
        data = data[0]
    affine = tensor.affine.detach().cpu().numpy()
    if tensor.meta.get(MetaKeys.SPACE, SpaceKeys.RAS) != SpaceKeys.LPS:
        affine = ras_to_lps(affine)
    return _from_lps_affine(data, affine, metadata, cls)
