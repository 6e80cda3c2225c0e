"""pacs against real archives: demo data in every encoding, the archive's
quirks hidden, and clear errors."""

from __future__ import annotations

import time

import numpy as np
import pydicom
import pytest

from imaginghub.hub import demo
from imaginghub.hub.state import free_port
from imaginghub.kernels.dicomweb import PACS
from imaginghub.kernels.errors import ArchiveUnavailable, AuthenticationFailed, NotAVolume, NotFound


@pytest.fixture(scope="module")
def pacs(stack):
    return stack.archive().pacs()


def _load(pacs, key):
    return pacs.load_series(demo.series(key).series_uid, progress=False)


@pytest.mark.parametrize("filters, expected", [
    ({"PatientName": "Demo*"}, len(demo.SERIES)),
    ({"PatientName": "Demo^Head"}, sum(s.patient == "head" for s in demo.SERIES)),
    ({"PatientName": "demo^head"}, sum(s.patient == "head" for s in demo.SERIES)),
    ({"SeriesDescription": "MR head phantom axial"}, 1),
    ({"SeriesDescription": "MR head phantom"}, 0),
    ({"SeriesDescription": "*phantom*"}, sum("phantom" in s.description for s in demo.SERIES)),
    ({"Modality": "CT", "PatientID": "DEMO-00?"}, sum(s.modality == "CT" for s in demo.SERIES)),
])
def test_search_with_wildcards_and_special_characters(pacs, filters, expected):
    assert len(pacs.search_for_series(search_filters=filters)) == expected


def test_reversed_demo_series(pacs):
    vol = _load(pacs, "ct-head-reversed")
    g = demo.GRIDS["ct-head-reversed"]
    assert vol.shape == (g.slices, g.rows, g.cols)
    # stored head-first: the first slot holds the last instance
    np.testing.assert_array_equal(vol.array[:, 0, 0], np.arange(g.slices, 0, -1) - 1024)
    assert vol.origin == pytest.approx(tuple(g.position(g.slices - 1)))


def test_enhanced_multiframe_matches_classic(pacs):
    """The phantom as one Enhanced MR image (frames shuffled, functional
    groups) gives the same volume as the classic series."""
    classic = _load(pacs, "mr-head")
    enhanced = _load(pacs, "mr-head-enhanced")
    assert enhanced.shape == classic.shape == (60, 128, 128)
    np.testing.assert_array_equal(enhanced.array, classic.array)
    assert enhanced.spacing == pytest.approx(classic.spacing)
    assert enhanced.origin == pytest.approx(classic.origin)


def test_real_enhanced_ct(pacs):
    vol = _load(pacs, "ct-enhanced")
    assert vol.shape == (2, 512, 512)
    assert vol.spacing[2] == pytest.approx(10.0)
    # frames at z -159 and -149; the volume runs along its slice normal
    positions = {(99.5, -301.5, -159.0), (99.5, -301.5, -149.0)}
    first = tuple(vol.origin)
    second = tuple(vol.index_to_world((0, 0, 1)))
    assert {tuple(np.round(first, 3)), tuple(np.round(second, 3))} == positions


def test_oblique_phantom_places_the_lesion(pacs):
    """The lesion of the analytic phantom lies where the volume's geometry
    says it is, on the tilted grid as on the axial one."""
    for key in ("mr-head", "mr-head-oblique"):
        vol = _load(pacs, key)
        centre = np.array(demo.PHANTOM[2][2])
        i, j, k = np.round(vol.world_to_index(centre)).astype(int)
        assert 850 < vol.array[k, j, i] < 950, key  # lesion signal 900 plus noise


def test_compressed_single_frames_decode(pacs):
    raw = _load(pacs, "ct-slice")
    j2k = _load(pacs, "ct-slice-j2k")
    np.testing.assert_array_equal(raw.array, j2k.array)
    assert raw.array.min() >= -3024


@pytest.mark.parametrize("key", ["mr-enhanced-rle", "mr-enhanced-jpegls", "mr-enhanced-j2k",
                                 "nm-jpeg-lossless", "nm-jpeg-lossy", "sc-jpeg-baseline",
                                 "mr-small-rle"])
def test_every_encoding_decodes(pacs, key):
    s = demo.series(key)
    sop = demo.uid("instance", f"{key}/0")
    ds = pacs.retrieve_instance(s.study_uid, s.series_uid, sop)
    reference = pydicom.dcmread(demo.to_bytes_path(s))
    np.testing.assert_array_equal(ds.pixel_array, reference.pixel_array)
    if key.startswith("mr-enhanced"):
        plain = pydicom.dcmread(demo.to_bytes_path(demo.series("mr-enhanced")))
        np.testing.assert_array_equal(ds.pixel_array, plain.pixel_array)


def test_images_without_geometry_are_not_volumes(pacs):
    with pytest.raises(NotAVolume, match="no image position"):
        _load(pacs, "nm-jpeg-lossless")


def test_frames_in_stored_syntax(pacs):
    s = demo.series("mr-head-enhanced")
    frames = pacs.retrieve_instance_frames(s.study_uid, s.series_uid,
                                           demo.uid("instance", "mr-head-enhanced/0"), [1, 2])
    assert [len(f) for f in frames] == [128 * 128 * 2] * 2
    first = np.frombuffer(frames[0], np.int16).reshape(128, 128)
    index = int(demo.ENHANCED_FRAME_ORDER[0])
    np.testing.assert_array_equal(first, demo.built_slice("mr-head", index))


def test_store_dataset_built_in_memory(archive):
    """A dataset made in memory (no preamble, no file meta) is stored and reads back."""
    from tests_support import in_memory_ct

    pacs = archive.pacs()
    ds = in_memory_ct()
    pacs.store_instances([ds])
    back = pacs.retrieve_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    np.testing.assert_array_equal(back.pixel_array, np.arange(64, dtype=np.int16).reshape(8, 8))


def test_unknown_series_is_not_found(archive):
    with pytest.raises(NotFound, match="not found"):
        archive.pacs().load_series("1.2.3.4.5.6.7.8.9", progress=False)


def test_archive_down_is_a_clear_error_without_hanging():
    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    pacs = PACS(url, username="x", password="y")
    t = time.monotonic()
    with pytest.raises(ArchiveUnavailable) as e:
        pacs.search_for_series()
    assert url in str(e.value)
    with pytest.raises(ArchiveUnavailable, match="127.0.0.1"):
        pacs.load_series("1.2.3", progress=False)
    assert time.monotonic() - t < 30


def test_wrong_password_is_a_clear_error(archive):
    pacs = PACS(archive.dicomweb_url, username=archive.auth[0], password="wrong")
    with pytest.raises(AuthenticationFailed, match="refused the credentials"):
        pacs.search_for_studies()
    with pytest.raises(AuthenticationFailed):
        pacs.load_series("1.2.3", progress=False)


def test_unconfigured_client_says_what_to_set():
    with pytest.raises(Exception, match="IMAGINGHUB_DICOMWEB_URL"):
        PACS.from_env({}).search_for_series()
