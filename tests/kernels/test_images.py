"""pacs.load_images on real files of pydicom's test collections, stored in a
real archive and read back over DICOMweb: every photometric interpretation
they ship decodes to pydicom's own pixels plus its conversion helpers
(colour LUTs, modality LUT), with the cine's timing, the spacing and where
it came from, and a display that windows and inverts MONOCHROME1."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut
from pydicom.uid import generate_uid

from imaginghub.kernels.errors import NotAVolume
from imaginghub.kernels.images import Images, NotStackable


def reference(path: str) -> np.ndarray:
    """pydicom's own pixels of a file, as load_images promises them."""
    ds = pydicom.dcmread(path)
    arr = ds.pixel_array
    if ds.PhotometricInterpretation == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
    elif ds.SamplesPerPixel == 1:
        arr = apply_modality_lut(arr, ds)
    return arr[None] if int(ds.get("NumberOfFrames", 1) or 1) == 1 else arr


def store(pacs, *names: str, series: str | None = None) -> str:
    """The files as instances of one new series (new UIDs: several test
    files share theirs); returns its UID."""
    study, series = generate_uid(), series or generate_uid()
    datasets = []
    for number, name in enumerate(names, start=1):
        ds = pydicom.dcmread(get_testdata_file(name))
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = number
        ds.PatientID, ds.PatientName = "IMAGES-TEST", "Images^Test"  # one patient
        datasets.append(ds)
    pacs.store_instances(datasets, study)
    return series


@pytest.fixture(scope="module")
def pacs(archive):
    return archive.pacs()


@pytest.mark.parametrize("name, photometric, shape", [
    ("OBXXXX1A.dcm", "PALETTE COLOR", (1, 600, 800, 3)),         # ultrasound, 8-bit LUTs
    ("OBXXXX1A_rle_2frame.dcm", "PALETTE COLOR", (2, 600, 800, 3)),
    ("gdcm-US-ALOKA-16.dcm", "PALETTE COLOR", (1, 480, 640, 3)),  # 16-bit LUTs
    ("SC_rgb.dcm", "RGB", (1, 100, 100, 3)),                     # planar configuration 0
    ("color-pl.dcm", "RGB", (1, 120, 256, 3)),                   # planar configuration 1
    ("SC_rgb_16bit_2frame.dcm", "RGB", (2, 100, 100, 3)),
    ("SC_ybr_full_uncompressed.dcm", "YBR_FULL", (1, 100, 100, 3)),
    ("SC_rgb_dcmtk_+eb+cy+np.dcm", "YBR_FULL_422", (1, 100, 100, 3)),  # JPEG baseline
    ("examples_ybr_color.dcm", "YBR_FULL_422", (30, 240, 320, 3)),     # ultrasound cine
    ("RG1_UNCR.dcm", "MONOCHROME1", (1, 1955, 1841)),            # a radiograph
    ("RG1_J2KR.dcm", "MONOCHROME1", (1, 1955, 1841)),
    ("JPGLosslessP14SV1_1s_1f_8b.dcm", "MONOCHROME2", (1, 768, 1024)),  # 8-bit grey US
    ("mlut_18.dcm", "MONOCHROME2", (1, 512, 512)),               # a modality LUT
    ("emri_small_jpeg_ls_lossless.dcm", "MONOCHROME2", (10, 64, 64)),  # 16-bit, 10 frames
])
def test_every_photometric_interpretation_decodes_as_pydicom_does(pacs, name, photometric,
                                                                  shape):
    images = pacs.load_images(store(pacs, name), progress=False)
    assert len(images) == 1 and images.stackable
    inst = images[0]
    expected = reference(get_testdata_file(name))
    assert inst.photometric == photometric
    assert inst.pixels.shape == expected.shape == shape
    assert inst.pixels.dtype == expected.dtype
    assert np.array_equal(inst.pixels, expected)
    assert inst.color == (expected.ndim == 4)
    shown = inst.display(0)
    assert shown.dtype == np.uint8 and shown.shape == expected.shape[1:]


def test_a_cine_has_its_timing_and_the_ultrasound_spacing(pacs):
    images = pacs.load_images(store(pacs, "color3d_jpeg_baseline.dcm"), progress=False)
    inst = images[0]
    assert inst.pixels.shape == (120, 480, 640, 3) and inst.color
    assert inst.frame_time_ms == pytest.approx(33.333, abs=1e-3)
    assert inst.frame_rate == pytest.approx(30.0, abs=0.01)
    assert inst.frame_starts_ms[-1] == pytest.approx(119 * 33.333, abs=0.01)
    assert inst.spacing_source == "SequenceOfUltrasoundRegions"
    ds = pydicom.dcmread(get_testdata_file("color3d_jpeg_baseline.dcm"), stop_before_pixels=True)
    region = ds.SequenceOfUltrasoundRegions[0]
    assert inst.spacing == pytest.approx((10 * region.PhysicalDeltaY, 10 * region.PhysicalDeltaX))
    assert "120 frames" in repr(images) and "30.0 frames/s" in repr(images)


