"""Volume <-> SimpleITK, NIfTI (nibabel) and MONAI: the same voxel at the same
physical point, checked through each library's own API (no archive needed)."""

from __future__ import annotations

import math
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.data.utils import orientation_ras_lps
from monai.transforms import LoadImage, Orientation
from monai.utils import MetaKeys, SpaceKeys

from imaginghub.kernels.volume import Volume

IJK = (4, 2, 3)  # the marked voxel, (i, j, k): array[3, 2, 4]
MARK = 1000
FLIP = np.array([-1.0, -1.0, 1.0])  # LPS <-> RAS for a point


def rotation(axis: int, degrees: float) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    a, b = [n for n in range(3) if n != axis]
    r = np.eye(3)
    r[a, a], r[a, b], r[b, a], r[b, b] = c, -s, s, c
    return r


def make_volume(dtype=np.float32) -> Volume:
    shape_kji = (5, 6, 7)
    array = (np.arange(np.prod(shape_kji)) % 97).reshape(shape_kji).astype(dtype)
    i, j, k = IJK
    array[k, j, i] = MARK
    return Volume(
        array=array,
        spacing=(0.7, 0.9, 2.5),
        origin=(-120.5, 35.25, 80.0),
        direction=rotation(2, 20) @ rotation(0, 20),
        metadata={"SeriesDescription": "oblique phantom"},
    )


@pytest.fixture(params=[np.float32, np.int16], ids=["float32", "int16"])
def volume(request) -> Volume:
    return make_volume(request.param)


def assert_same_volume(got: Volume, want: Volume, atol: float = 1e-9) -> None:
    assert got.array.dtype == want.array.dtype
    np.testing.assert_array_equal(got.array, want.array)
    np.testing.assert_allclose(got.spacing, want.spacing, atol=atol)
    np.testing.assert_allclose(got.origin, want.origin, atol=atol)
    np.testing.assert_allclose(got.direction, want.direction, atol=atol)


def test_fixture_is_oblique_and_anisotropic():
    v = make_volume()
    assert np.abs(v.direction - np.eye(3)).max() > 0.3
    np.testing.assert_allclose(v.direction.T @ v.direction, np.eye(3), atol=1e-12)
    # The marked voxel is not where a transposed or flipped layout would put it.
    assert v.array[3, 2, 4] == MARK and v.array[4, 2, 3] != MARK


