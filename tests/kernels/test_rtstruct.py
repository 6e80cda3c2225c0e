"""RT Structure Sets read as labels: pydicom's own rtstruct.dcm (read with
force=True) made into the structure set of a CT series stored in a real
archive, with contours of known shapes (a box, a sphere, a body around
both): the labels match the shapes, overlapping ROIs keep their masks, and
a missing referenced series is named."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset
from tests_support import axial_ct_series, structure_set

from imaginghub.kernels.errors import NotFound

SPACING, THICKNESS, SIZE, SLICES = 1.5, 2.0, 64, 24
ORIGIN = np.array([-48.0, -40.0, -20.0])


@pytest.fixture(scope="module")
def pacs(archive):
    return archive.pacs()


def ct_series() -> tuple[str, str, str, list[Dataset]]:
    return axial_ct_series(SLICES, SIZE, SIZE, origin=ORIGIN, spacing=(SPACING, SPACING),
                           thickness=THICKNESS, PatientID="RT-1")


def world(i, j, k):
    return ORIGIN + np.array([SPACING * i, SPACING * j, THICKNESS * k])


def box_contours(i0, i1, j0, j1, k0, k1):
    """Closed contours through the voxels' outer edges: the box's voxels,
    exactly, are inside."""
    for k in range(k0, k1 + 1):
        corners = [(i0 - .5, j0 - .5), (i1 + .5, j0 - .5), (i1 + .5, j1 + .5), (i0 - .5, j1 + .5)]
        yield [c for i, j in corners for c in world(i, j, k)]


def sphere_contours(center_mm, radius, n=72):
    for k in range(SLICES):
        z = world(0, 0, k)[2]
        r2 = radius ** 2 - (z - center_mm[2]) ** 2
        if r2 <= 0:
            continue
        r = np.sqrt(r2)
        t = np.linspace(0, 2 * np.pi, n, endpoint=False)
        yield [c for a in t for c in (center_mm[0] + r * np.cos(a), center_mm[1] + r * np.sin(a), z)]


def test_an_rtstruct_becomes_labels_on_its_series_grid(pacs):
    study, series, frame, images = ct_series()
    pacs.store_instances(images, study)
    center = world(40, 30, 12)
    rs = structure_set(study, series, frame, {
        1: ("body", list(box_contours(2, 61, 2, 61, 0, SLICES - 1))),
        2: ("box", list(box_contours(8, 20, 10, 25, 3, 9))),
        3: ("sphere", list(sphere_contours(center, 9.0))),
    })
    pacs.store_instances([rs], study)

    labels, names = pacs.load_segmentation(str(rs.SeriesInstanceUID))
    assert names == {1: "body", 2: "box", 3: "sphere"}
    assert labels.shape == (SLICES, SIZE, SIZE) and labels.metadata["Modality"] == "RTSTRUCT"
    assert np.array_equal(labels.origin, ORIGIN) and labels.spacing == pytest.approx(
        (SPACING, SPACING, THICKNESS))
    box = np.zeros(labels.shape, bool)
    box[3:10, 10:26, 8:21] = True  # [k, j, i]
    assert np.array_equal(labels.array == 2, box)  # exact
    k, j, i = np.indices(labels.shape)
    pts = ORIGIN + np.stack([SPACING * i, SPACING * j, THICKNESS * k], axis=-1)
    sphere = np.linalg.norm(pts - center, axis=-1) <= 9.0
    got = labels.array == 3
    assert 2 * (got & sphere).sum() / (got.sum() + sphere.sum()) >= 0.95
    # the body holds the others: as labels they win, as masks each is whole
    _, _, masks = pacs.load_segmentation(str(rs.SOPInstanceUID), masks=True)
    assert masks[1][box].all() and masks[1][sphere & (labels.array > 0)].all()
    assert np.array_equal(masks[2], box)
    body = np.zeros(labels.shape, bool)
    body[:, 2:62, 2:62] = True
    assert np.array_equal(masks[1], body)
    assert (labels.array == 1).sum() == body.sum() - box.sum() - got.sum()


def test_a_missing_referenced_series_is_named(pacs):
    study, series, frame, _ = ct_series()  # the images are never stored
    rs = structure_set(study, series, frame, {1: ("box", list(box_contours(1, 3, 1, 3, 0, 1)))})
    pacs.store_instances([rs], study)
    with pytest.raises(NotFound, match=rf"the series {series} that structure set .* is not in "
                                       r"the archive"):
        pacs.load_segmentation(str(rs.SeriesInstanceUID))
