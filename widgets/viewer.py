"""``view(volume, seg=None)``: three orthogonal planes and a 3D rendering of a
volume, with its segmentation, in any notebook, offline.

The kernel cuts and windows the slices (numpy, a millisecond or two each) and
sends them as 8-bit binary buffers: a 512 x 512 x 300 CT opens as fast as a
small one, because only the three visible planes and one small 3D image ever
travel, never the volume. The browser (``viewer.js``, an anywidget module
that ships in this package: no CDN) colours the labels, blends them with the
chosen opacity, draws the crosshair, and turns wheel, clicks and drags into
new positions, windows and view angles.

Planes are the volume's own index planes, named and flipped by the patient
axis they are closest to, in radiological convention: axial and coronal with
the patient's left on the screen's right, superior up, sagittal with
anterior on the left. The 3D view is a maximum intensity projection with the
segmentation's nearest surfaces in their colours, turned by dragging.

``backend="niivue"`` shows the same volume in NiiVue (ipyniivue, WebGL,
rendered on the browser's GPU): windowed to 8 bits and sampled down to at
most ``max_edge`` voxels per edge before it leaves the kernel.
"""

from __future__ import annotations

from pathlib import Path

import anywidget
import ipywidgets
import numpy as np
import traitlets as t

from ..kernels.volume import Volume
from ._assets import esm

# CT presets: (width, level) in HU
PRESETS = {
    "soft tissue": (400.0, 40.0),
    "lung": (1500.0, -600.0),
    "bone": (1800.0, 400.0),
    "brain": (80.0, 40.0),
}
# Label colours (RGB), by label value; repeated past the end.
PALETTE = [
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
    (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
]
_AXIS_NAMES = ("sagittal", "coronal", "axial")  # plane normal along x, y, z
_3D_SIZE = 128  # longest edge of the 3D view's volume, in voxels


def view(volume: Volume, seg=None, *, names: dict | None = None, window=None,
         preset: str | None = None, opacity: float = 0.5, backend: str = "slices",
         max_edge: int = 256, play: bool = False):
    """Show ``volume`` (and ``seg``: a label array ``[k, j, i]`` or a Volume on
    the same grid) in the notebook. ``names`` maps label values to names for
    the legend (``pacs.load_segmentation`` returns them); ``window`` is
    ``(width, level)``; ``preset`` one of :data:`PRESETS` (CT) or ``"auto"``.

    ``backend="niivue"`` shows it in NiiVue (the ipyniivue package): three
    planes and a 3D rendering drawn by the browser's GPU, for browsers that
    have one (under software WebGL a large volume takes a minute). Only a
    copy windowed to 8 bits and sampled down to at most ``max_edge`` voxels
    per edge (every n-th voxel, labels the same) is sent; the window is
    fixed when the view is made. Returns a :class:`NiiVueView`: the legend
    above the ``ipyniivue.NiiVue`` widget (``.niivue``).

    ``backend="itkwidgets"`` hands over to itkwidgets where it is installed
    and the browser can reach the internet (its viewer loads from a CDN).

    ``view(images)`` shows what ``pacs.load_images`` returns (or one of its
    instances): radiographs, colour images, cine played at the header's
    frame rate (see :mod:`.cine`); ``window`` is ``(width, level)`` there
    too, and ``play=True`` starts a cine playing."""
    from ..kernels.images import Images, Instance

    if isinstance(volume, (Images, Instance)):
        if seg is not None:
            raise ValueError("view(images) shows frames without labels: a segmentation "
                             "belongs on a volume (pacs.load_series)")
        from .cine import ImagesViewer, as_images

        return ImagesViewer(as_images(volume), window=window, play=play)
    if not isinstance(volume, Volume):
        raise TypeError(f"view() shows a Volume (pacs.load_series) or Images "
                        f"(pacs.load_images), not {type(volume).__name__}")
    if backend == "niivue":
        return _niivue(volume, seg, names=names, window=window, preset=preset,
                       opacity=opacity, max_edge=max_edge)
    if backend == "itkwidgets":
        return _itkwidgets(volume, seg)
    if backend != "slices":
        raise ValueError(f"unknown viewer backend {backend!r}: use 'slices', 'niivue' or "
                         "'itkwidgets'")
    return Viewer(volume, seg, names=names, window=window, preset=preset, opacity=opacity)


def _niivue(volume: Volume, seg, *, names, window, preset, opacity, max_edge):
    try:
        import ipyniivue
    except ImportError:
        raise ImportError(
            "backend='niivue' needs the ipyniivue package (not installed here: it comes with "
            "imaginghub's 'kernel' extra). Or use the default backend, which needs no "
            "package and no GPU") from None
    labels = _label_array(seg, volume) if seg is not None else None
    image, small_labels = niivue_images(volume, labels, window=window, preset=preset,
                                        max_edge=max_edge)
    nv = ipyniivue.NiiVue(
        height=640,
        slice_type=ipyniivue.SliceType.MULTIPLANAR,
        multiplanar_show_render=ipyniivue.ShowRender.ALWAYS,
        multiplanar_layout=ipyniivue.MultiplanarType.GRID,
        # as the slices backend: the patient's left on the right, the nose on the left
        is_radiological_convention=True,
        sagittal_nose_left=True,
        back_color=(0.0, 0.0, 0.0, 1.0),
        crosshair_color=(1.0, 200 / 255, 0.0, 0.8),
    )
    title = str(volume.metadata.get("SeriesDescription", ""))
    layers = [ipyniivue.Volume(data=image.to_bytes(), name=f"{_file_name(title)}.nii",
                               colormap="gray", cal_min=0.0, cal_max=255.0,
                               colorbar_visible=False)]
    cmap = None
    if small_labels is not None:
        cmap = label_colormap(labels, names or {})
        label_volume = ipyniivue.Volume(data=small_labels.to_bytes(), name="labels.nii",
                                        opacity=float(opacity), colorbar_visible=False)
        # set before the volume is added, so that it is part of its first state
        label_volume.set_colormap_label(cmap)
        layers.append(label_volume)
    nv.load_volumes(layers)
    legend = ipywidgets.HTML(_legend_html(title, cmap))
    legend.add_class("ih-niivue-legend")
    return NiiVueView(nv, legend)


def _file_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)[:64] or "volume"


