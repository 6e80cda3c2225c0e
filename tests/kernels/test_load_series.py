"""load_series against a real Orthanc: geometry, ordering, rescale, multi-frame,
encodings, and series that are not volumes."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from imaginghub.kernels.errors import NotAVolume


def make_series(n=12, rows=16, cols=20, spacing=(0.8, 0.6), dz=2.0, origin=(-10.0, 5.0, 30.0),
                row_dir=(1, 0, 0), col_dir=(0, 1, 0), slope=2.0, intercept=-100.0,
                positions=None, sizes=None, orientations=None):
    """A CT series built in memory. Slice with InstanceNumber n+1 lies at
    origin + n*dz*normal unless ``positions`` says else; every pixel of slice n
    stores n + 1 except pixel [1, 2], which stores 1000 + n."""
    study, series = generate_uid(), generate_uid()
    row_dir, col_dir = np.asarray(row_dir, float), np.asarray(col_dir, float)
    normal = np.cross(row_dir, col_dir)
    out = []
    for k in range(n):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientID, ds.PatientName = "GEOM-TEST", "Test^Geometry"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.Modality = "CT"
        ds.InstanceNumber = k + 1
        pos = positions[k] if positions is not None else np.asarray(origin) + k * dz * normal
        o = orientations[k] if orientations is not None else (*row_dir, *col_dir)
        ds.ImagePositionPatient = [f"{v:.6f}" for v in pos]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in o]
        ds.PixelSpacing = list(spacing)
        ds.SliceThickness = dz
        r, c = sizes[k] if sizes is not None else (rows, cols)
        ds.Rows, ds.Columns = r, c
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        px = np.full((r, c), k + 1, np.int16)
        px[1, 2] = 1000 + k
        ds.PixelData = px.tobytes()
        out.append(ds)
    return series, out


def store(archive, datasets, shuffle_seed=None):
    pacs = archive.pacs()
    order = list(range(len(datasets)))
    if shuffle_seed is not None:
        np.random.default_rng(shuffle_seed).shuffle(order)
    pacs.store_instances([datasets[i] for i in order])
    return pacs


def test_shuffled_slices_come_back_ordered_with_geometry(archive):
    uid, dss = make_series(n=12)
    pacs = store(archive, dss, shuffle_seed=3)
    vol = pacs.load_series(uid, progress=False)
    assert vol.shape == (12, 16, 20)
    assert vol.spacing == pytest.approx((0.6, 0.8, 2.0))  # (columns, rows, slices)
    assert vol.origin == pytest.approx((-10.0, 5.0, 30.0))
    np.testing.assert_allclose(vol.direction, np.eye(3))
    # rescale: stored k+1 -> 2*(k+1) - 100
    np.testing.assert_array_equal(vol.array[:, 0, 0], 2 * np.arange(1, 13) - 100)
    assert vol.array.dtype == np.float32
    # [row 1, column 2] of slice 5 lies 2 columns along x and 1 row along y
    assert vol.array[5, 1, 2] == 2 * 1005 - 100
    np.testing.assert_allclose(vol.index_to_world((2, 1, 5)),
                               (-10.0 + 2 * 0.6, 5.0 + 1 * 0.8, 30.0 + 5 * 2.0))


def test_reversed_slice_direction(archive):
    """Instance numbers running against the normal (head-first z decreasing)."""
    uid, dss = make_series(n=8, dz=-3.0, origin=(0.0, 0.0, 100.0))
    vol = store(archive, dss).load_series(uid, progress=False)
    # The volume starts at the lowest position along the normal: the last instance.
    assert vol.origin == pytest.approx((0.0, 0.0, 100.0 - 7 * 3.0))
    assert vol.spacing[2] == pytest.approx(3.0)
    np.testing.assert_array_equal(vol.array[:, 0, 0], 2 * np.arange(8, 0, -1) - 100)


def test_oblique_orientation(archive):
    a = np.deg2rad(30)
    row_dir = (np.cos(a), np.sin(a), 0.0)
    col_dir = (0.0, np.cos(np.deg2rad(20)), -np.sin(np.deg2rad(20)))
    col_dir = np.asarray(col_dir) - np.dot(col_dir, row_dir) * np.asarray(row_dir)
    col_dir /= np.linalg.norm(col_dir)
    uid, dss = make_series(n=10, row_dir=row_dir, col_dir=col_dir, dz=1.5, origin=(3, -4, 12))
    vol = store(archive, dss, shuffle_seed=1).load_series(uid, progress=False)
    normal = np.cross(row_dir, col_dir)
    np.testing.assert_allclose(vol.direction, np.column_stack([row_dir, col_dir, normal]),
                               atol=1e-6)
    assert vol.spacing == pytest.approx((0.6, 0.8, 1.5), abs=1e-5)
    np.testing.assert_array_equal(vol.array[:, 0, 0], 2 * np.arange(1, 11) - 100)
    # The world position of voxel (i, j, k) follows DICOM's equation.
    i, j, k = 4, 7, 6
    expected = (np.array([3, -4, 12]) + k * 1.5 * normal
                + i * 0.6 * np.asarray(row_dir) + j * 0.8 * col_dir)
    np.testing.assert_allclose(vol.index_to_world((i, j, k)), expected, atol=1e-4)
    np.testing.assert_allclose(vol.world_to_index(expected), (i, j, k), atol=1e-6)


def test_missing_slice_is_refused(archive):
    uid, dss = make_series(n=10)
    del dss[4]
    with pytest.raises(NotAVolume, match="missing slice"):
        store(archive, dss).load_series(uid, progress=False)


def test_mixed_orientations_are_refused(archive):
    orientations = [(1, 0, 0, 0, 1, 0)] * 5 + [(1, 0, 0, 0, 0, -1)] * 5
    uid, dss = make_series(n=10, orientations=orientations)
    with pytest.raises(NotAVolume, match="different orientations"):
        store(archive, dss).load_series(uid, progress=False)


def test_differing_sizes_are_refused(archive):
    sizes = [(16, 20)] * 5 + [(16, 24)] * 5
    uid, dss = make_series(n=10, sizes=sizes)
    with pytest.raises(NotAVolume, match="different sizes"):
        store(archive, dss).load_series(uid, progress=False)


def test_duplicate_positions_are_refused(archive):
    positions = [(0, 0, float(k // 2)) for k in range(10)]
    uid, dss = make_series(n=10, positions=positions)
    with pytest.raises(NotAVolume, match="same position"):
        store(archive, dss).load_series(uid, progress=False)


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5"])
def test_many_compressed_instances_decode_in_workers_like_their_twin(archive, syntax):
    """A series long enough to be decoded by worker processes (JPEG 2000
    lossless, RLE) gives exactly the pixels of its uncompressed twin."""
    from imaginghub.kernels.dicomweb import PARALLEL_DECODE_FROM

    n = PARALLEL_DECODE_FROM + 4
    raw_uid, raw = make_series(n=n, rows=32, cols=32)
    twin_uid, twin = make_series(n=n, rows=32, cols=32)
    rng = np.random.default_rng(3)
    for a, b in zip(raw, twin):
        px = rng.integers(-1000, 3000, (32, 32), dtype=np.int16)
        a.PixelData = px.tobytes()
        b.PixelData = px.tobytes()
        b.compress(syntax, encoding_plugin="pylibjpeg" if syntax.endswith("90") else "")
    pacs = store(archive, raw)
    pacs.store_instances(twin)
    expected = pacs.load_series(raw_uid, progress=False)
    got = pacs.load_series(twin_uid, progress=False)
    np.testing.assert_array_equal(got.array, expected.array)
    assert got.origin == expected.origin and got.spacing == expected.spacing


def test_a_corrupt_frame_names_its_instance(archive):
    from imaginghub.kernels.dicomweb import PARALLEL_DECODE_FROM
    from imaginghub.kernels.errors import CorruptData

    for n in (3, PARALLEL_DECODE_FROM + 2):  # decoded in the kernel, and in workers
        uid, datasets = make_series(n=n, rows=32, cols=32)
        for ds in datasets:
            ds.compress("1.2.840.10008.1.2.4.90", encoding_plugin="pylibjpeg")
        bad = datasets[n // 2]
        frame = bytearray(bad.PixelData)
        frame[-40:-8] = b"\xff" * 32  # a broken codestream, correctly encapsulated
        frame[len(frame) // 2:len(frame) // 2 + 16] = b"\x00" * 16
        bad.PixelData = bytes(frame)
        pacs = store(archive, datasets)
        with pytest.raises(CorruptData, match=bad.SOPInstanceUID):
            pacs.load_series(uid, progress=False)
