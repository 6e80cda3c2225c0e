"""DICOM SEG written and read back against a real Orthanc: exact round trips
on the head phantom (axial, oblique, enhanced multi-frame with shuffled
frames), references to the source, overlap, renumbering, and bad input."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pytest
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid
from tests_support import axial_ct_series

from imaginghub.hub import demo
from imaginghub.kernels.errors import NotFound
from imaginghub.kernels.segmentation import NotASegmentation
from imaginghub.kernels.volume import Volume

PHANTOM_NAMES = {label: name for label, name, *_ in demo.PHANTOM}
# The source CT series of pydicom-data's liver SEG, which is not in the archive.
LIVER_SOURCE_SERIES = "1.2.392.200103.20080913.113635.1.2009.6.22.21.43.10.23430.1"


@pytest.fixture(scope="module")
def pacs(archive):
    pacs = archive.pacs()
    for key in ("mr-head", "mr-head-oblique", "mr-head-enhanced", "seg-liver"):
        pacs.store_instances(list(demo.instances(demo.series(key))))
    return pacs


def phantom_labels_of(volume) -> np.ndarray:
    """The phantom's labels at the centre of every voxel of ``volume``, [k, j, i]."""
    k, j, i = np.indices(volume.shape, dtype=np.float32)
    ijk1 = np.stack([i, j, k, np.ones_like(i)], axis=-1)
    return demo.phantom_labels((ijk1 @ volume.affine.T.astype(np.float32))[..., :3])


def retrieve_seg(pacs, series_uid) -> hd.seg.Segmentation:
    study = pacs.find_series(series_uid)["0020000D"]["Value"][0]
    (ds,) = pacs.retrieve_series(study, series_uid)
    return hd.seg.Segmentation.from_dataset(ds)