def test_a_long_cine_is_decoded_in_parts_that_join_as_one(pacs, monkeypatch):
    """A compressed cine of many frames is shared among the worker
    processes, a run of frames each; joined, it is pydicom's own decode."""
    from imaginghub.kernels import dicomweb

    path = get_testdata_file("examples_ybr_color.dcm")  # 30 frames, YBR_FULL_422 JPEG
    monkeypatch.setattr(dicomweb, "CINE_PART_FRAMES", 8)
    monkeypatch.setattr(dicomweb.os, "cpu_count", lambda: 3)
    head = pydicom.dcmread(path, stop_before_pixels=True)
    assert dicomweb._frame_parts(head) == [(0, 10), (10, 20), (20, 30)]
    inst = pacs.load_images(store(pacs, "examples_ybr_color.dcm"), progress=False)[0]
    assert np.array_equal(inst.pixels, reference(path))
    assert len(inst.frame_metadata) == 30 and inst.frame_rate == pytest.approx(30.0, abs=0.01)
    monkeypatch.setattr(dicomweb, "CINE_PART_FRAMES", 16)
    assert dicomweb._frame_parts(head) == [None]  # 30 frames: one worker


def test_spacing_comes_from_pixel_spacing_or_the_detector(pacs):
    """RG1's PixelSpacing is 0\\0 (unknown): no spacing rather than a wrong one."""
    assert pacs.load_images(store(pacs, "RG1_UNCR.dcm"), progress=False)[0].spacing is None

    def radiograph(**spacing) -> str:
        ds = pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm"))
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        del ds.PixelSpacing
        for keyword, value in spacing.items():
            setattr(ds, keyword, value)
        pacs.store_instances([ds])
        return ds.SeriesInstanceUID

    inst = pacs.load_images(radiograph(PixelSpacing=[0.15, 0.16]), progress=False)[0]
    assert (inst.spacing, inst.spacing_source) == ((0.15, 0.16), "PixelSpacing")
    inst = pacs.load_images(radiograph(ImagerPixelSpacing=[0.2, 0.2]), progress=False)[0]
    assert (inst.spacing, inst.spacing_source) == ((0.2, 0.2),
                                                   "ImagerPixelSpacing (at the detector)")


def test_monochrome1_is_inverted_only_for_display(pacs):
    """The pixels are the stored values; on screen the lowest value is the
    brightest, after the header's window."""
    inst = pacs.load_images(store(pacs, "RG1_UNCR.dcm"), progress=False)[0]
    values = inst.pixels[0]
    shown = inst.display(0).astype(int)
    ds = pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm"))
    assert np.array_equal(values, apply_modality_lut(ds.pixel_array, ds))
    low, high = np.unravel_index(values.argmin(), values.shape), \
        np.unravel_index(values.argmax(), values.shape)
    assert shown[low] > shown[high]
    center, width = inst.window or (values.mean(), np.ptp(values))
    inside = (values > center - width / 2) & (values < center + width / 2)
    order = np.argsort(values[inside])
    assert np.all(np.diff(shown[inside][order]) <= 0)  # brighter as the value falls


def test_a_voi_lut_of_the_header_is_what_display_applies(pacs):
    inst = pacs.load_images(store(pacs, "vlut_04.dcm"), progress=False)[0]
    ds = pydicom.dcmread(get_testdata_file("vlut_04.dcm"))
    voi = apply_voi_lut(ds.pixel_array, ds).astype(float)
    expected = np.round(255 * (voi - voi.min()) / np.ptp(voi))
    shown = inst.display(0).astype(float)
    # the LUT's output, its own range stretched to 8 bits (it spans this image's)
    assert np.abs(shown - expected).max() <= 1


def test_instances_stack_where_they_match_and_otherwise_are_a_list(pacs):
    same = pacs.load_images(store(pacs, "SC_rgb.dcm", "SC_rgb_2frame.dcm"), progress=False)
    assert same.stackable and same.array.shape == (3, 100, 100, 3) and same.frames == 3
    first, second = reference(get_testdata_file("SC_rgb.dcm")), \
        reference(get_testdata_file("SC_rgb_2frame.dcm"))
    assert np.array_equal(same.array, np.concatenate([first, second]))
    assert same.locate(2)[1] == 1
    mixed = pacs.load_images(store(pacs, "SC_rgb.dcm", "OBXXXX1A.dcm", "CT_small.dcm"),
                             progress=False)
    assert not mixed.stackable and len(mixed) == 3
    with pytest.raises(NotStackable, match=r"1 x 100x100 RGB, 1 x 600x800 PALETTE COLOR.*use "
                                           r"images\.instances"):
        mixed.array
    assert "a list" in repr(mixed)
    assert [i.number for i in mixed] == [1, 2, 3]


def test_load_series_points_to_load_images(pacs):
    series = store(pacs, "SC_rgb.dcm")
    with pytest.raises(NotAVolume, match=r"pacs\.load_images\(series_uid\)"):
        pacs.load_series(series, progress=False)
    assert isinstance(pacs.load_images(series, progress=False), Images)