def test_importing_volume_does_not_import_the_libraries():
    code = ("import sys, imaginghub.kernels.volume; print(sorted(m for m in "
            "('SimpleITK', 'nibabel', 'monai', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# SimpleITK (LPS)

def test_sitk_geometry_and_value(volume):
    image = volume.to_sitk()
    assert image.GetSize() == (7, 6, 5)
    assert image.GetPixelID() == {np.float32: sitk.sitkFloat32,
                                  np.int16: sitk.sitkInt16}[volume.array.dtype.type]
    np.testing.assert_allclose(image.TransformIndexToPhysicalPoint(IJK),
                               volume.index_to_world(IJK), atol=1e-9)
    cont = (4.5, 2.25, 3.75)
    np.testing.assert_allclose(image.TransformContinuousIndexToPhysicalPoint(cont),
                               volume.index_to_world(cont), atol=1e-9)
    assert image[IJK] == MARK  # SimpleITK indexes (i, j, k)
    # And back: the world point of the voxel finds that voxel.
    assert image.TransformPhysicalPointToIndex(tuple(volume.index_to_world(IJK))) == IJK


def test_sitk_round_trip(volume):
    back = Volume.from_sitk(volume.to_sitk(), metadata=volume.metadata)
    assert_same_volume(back, volume)
    assert back.metadata == volume.metadata
    assert not np.shares_memory(back.array, volume.array)


def test_sitk_takes_a_non_contiguous_array():
    v = make_volume()
    f_ordered = Volume(np.asfortranarray(v.array), v.spacing, v.origin, v.direction)
    assert f_ordered.to_sitk()[IJK] == MARK
    assert_same_volume(Volume.from_sitk(f_ordered.to_sitk()), v)


# NIfTI (RAS)

def test_nifti_geometry_and_value(volume):
    img = volume.to_nifti()
    assert img.shape == (7, 6, 5)
    assert img.get_data_dtype() == volume.array.dtype
    assert np.asanyarray(img.dataobj)[IJK] == MARK  # NIfTI indexes (i, j, k)
    ras = (img.affine @ [*IJK, 1])[:3]
    np.testing.assert_allclose(ras * FLIP, volume.index_to_world(IJK), atol=1e-9)
    assert img.header.get_sform(coded=True)[1] == 1
    assert img.header.get_qform(coded=True)[1] == 1
    assert img.header.get_xyzt_units()[0] == "mm"
    # The qform (a rotation) describes the same geometry as the sform.
    np.testing.assert_allclose(img.header.get_qform(), img.header.get_sform(), atol=1e-4)


def test_nifti_round_trip(volume):
    back = Volume.from_nifti(volume.to_nifti(), metadata=volume.metadata)
    assert_same_volume(back, volume)
    assert back.array.flags.c_contiguous


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_file_keeps_geometry(volume, tmp_path, suffix):
    path = tmp_path / f"v{suffix}"
    volume.save_nifti(path)
    img = nib.load(path)
    assert img.shape == (7, 6, 5)
    assert img.get_data_dtype() == volume.array.dtype
    assert np.asanyarray(img.dataobj)[IJK] == MARK
    ras = (img.affine @ [*IJK, 1])[:3]
    np.testing.assert_allclose(ras * FLIP, volume.index_to_world(IJK), atol=1e-4)
    # The header stores float32, hence the tolerance.
    assert_same_volume(Volume.from_nifti(img), volume, atol=1e-5)
    assert_same_volume(Volume.from_nifti(path), volume, atol=1e-5)


def test_from_nifti_any_affine():
    """A NIfTI not written by us: axes permuted and flipped, sheared, RAS affine."""
    data = np.arange(4 * 3 * 2, dtype=np.float32).reshape(4, 3, 2)  # (i, j, k)
    affine_ras = np.array([[0.0, -2.0, 0.3, 10.0],
                           [1.5, 0.0, 0.0, -20.0],
                           [0.0, 0.2, -3.0, 30.0],
                           [0.0, 0.0, 0.0, 1.0]])
    v = Volume.from_nifti(nib.Nifti1Image(data, affine_ras))
    assert v.shape == (2, 3, 4)
    for ijk in [(0, 0, 0), (3, 1, 0), (2, 2, 1)]:
        assert v.array[ijk[::-1]] == data[ijk]
        np.testing.assert_allclose(v.index_to_world(ijk),
                                   (affine_ras @ [*ijk, 1])[:3] * FLIP, atol=1e-9)


# MONAI (RAS by default, or LPS)

def test_monai_geometry_and_value(volume):
    t = volume.to_monai()
    assert t.shape == (1, 7, 6, 5)
    assert t.dtype == torch.from_numpy(volume.array).dtype
    assert t[(0, *IJK)] == MARK
    assert t.affine.dtype == torch.float64
    ras = (t.affine @ torch.tensor([*IJK, 1.0], dtype=torch.float64))[:3].numpy()
    np.testing.assert_allclose(ras * FLIP, volume.index_to_world(IJK), atol=1e-9)
    assert t.meta[MetaKeys.SPACE] == SpaceKeys.RAS
    np.testing.assert_array_equal(t.meta[MetaKeys.ORIGINAL_AFFINE], t.affine.numpy())
    np.testing.assert_array_equal(t.meta[MetaKeys.SPATIAL_SHAPE], (7, 6, 5))
    assert math.isnan(t.meta[MetaKeys.ORIGINAL_CHANNEL_DIM])
    np.testing.assert_allclose(t.pixdim, volume.spacing, atol=1e-9)


def test_monai_lps(volume):
    t = volume.to_monai(space="LPS")
    assert t.meta[MetaKeys.SPACE] == SpaceKeys.LPS
    np.testing.assert_allclose(t.affine.numpy(), volume.affine, atol=1e-12)
    # MONAI's own RAS/LPS conversion takes it to the RAS tensor's affine.
    np.testing.assert_allclose(orientation_ras_lps(t.affine).numpy(),
                               volume.to_monai().affine.numpy(), atol=1e-12)
    with pytest.raises(ValueError):
        volume.to_monai(space="XYZ")


@pytest.mark.parametrize("space", ["RAS", "LPS"])
def test_monai_round_trip(volume, space):
    back = Volume.from_monai(volume.to_monai(space=space), metadata=volume.metadata)
    assert_same_volume(back, volume)
    assert back.metadata == volume.metadata
    assert back.array.flags.c_contiguous  # as VolumeBuilder makes them


def test_monai_matches_load_image(volume, tmp_path):
    path = tmp_path / "v.nii.gz"
    volume.save_nifti(path)
    ours = volume.to_monai()

    raw = LoadImage(image_only=True, reader="NibabelReader", dtype=None)(path)
    assert raw.shape == (7, 6, 5)  # no channel in the file...
    assert math.isnan(raw.meta[MetaKeys.ORIGINAL_CHANNEL_DIM])

    loaded = LoadImage(image_only=True, reader="NibabelReader", dtype=None,
                       ensure_channel_first=True)(path)
    assert loaded.shape == ours.shape == (1, 7, 6, 5)  # ...so one is added in front
    assert loaded.dtype == ours.dtype
    assert torch.equal(loaded.as_tensor(), ours.as_tensor())
    assert loaded.is_contiguous() and ours.is_contiguous()
    np.testing.assert_allclose(loaded.affine.numpy(), ours.affine.numpy(), atol=1e-4)
    np.testing.assert_allclose(loaded.meta[MetaKeys.ORIGINAL_AFFINE],
                               ours.meta[MetaKeys.ORIGINAL_AFFINE], atol=1e-4)
    assert loaded.meta[MetaKeys.SPACE] == ours.meta[MetaKeys.SPACE] == SpaceKeys.RAS
    np.testing.assert_array_equal(loaded.meta[MetaKeys.SPATIAL_SHAPE],
                                  ours.meta[MetaKeys.SPATIAL_SHAPE])
    assert math.isnan(loaded.meta[MetaKeys.ORIGINAL_CHANNEL_DIM])
    assert math.isnan(ours.meta[MetaKeys.ORIGINAL_CHANNEL_DIM])

    # MONAI's transforms treat both alike: reorient to the closest RAS axes.
    to_ras = Orientation(axcodes="RAS", labels=None)  # labels from meta["space"]
    a, b = to_ras(loaded), to_ras(ours)
    assert a.shape == b.shape and torch.equal(a.as_tensor(), b.as_tensor())
    np.testing.assert_allclose(a.affine.numpy(), b.affine.numpy(), atol=1e-4)

    assert_same_volume(Volume.from_monai(loaded), volume, atol=1e-5)


# Across libraries

def test_sitk_file_read_by_nibabel(volume, tmp_path):
    path = tmp_path / "sitk.nii.gz"
    sitk.WriteImage(volume.to_sitk(), str(path))
    img = nib.load(path)
    assert np.asanyarray(img.dataobj)[IJK] == MARK
    ras = (img.affine @ [*IJK, 1])[:3]
    np.testing.assert_allclose(ras * FLIP, volume.index_to_world(IJK), atol=1e-4)
    assert_same_volume(Volume.from_nifti(img), volume, atol=1e-5)


def test_our_nifti_read_by_sitk(volume, tmp_path):
    path = tmp_path / "ours.nii.gz"
    volume.save_nifti(path)
    image = sitk.ReadImage(str(path))
    assert image[IJK] == MARK
    np.testing.assert_allclose(image.TransformIndexToPhysicalPoint(IJK),
                               volume.index_to_world(IJK), atol=1e-4)
