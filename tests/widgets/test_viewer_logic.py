"""The viewer's kernel side: planes shown in radiological orientation for any
stored direction, the readout's world coordinates, windows, labels, 3D."""

from __future__ import annotations

import numpy as np
import pytest

from imaginghub.kernels.volume import Volume
from imaginghub.widgets.viewer import PRESETS, Viewer, auto_window, view


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
    with pytest.raises(ValueError, match="backend"):
        view(vol, backend="vtk")


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