@pytest.mark.parametrize("key", ["mr-head", "mr-head-oblique", "mr-head-enhanced"])
def test_round_trip_is_exact(pacs, key):
    s = demo.series(key)
    volume = pacs.load_series(s.series_uid, progress=False)
    frames = volume.metadata["source_frames"]
    assert len(frames) == volume.shape[0]
    assert volume.metadata["SOPClassUID"] == next(demo.instances(s)).SOPClassUID
    labels = phantom_labels_of(volume)
    assert set(np.unique(labels)) == {0, 1, 2, 3}

    seg_uid = pacs.write_segmentation(volume, labels, PHANTOM_NAMES, description=f"{key} labels",
                                      algorithm=("phantom", "1"))
    back, names = pacs.load_segmentation(seg_uid)

    assert names == {1: "brain", 2: "ventricles", 3: "lesion"}
    assert back.array.dtype == np.uint8
    np.testing.assert_array_equal(back.array, labels)
    assert back.shape == volume.shape
    np.testing.assert_allclose(back.affine, volume.affine)
    assert back.metadata["SourceSeriesInstanceUID"] == s.series_uid

    # A valid SEG that references the source series, every source instance and,
    # read through those references alone, gives the same labels.
    seg = retrieve_seg(pacs, seg_uid)
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    assert seg.Manufacturer == "imaginghub" and seg.SeriesDescription == f"{key} labels"
    assert seg.StudyInstanceUID == s.study_uid
    assert [str(r.SeriesInstanceUID) for r in seg.ReferencedSeriesSequence] == [s.series_uid]
    referenced = {str(r.ReferencedSOPInstanceUID)
                  for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    sources = {uid for uid, _ in frames}
    assert referenced == sources
    assert seg.get_segment_description(3).SegmentAlgorithmType == "AUTOMATIC"
    if key == "mr-head-enhanced":
        (sop,) = sources
        by_reference = seg.get_pixels_by_source_frame(
            sop, [number for _, number in frames], combine_segments=True,
            assert_missing_frames_are_empty=True)
    else:
        by_reference = seg.get_pixels_by_source_instance(
            [uid for uid, _ in frames], combine_segments=True,
            assert_missing_frames_are_empty=True)
    np.testing.assert_array_equal(by_reference, labels)


def test_labels_resampled_onto_another_grid(pacs):
    """A SEG drawn on the axial series, put onto the oblique grid (same frame
    of reference) by nearest neighbour: it agrees with the phantom there."""
    axial = pacs.load_series(demo.series("mr-head").series_uid, progress=False)
    oblique = pacs.load_series(demo.series("mr-head-oblique").series_uid, progress=False)
    seg_uid = pacs.write_segmentation(axial, phantom_labels_of(axial), PHANTOM_NAMES)
    back, _ = pacs.load_segmentation(seg_uid, series=oblique)
    truth = phantom_labels_of(oblique)
    assert back.shape == oblique.shape
    np.testing.assert_allclose(back.affine, oblique.affine)
    for label in (1, 2, 3):
        a, b = back.array == label, truth == label
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.9, label


def small_series(n=6, rows=16, cols=20):
    """A CT series stored against the normal (InstanceNumber n - k), slice
    k's pixels all k."""
    _, series, _, out = axial_ct_series(
        n, rows, cols, origin=(-5.0, 3.0, 10.0), spacing=(0.8, 0.6), thickness=2.0,
        pixels=lambda k: k, number=lambda k: n - k,
        PatientID="SEG-1", PatientName="Seg^Test", PatientBirthDate="", PatientSex="",
        StudyDate="20240101", StudyTime="1200", StudyID="1", AccessionNumber="",
        ReferringPhysicianName="", SeriesNumber=4)
    return series, out


def count_segs(pacs, study_uid) -> int:
    return len(pacs.search_for_series(study_uid, search_filters={"Modality": "SEG"}))


def test_overlapping_segments_highest_number_wins(pacs):
    series_uid, sources = small_series()
    pacs.store_instances(sources)
    masks = np.zeros((6, 16, 20, 2), np.uint8)
    masks[1:5, 2:10, 2:12, 0] = 1  # segment 1
    masks[3:6, 6:14, 8:18, 1] = 1  # segment 2, overlapping segment 1
    descriptions = [hd.seg.SegmentDescription(n, name, codes.SCT.Tissue, codes.SCT.Tissue,
                                              "MANUAL") for n, name in ((1, "a"), (2, "b"))]
    seg = hd.seg.Segmentation(sources, masks, "BINARY", descriptions, hd.UID(), 9, hd.UID(), 1,
                              "test", "test", "1", "0")
    pacs.store_instances([seg])
    volume = pacs.load_series(series_uid, progress=False)
    back, names = pacs.load_segmentation(str(seg.SOPInstanceUID))  # by its instance UID
    assert names == {1: "a", 2: "b"}
    # The volume runs along the normal, the instances against it: the
    # datasets' order is the volume's.
    assert [uid for uid, _ in volume.metadata["source_frames"]] == [
        ds.SOPInstanceUID for ds in sources]
    expected = np.where(masks[..., 1] == 1, 2, masks[..., 0])
    np.testing.assert_array_equal(back.array, expected)
    assert (back.array[3:5, 6:10, 8:12] == 2).all()


def test_label_values_are_renumbered_when_not_1_to_n(pacs):
    series_uid, sources = small_series()
    pacs.store_instances(sources)
    volume = pacs.load_series(series_uid, progress=False)
    labels = np.zeros(volume.shape, np.int32)
    labels[0:3, :8] = 7
    labels[2:6, 8:] = 2
    seg_uid = pacs.write_segmentation(volume, labels, {2: "kidney", 7: "liver", 9: "spleen"},
                                      colors={7: (255, 0, 0)})
    back, names = pacs.load_segmentation(seg_uid)
    assert names == {1: "kidney", 2: "liver", 3: "spleen"}
    np.testing.assert_array_equal(back.array, np.select([labels == 2, labels == 7], [1, 2], 0))
    seg = retrieve_seg(pacs, seg_uid)
    assert "RecommendedDisplayCIELabValue" in seg.get_segment_description(2)
    assert seg.get_segment_description(1).SegmentAlgorithmType == "MANUAL"
    # labels given as a Volume on the grid (the one just read)
    again, names = pacs.load_segmentation(pacs.write_segmentation(volume, back, names))
    np.testing.assert_array_equal(again.array, back.array)
    assert names == {1: "kidney", 2: "liver", 3: "spleen"}


def test_missing_source_series_is_a_clear_error(pacs):
    liver = demo.series("seg-liver")
    with pytest.raises(NotFound, match=LIVER_SOURCE_SERIES) as e:
        pacs.load_segmentation(liver.series_uid)
    assert "store that series first" in str(e.value)
    with pytest.raises(NotFound, match=LIVER_SOURCE_SERIES):
        pacs.load_segmentation(demo.uid("instance", "seg-liver/0"))


def test_not_a_segmentation(pacs):
    with pytest.raises(NotASegmentation, match="not a segmentation"):
        pacs.load_segmentation(demo.series("mr-head").series_uid)
    with pytest.raises(NotFound, match="no segmentation series or instance"):
        pacs.load_segmentation(generate_uid())


def test_bad_labels_are_refused_before_anything_is_stored(pacs):
    s = demo.series("mr-head")
    volume = pacs.load_series(s.series_uid, progress=False)
    before = count_segs(pacs, s.study_uid)
    with pytest.raises(ValueError, match=r"shape \(60, 128, 127\)"):
        pacs.write_segmentation(volume, np.zeros((60, 128, 127), np.uint8), {1: "x"})
    labels = np.zeros(volume.shape, np.uint8)
    labels[5, 5, 5] = 4
    with pytest.raises(ValueError, match=r"without a name: \[4\]"):
        pacs.write_segmentation(volume, labels, PHANTOM_NAMES)
    with pytest.raises(ValueError, match="integers"):
        pacs.write_segmentation(volume, labels.astype(np.float32), {4: "x"})
    shifted = Volume(labels, volume.spacing, tuple(np.add(volume.origin, 1.0)), volume.direction)
    with pytest.raises(ValueError, match="not on the grid"):
        pacs.write_segmentation(volume, shifted, {4: "x"})
    assert count_segs(pacs, s.study_uid) == before
