"""The viewer's kernel side: planes shown in radiological orientation for any
stored direction, the readout's world coordinates, windows, labels, 3D."""

from __future__ import annotations

import numpy as np
import pytest

from imaginghub.kernels.volume import Volume
from imaginghub.widgets.viewer import (PALETTE, PRESETS, Viewer, auto_window, label_colormap,
                                       niivue_images, view)


def rotation(axis: int, degrees: float) -> np.ndarray:
    c, s = np.cos(np.deg2rad(degrees)), np.sin(np.deg2rad(degrees))
    r = np.eye(3)
    a, b = [x for x in range(3) if x != axis]
    r[a, a], r[a, b], r[b, a], r[b, b] = c, -s, s, c
    return r


DIRECTIONS = {
    "axial": np.eye(3),
    "axial, stored right to left and feet first": np.diag([-1.0, 1.0, -1.0]),
    "coronal acquisition": np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]]),
    "axial tilted 20 degrees": rotation(0, 20.0),
}


def marker_volume(direction: np.ndarray) -> tuple[Volume, dict]:
    """A cube with one marker voxel towards each of the patient's left,
    superior and anterior sides (values 100, 200, 300)."""
    n = 21
    vol = Volume(np.zeros((n, n, n), np.float32), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0),
                 direction, {"Modality": "MR"})
    centre = np.array([10, 10, 10])
    world_dir = {"left": np.array([1.0, 0, 0]), "superior": np.array([0, 0, 1.0]),
                 "anterior": np.array([0, -1.0, 0])}
    where = {}
    for value, (side, d) in zip((100, 200, 300), world_dir.items()):
        ijk = np.rint(centre + 8 * (np.linalg.inv(direction) @ d)).astype(int)
        vol.array[ijk[2], ijk[1], ijk[0]] = value
        where[side] = ijk
    return vol, where


def shown_at(viewer: Viewer, plane: int, value: float) -> tuple[int, int]:
    img = viewer.slice(plane)
    ys, xs = np.nonzero(img == value)
    assert len(xs) == 1, f"value {value} not in plane {plane}"
    return int(xs[0]), int(ys[0])


@pytest.mark.parametrize("name", DIRECTIONS)
def test_planes_in_radiological_orientation(name):
    vol, where = marker_volume(DIRECTIONS[name])
    v = Viewer(vol)
    names = [p["name"] for p in v.planes]
    assert sorted(names) == ["axial", "coronal", "sagittal"]
    plane = {p["name"]: n for n, p in enumerate(v.planes)}
    mid = v.slice(0).shape[1] // 2
    # axial through the left marker: the patient's left is on the screen's right
    v.position = [int(x) for x in where["left"]]
    x, _ = shown_at(v, plane["axial"], 100)
    assert x > mid
    x, _ = shown_at(v, plane["coronal"], 100)
    assert x > mid
    # superior is up on coronal and sagittal
    v.position = [int(x) for x in where["superior"]]
    _, y = shown_at(v, plane["coronal"], 200)
    assert y < mid
    _, y = shown_at(v, plane["sagittal"], 200)
    assert y < mid
    # anterior is up on axial and on the left of sagittal
    v.position = [int(x) for x in where["anterior"]]
    _, y = shown_at(v, plane["axial"], 300)
    assert y < mid
    x, _ = shown_at(v, plane["sagittal"], 300)
    assert x < mid


def test_readout_gives_world_position_value_and_label():
    direction = rotation(2, 30.0)
    vol = Volume(np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6), (0.5, 0.8, 2.0),
                 (-10.0, 20.0, 5.0), direction, {"Modality": "CT"})
    labels = np.zeros(vol.shape, np.uint8)
    labels[3, 2, 1] = 7
    v = Viewer(vol, labels, names={7: "nodule"})
    v.position = [1, 2, 3]
    x, y, z = vol.index_to_world((1, 2, 3))
    assert f"LPS ({x:.1f}, {y:.1f}, {z:.1f}) mm" in v.readout
    assert f"value {vol.array[3, 2, 1]:.6g}" in v.readout
    assert "label 7 (nodule)" in v.readout
    assert v.legend == [{"value": 7, "name": "nodule", "color": v.legend[0]["color"]}]