def _legend_html(title: str, cmap: dict | None) -> str:
    from html import escape

    parts = [f"<b>{escape(title)}</b>"] if title else []
    for v, name in enumerate(cmap["labels"] if cmap else []):
        if cmap["A"][v]:
            rgb = f"rgb({cmap['R'][v]}, {cmap['G'][v]}, {cmap['B'][v]})"
            parts.append(f'<span class="ih-niivue-legend-item" style="margin-left: 1em">'
                         f'<span style="display: inline-block; width: 0.9em; height: 0.9em; '
                         f'background: {rgb}; vertical-align: middle"></span> '
                         f"{v} {escape(name)}</span>")
    return " ".join(parts)


class NiiVueView(ipywidgets.VBox):
    """What ``backend="niivue"`` shows: a line with the series' description
    and the labels' colours and names (``.legend``), above NiiVue's widget
    (``.niivue``, an ``ipyniivue.NiiVue``, for its own methods)."""

    def __init__(self, niivue, legend):
        super().__init__([legend, niivue])
        self.niivue = niivue
        self.legend = legend


def niivue_images(volume: Volume, seg=None, *, window=None, preset=None, max_edge: int = 256):
    """What ``backend="niivue"`` sends: ``(image, labels)``, ``nibabel``
    NIfTI images (RAS affines) of ``volume`` windowed to uint8 and of the
    labels (uint8, values above 255 folded as the slices backend folds
    them; None without ``seg``), both on the grid of every n-th voxel along
    each axis, the fewest that leaves no edge longer than ``max_edge``. The
    samples are centred in the volume; the affine's columns are scaled by n
    and its origin moved to the first sample, so every voxel keeps its
    place in the patient."""
    if max_edge < 1:
        raise ValueError("max_edge must be at least 1 voxel")
    labels = _label_array(seg, volume) if seg is not None else None
    width, level = _initial_window(volume, window, preset)
    step = [max(1, int(np.ceil(n / max_edge))) for n in volume.shape]  # (k, j, i)
    # the first sample: half the left-over voxels before it, so the grid is centred
    first = [((n - 1) % s) // 2 for n, s in zip(volume.shape, step)]
    cut = tuple(slice(f, None, s) for f, s in zip(first, step))
    small = _window_u8(volume.array[cut], width, level)
    origin = volume.index_to_world(first[::-1])  # (i, j, k) of the first sample
    spacing = tuple(float(sp) * s for sp, s in zip(volume.spacing, step[::-1]))
    grid = Volume(small, spacing, tuple(float(o) for o in origin), volume.direction,
                  dict(volume.metadata))
    image = _u8_nifti(grid)
    if labels is None:
        return image, None
    small_labels = np.frombuffer(_as_u8_labels(labels[cut]), np.uint8).reshape(small.shape)
    return image, _u8_nifti(Volume(small_labels, spacing, grid.origin, volume.direction))


def _u8_nifti(volume: Volume):
    img = volume.to_nifti()
    img.set_data_dtype(np.uint8)
    img.header["cal_min"], img.header["cal_max"] = 0, 255
    return img


def label_colormap(labels: np.ndarray, names: dict) -> dict:
    """ipyniivue's label colour map (``Volume.set_colormap_label``) for the
    values in ``labels``, folded to 8 bits as the slices backend folds them:
    one entry per value from 0 to the largest, the slices backend's colours,
    ``names`` (or "label N") as names; values that do not occur, and the
    background, transparent and unnamed."""
    counts = np.bincount(np.asarray(labels).ravel())
    present = {}
    for v in np.flatnonzero(counts[1:]) + 1:
        v = int(v)
        present.setdefault((v - 1) % 255 + 1, str(names.get(v, f"label {v}")))
    top = max(present, default=0)
    colours = [(0, 0, 0)] + [PALETTE[(v - 1) % len(PALETTE)] for v in range(1, top + 1)]
    return {
        "R": [c[0] for c in colours],
        "G": [c[1] for c in colours],
        "B": [c[2] for c in colours],
        "A": [255 if v in present else 0 for v in range(top + 1)],
        "I": list(range(top + 1)),
        "labels": [present.get(v, "") for v in range(top + 1)],
    }


def _itkwidgets(volume: Volume, seg):
    try:
        import itkwidgets
    except ImportError:
        raise ImportError(
            "backend='itkwidgets' needs the itkwidgets package (not installed here). It loads "
            "its viewer from the internet at run time and needs ipywidgets 7 or its 1.0 "
            "pre-releases: use the default backend on offline sites") from None
    image = volume.to_sitk()
    label = None
    if seg is not None:
        label = Volume(_label_array(seg, volume), volume.spacing, volume.origin,
                       volume.direction).to_sitk()
    return itkwidgets.view(image, label_image=label)


def _label_array(seg, volume: Volume) -> np.ndarray:
    labels = seg.array if isinstance(seg, Volume) else np.asarray(seg)
    if labels.shape != volume.shape:
        raise ValueError(f"the segmentation has shape {labels.shape}, the volume "
                         f"{volume.shape}: they must be on the same grid "
                         "(pacs.load_segmentation returns labels on the source grid)")
    if isinstance(seg, Volume) and not np.allclose(seg.affine, volume.affine, atol=1e-3):
        raise ValueError("the segmentation lies elsewhere in the patient than the volume: "
                         "resample it onto the volume's grid first")
    if labels.dtype.kind == "f":
        labels = np.rint(labels)
    if labels.min() < 0 or labels.max() > 65535:
        raise ValueError("label values must lie between 0 and 65535")
    return labels.astype(np.uint16 if labels.max() > 255 else np.uint8, copy=False)


class Plane:
    """How one index plane is shown: which index axes run along the screen's
    x and y, and whether each is flipped."""

    def __init__(self, normal_axis: int, direction: np.ndarray):
        self.normal = normal_axis  # index axis 0=i, 1=j, 2=k
        world = int(np.argmax(np.abs(direction[:, normal_axis])))
        self.name = _AXIS_NAMES[world]
        others = [a for a in range(3) if a != normal_axis]
        # screen x: patient x (R->L) for axial and coronal, y (A->P) for sagittal
        want_x = 1 if world == 0 else 0
        x = max(others, key=lambda a: abs(direction[want_x, a]))
        y = others[0] if others[1] == x else others[1]
        self.x, self.y = x, y
        self.flip_x = direction[want_x, x] < 0
        # screen y down: posterior for axial (+y), inferior otherwise (-z)
        want_y, sign = (1, 1.0) if world == 2 else (2, -1.0)
        self.flip_y = sign * direction[want_y, y] < 0


class Viewer(anywidget.AnyWidget):
    _esm = esm("viewer.js")
    _css = Path(__file__).with_name("viewer.css")

    # what the browser draws
    planes = t.List().tag(sync=True)  # [{name, width, height, sx, sy, cx, cy}]
    image0 = t.Bytes().tag(sync=True)
    image1 = t.Bytes().tag(sync=True)
    image2 = t.Bytes().tag(sync=True)
    label0 = t.Bytes().tag(sync=True)
    label1 = t.Bytes().tag(sync=True)
    label2 = t.Bytes().tag(sync=True)
    render3d = t.Bytes().tag(sync=True)  # gray, then labels
    render3d_shape = t.List([0, 0]).tag(sync=True)
    legend = t.List().tag(sync=True)  # [{value, name, color}]
    readout = t.Unicode().tag(sync=True)
    title = t.Unicode().tag(sync=True)
    # what the user changes (browser or Python)
    position = t.List([0, 0, 0]).tag(sync=True)  # voxel (i, j, k)
    window = t.List([400.0, 40.0]).tag(sync=True)  # width, level
    presets = t.List().tag(sync=True)
    opacity = t.Float(0.5).tag(sync=True)
    show_labels = t.Bool(True).tag(sync=True)
    angle = t.Float(0.0).tag(sync=True)  # 3D view, degrees about the patient's long axis

    def __init__(self, volume: Volume, seg=None, *, names=None, window=None, preset=None,
                 opacity=0.5):
        self.volume = volume
        self.labels = _label_array(seg, volume) if seg is not None else None
        self._planes = [Plane(a, volume.direction) for a in (2, 1, 0)]
        self._small = None
        ct = str(volume.metadata.get("Modality", "")).upper() == "CT"
        window = _initial_window(volume, window, preset)
        shape = volume.shape
        super().__init__(
            planes=[self._describe(p) for p in self._planes],
            legend=self._legend(names or {}),
            presets=[{"name": k, "window": list(v)} for k, v in PRESETS.items()] if ct else [],
            title=str(volume.metadata.get("SeriesDescription", "")),
            position=[shape[2] // 2, shape[1] // 2, shape[0] // 2],
            window=[float(window[0]), float(window[1])],
            opacity=float(opacity),
        )
        self.observe(self._redraw, names=["position", "window"])
        self.observe(self._redraw_3d, names=["angle", "window"])
        self.on_msg(self._on_browser)
        self._redraw()
        self._redraw_3d()

    # -- state to pictures ----------------------------------------------
    def _describe(self, p: Plane) -> dict:
        sp = self.volume.spacing
        size = self.volume.shape[::-1]  # (ni, nj, nk)
        return {"name": p.name, "width": size[p.x], "height": size[p.y],
                "sx": sp[p.x], "sy": sp[p.y], "axis": p.normal, "ax": p.x, "ay": p.y,
                "flip_x": bool(p.flip_x), "flip_y": bool(p.flip_y)}

    def _legend(self, names: dict) -> list[dict]:
        if self.labels is None:
            return []
        values = [int(v) for v in np.unique(self.labels) if v]
        return [{"value": v, "name": str(names.get(v, f"label {v}")),
                 "color": list(PALETTE[(v - 1) % len(PALETTE)])} for v in values]

    def slice(self, index: int, array: np.ndarray | None = None) -> np.ndarray:
        """Plane ``index`` (0 axial-most, 1, 2) at the current position, as
        shown: rows top to bottom, columns left to right."""
        p = self._planes[index]
        a = self.volume.array if array is None else array
        pos = self.position
        cut = [slice(None)] * 3
        cut[2 - p.normal] = int(pos[p.normal])  # array axes are (k, j, i)
        img = a[tuple(cut)]
        remaining = [ax for ax in (2, 1, 0) if ax != p.normal]  # index axes, array order
        # img's axes are the remaining array axes in (k, j, i) order
        if remaining.index(p.y) > remaining.index(p.x):
            img = img.T
        if p.flip_x:
            img = img[:, ::-1]
        if p.flip_y:
            img = img[::-1, :]
        return img

    def _windowed(self, img: np.ndarray) -> bytes:
        return _window_u8(img, *self.window).tobytes()

    def _redraw(self, change=None) -> None:
        with self.hold_sync():
            for n in range(3):
                setattr(self, f"image{n}", self._windowed(self.slice(n)))
                if self.labels is not None:
                    setattr(self, f"label{n}", _as_u8_labels(self.slice(n, self.labels)))
            self.readout = self._readout()

    def _readout(self) -> str:
        i, j, k = (int(v) for v in self.position)
        x, y, z = self.volume.index_to_world((i, j, k))
        value = self.volume.array[k, j, i]
        text = (f"voxel ({i}, {j}, {k})   LPS ({x:.1f}, {y:.1f}, {z:.1f}) mm   "
                f"value {float(value):.6g}")
        if self.labels is not None and self.labels[k, j, i]:
            v = int(self.labels[k, j, i])
            name = next((e["name"] for e in self.legend if e["value"] == v), str(v))
            text += f"   label {v} ({name})"
        return text

    def _redraw_3d(self, change=None) -> None:
        if self._small is None:
            self._small = _downsampled(self.volume, self.labels)
        gray, labels = render_3d(*self._small, self.angle)
        with self.hold_sync():
            self.render3d_shape = list(gray.shape)
            self.render3d = self._windowed(gray) + _as_u8_labels(labels)

    def _on_browser(self, _, content, buffers) -> None:
        if content.get("type") == "auto-window":
            self.window = list(auto_window(self.volume.array))


def _as_u8_labels(labels: np.ndarray) -> bytes:
    # Colours repeat every len(PALETTE) labels: values above 255 fold.
    if labels.dtype != np.uint8:
        labels = np.where(labels > 0, (labels - 1) % 255 + 1, 0).astype(np.uint8)
    return np.ascontiguousarray(labels).tobytes()


def _initial_window(volume: Volume, window, preset) -> tuple[float, float]:
    """(width, level): ``window`` if given, else ``preset``'s, else soft
    tissue for CT, else :func:`auto_window`."""
    if window is not None:
        return float(window[0]), float(window[1])
    if preset and preset != "auto":
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}: one of {sorted(PRESETS)} or 'auto'")
        return PRESETS[preset]
    if str(volume.metadata.get("Modality", "")).upper() == "CT" and preset != "auto":
        return PRESETS["soft tissue"]
    return auto_window(volume.array)


def _window_u8(img: np.ndarray, width: float, level: float) -> np.ndarray:
    lo = level - width / 2.0
    out = (img.astype(np.float32, copy=False) - lo) * (255.0 / max(width, 1e-6))
    return np.clip(out, 0, 255).astype(np.uint8)


def auto_window(array: np.ndarray) -> tuple[float, float]:
    """(width, level) from the 1st to 99th percentile of the non-background
    voxels: MR and anything without fixed units."""
    sample = array[:: max(1, array.shape[0] // 32)].ravel()
    if sample.size > 2_000_000:
        sample = sample[:: sample.size // 2_000_000]
    lo_all = float(sample.min())
    fg = sample[sample > lo_all] if np.any(sample > lo_all) else sample
    lo, hi = np.percentile(fg, [1, 99])
    if hi <= lo:
        hi = lo + 1.0
    return float(hi - lo), float((hi + lo) / 2)


def _downsampled(volume: Volume, labels):
    """Every n-th voxel, so that no edge has more than _3D_SIZE; with the
    spacing of that grid in (k, j, i) order."""
    a = volume.array
    step = [max(1, int(np.ceil(n / _3D_SIZE))) for n in a.shape]
    small = a[:: step[0], :: step[1], :: step[2]]
    small_labels = labels[:: step[0], :: step[1], :: step[2]] if labels is not None else None
    spacing = np.array(volume.spacing[::-1]) * step  # (k, j, i) order
    return small, small_labels, spacing, volume.direction


def render_3d(array: np.ndarray, labels, spacing, direction, angle: float):
    """A maximum intensity projection of ``array`` seen from the patient's
    front, turned by ``angle`` degrees about the patient's long axis, and
    the label of the first labelled voxel along each ray. Returns (image,
    labels), both 2D, with superior up."""
    # Voxel centres in patient space, then the rotated view's coordinates.
    nk, nj, ni = array.shape
    theta = np.deg2rad(angle)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0],
                    [0, 0, 1]])
    m = rot @ direction @ np.diag(spacing[::-1])  # index (i, j, k) -> view mm
    corners = np.array([[i, j, k] for i in (0, ni - 1) for j in (0, nj - 1) for k in (0, nk - 1)])
    world = corners @ m.T
    lo, hi = world.min(0), world.max(0)
    step = float(min(spacing))
    size = np.maximum(1, np.ceil((hi - lo) / step).astype(int) + 1)
    size = np.minimum(size, 2 * _3D_SIZE)
    # view grid (x: screen right = patient left, y: depth from the front, z: up)
    xs = (lo[0] + np.arange(size[0]) * step).astype(np.float32)[None, None, :]
    ys = (lo[1] + np.arange(size[1]) * step).astype(np.float32)[None, :, None]
    zs = (hi[2] - np.arange(size[2]) * step).astype(np.float32)[:, None, None]
    inv = np.linalg.inv(m).astype(np.float32)
    # index coordinates of every view voxel, (z, y, x) arrays, in array order (k, j, i)
    coords = [inv[a, 0] * xs + inv[a, 1] * ys + inv[a, 2] * zs for a in (2, 1, 0)]
    inside = np.ones(coords[0].shape, bool)
    index = []
    for c, n in zip(coords, array.shape):
        r = np.rint(c).astype(np.int32)
        inside &= (r >= 0) & (r < n)
        index.append(np.clip(r, 0, n - 1))
    index = tuple(index)
    low = array.min()
    sampled = np.where(inside, array[index], low)  # nearest voxel, outside: background
    image = sampled.max(axis=1)  # along the depth axis
    if labels is None:
        return image, np.zeros(image.shape, np.uint8)
    lab = np.where(inside, labels[index], 0)
    hit = lab > 0
    first = np.argmax(hit, axis=1)
    surface = np.take_along_axis(lab, first[:, None, :], axis=1)[:, 0, :]
    return image, np.where(hit.any(axis=1), surface, 0)