def test_windows_presets_and_auto():
    rng = np.random.default_rng(1)
    ct = Volume(rng.normal(0, 300, (8, 16, 16)).astype(np.float32), (1, 1, 1), (0, 0, 0),
                np.eye(3), {"Modality": "CT"})
    assert Viewer(ct).window == list(PRESETS["soft tissue"])
    v = Viewer(ct, preset="lung")
    assert v.window == list(PRESETS["lung"])
    img = np.frombuffer(v.image0, np.uint8)
    lo = PRESETS["lung"][1] - PRESETS["lung"][0] / 2
    expect = np.clip((v.slice(0) - lo) * 255 / PRESETS["lung"][0], 0, 255).astype(np.uint8)
    assert np.array_equal(img, expect.ravel())
    assert {p["name"] for p in v.presets} == set(PRESETS)
    mr = Volume(np.concatenate([np.zeros((4, 16, 16)), rng.uniform(1000, 2000, (4, 16, 16))])
                .astype(np.float32), (1, 1, 1), (0, 0, 0), np.eye(3), {"Modality": "MR"})
    width, level = auto_window(mr.array)
    assert 900 < width < 1000 and 1450 < level < 1550  # background ignored
    assert Viewer(mr).presets == []
    with pytest.raises(ValueError, match="unknown preset"):
        Viewer(ct, preset="liver-ish")


def test_labels_must_be_on_the_volume_grid():
    vol = Volume(np.zeros((4, 5, 6), np.float32), (1, 1, 1), (0, 0, 0), np.eye(3))
    with pytest.raises(ValueError, match="same grid"):
        view(vol, np.zeros((4, 6, 5), np.uint8))
    moved = Volume(np.zeros((4, 5, 6), np.uint8), (1, 1, 1), (5, 0, 0), np.eye(3))
    with pytest.raises(ValueError, match="elsewhere"):
        view(vol, moved)
    with pytest.raises(ValueError, match="backend") as raised:
        view(vol, backend="vtk")
    for backend in ("'slices'", "'niivue'", "'itkwidgets'"):
        assert backend in str(raised.value)


def test_3d_view_turns_about_the_long_axis():
    """A labelled blob on the patient's left shows on the screen's right seen
    from the front, and on the left after a half turn."""
    vol = Volume(np.zeros((30, 40, 40), np.float32), (1, 1, 2.0), (0, 0, 0), np.eye(3),
                 {"Modality": "MR"})
    labels = np.zeros(vol.shape, np.uint8)
    labels[10:20, 15:25, 30:36] = 2  # large i: the patient's left (LPS +x)
    vol.array[labels > 0] = 500
    v = Viewer(vol, labels)
    h, w = v.render3d_shape
    shown = np.frombuffer(v.render3d, np.uint8)[h * w:].reshape(h, w)
    xs = np.nonzero(shown == 2)[1]
    assert xs.size and xs.mean() > w / 2
    v.angle = 180.0
    h, w = v.render3d_shape
    shown = np.frombuffer(v.render3d, np.uint8)[h * w:].reshape(h, w)
    xs = np.nonzero(shown == 2)[1]
    assert xs.size and xs.mean() < w / 2


def _ras_to_lps(affine: np.ndarray, ijk) -> np.ndarray:
    xyz = (affine @ np.append(np.asarray(ijk, float), 1.0))[:3]
    return xyz * np.array([-1.0, -1.0, 1.0])


def test_niivue_gets_a_small_uint8_copy_in_the_same_place():
    """What backend="niivue" sends: windowed uint8, no edge above max_edge,
    every voxel where it was in the patient; the labels on the same grid."""
    rng = np.random.default_rng(3)
    vol = Volume(rng.normal(40, 200, (45, 130, 97)).astype(np.int16), (0.8, 0.9, 2.5),
                 (-50.0, 30.0, 12.0), rotation(0, 20.0) @ rotation(2, 10.0),
                 {"Modality": "CT"})
    labels = np.zeros(vol.shape, np.uint8)
    labels[10:30, 40:90, 20:60] = 1
    labels[20:25, 60:70, 30:40] = 2
    labels[40:44, 5:15, 80:90] = 17  # far from the others, in a corner
    image, lab = niivue_images(vol, labels, max_edge=32)
    ni, nj, nk = 97, 130, 45
    steps = [int(np.ceil(n / 32)) for n in (ni, nj, nk)]  # 4, 5, 2
    expect = tuple(int(np.ceil(n / s)) for n, s in zip((ni, nj, nk), steps))
    assert image.shape == lab.shape == expect and max(expect) <= 32
    data = np.asarray(image.dataobj)
    assert data.dtype == np.uint8 and image.get_data_dtype() == np.uint8
    assert np.asarray(lab.dataobj).dtype == np.uint8
    # what travels: NIfTI bytes that read back the same
    import nibabel as nib
    back = nib.Nifti1Image.from_bytes(image.to_bytes())
    assert np.array_equal(np.asarray(back.dataobj), data)
    assert np.allclose(back.affine, image.affine, atol=1e-4)

    half = 0.5 * np.array(vol.spacing) * steps  # half a downsampled voxel, per axis (mm)
    def close(p, q):  # within half a downsampled voxel along each of the volume's axes
        d = np.linalg.inv(vol.direction) @ (np.asarray(p) - np.asarray(q))
        return np.all(np.abs(d) <= half + 1e-6)
    # the centre of the volume and its corners
    centre_small = _ras_to_lps(back.affine, (np.array(expect) - 1) / 2)
    assert close(centre_small, vol.index_to_world((np.array([ni, nj, nk]) - 1) / 2))
    for corner in np.ndindex(2, 2, 2):
        small = np.array(corner) * (np.array(expect) - 1)
        original = np.array(corner) * (np.array([ni, nj, nk]) - 1)
        assert close(_ras_to_lps(back.affine, small), vol.index_to_world(original)), corner
    # each sample is an original voxel, windowed as the slices backend does, in its place
    for ijk in [(0, 0, 0), (3, 7, 11), tuple(np.array(expect) - 1)]:
        at = _ras_to_lps(back.affine, ijk)
        i, j, k = np.rint(vol.world_to_index(at)).astype(int)
        assert np.allclose(vol.index_to_world((i, j, k)), at, atol=1e-3)
        width, level = PRESETS["soft tissue"]
        v = np.clip((np.float32(vol.array[k, j, i]) - (level - width / 2)) * 255 / width, 0, 255)
        assert data[ijk] == np.uint8(v)
    # labels: the same values, on the same grid
    assert np.allclose(lab.affine, image.affine)
    small_labels = np.asarray(lab.dataobj)
    assert set(np.unique(small_labels)) == set(np.unique(labels)) == {0, 1, 2, 17}
    i, j, k = np.rint(vol.world_to_index(_ras_to_lps(lab.affine, (20, 20, 10)))).astype(int)
    assert small_labels[20, 20, 10] == labels[k, j, i]
    # a volume already small enough travels whole
    image, lab = niivue_images(vol, labels, max_edge=256)
    assert image.shape == (ni, nj, nk)
    assert np.array_equal(np.asarray(lab.dataobj), labels.transpose(2, 1, 0))


def test_niivue_label_colours_and_names_match_the_slices_backend():
    labels = np.zeros((4, 5, 6), np.uint8)
    labels[0, 0, :3] = [1, 3, 17]
    cmap = label_colormap(labels, {1: "brain", 3: "lesion"})
    assert cmap["I"] == list(range(18))
    for v, name in [(1, "brain"), (3, "lesion"), (17, "label 17")]:
        colour = (cmap["R"][v], cmap["G"][v], cmap["B"][v])
        assert colour == PALETTE[(v - 1) % len(PALETTE)] and cmap["A"][v] == 255
        assert cmap["labels"][v] == name
    assert cmap["A"][0] == cmap["A"][2] == 0 and cmap["labels"][2] == ""
    # 16-bit labels fold into 8 bits as in the slices backend, keeping their colour
    wide = np.array([0, 2, 300], np.uint16)
    folded = label_colormap(wide, {300: "many"})
    assert folded["labels"][45] == "many" and folded["labels"][2] == "label 2"
    assert (folded["R"][45], folded["G"][45], folded["B"][45]) == PALETTE[(300 - 1) % 15]
    vol = Volume(np.zeros((4, 5, 6), np.float32), (1, 1, 1), (0, 0, 0), np.eye(3))
    v = Viewer(vol, labels, names={1: "brain", 3: "lesion"})
    assert [(e["value"], e["name"], tuple(e["color"])) for e in v.legend] == [
        (v, cmap["labels"][v], (cmap["R"][v], cmap["G"][v], cmap["B"][v])) for v in (1, 3, 17)]


def test_niivue_widget():
    pytest.importorskip("ipyniivue")
    vol = Volume(np.zeros((20, 40, 30), np.float32), (1, 1, 2), (0, 0, 0), np.eye(3),
                 {"Modality": "MR"})
    vol.array[5:15, 10:30, 5:25] = 100
    labels = (vol.array > 0).astype(np.uint8) * 2
    shown = view(vol, labels, names={2: "box"}, backend="niivue", max_edge=16, opacity=0.3)
    assert type(shown.niivue).__name__ == "NiiVue"
    assert "2 box" in shown.legend.value and "rgb(60, 180, 75)" in shown.legend.value
    image, lab = shown.niivue.volumes
    assert image.name.endswith(".nii") and image.cal_min == 0 and image.cal_max == 255
    assert lab.opacity == pytest.approx(0.3)
    assert lab.colormap_label.labels[2] == "box"
    assert lab.colormap_label.lut[8:12] == [*PALETTE[1], 255]


def test_niivue_missing_says_so(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "ipyniivue", None)
    vol = Volume(np.zeros((4, 5, 6), np.float32), (1, 1, 1), (0, 0, 0), np.eye(3))
    with pytest.raises(ImportError, match="backend='niivue' needs the ipyniivue package"):
        view(vol, backend="niivue")
