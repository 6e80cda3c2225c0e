"""Volumes: voxels in physical units plus their place in the patient (LPS).

Conventions (the same as ITK and SimpleITK):

- ``array`` is indexed ``[k, j, i]``: slice, row, column.
- ``spacing``, ``origin`` and the columns of ``direction`` are given in
  ``(i, j, k)`` order; ``origin`` is the centre of voxel ``(0, 0, 0)`` in
  DICOM patient coordinates (LPS, millimetres); ``direction[:, 0]`` is the row
  direction (DICOM's first ImageOrientationPatient vector),
  ``direction[:, 1]`` the column direction and ``direction[:, 2]`` the slice
  normal, along which slices are sorted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import NotAVolume

# Positions closer than this along the normal count as the same slice (mm).
_SAME_POSITION_MM = 1e-3
# Relative tolerance on slice spacing before a series counts as uneven.
_SPACING_RTOL = 0.02


@dataclass
class Volume:
    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray
    metadata: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.array.shape

    @property
    def affine(self) -> np.ndarray:
        """4x4 matrix from voxel index ``(i, j, k, 1)`` to LPS millimetres."""
        a = np.eye(4)
        a[:3, :3] = self.direction * np.asarray(self.spacing)[None, :]
        a[:3, 3] = self.origin
        return a

    def index_to_world(self, ijk) -> np.ndarray:
        """LPS position (mm) of voxel index ``(i, j, k)`` (array ``[k, j, i]``)."""
        return (self.affine @ np.append(np.asarray(ijk, float), 1.0))[:3]

    def world_to_index(self, xyz) -> np.ndarray:
        return (np.linalg.inv(self.affine) @ np.append(np.asarray(xyz, float), 1.0))[:3]

    def __repr__(self) -> str:
        sp = ", ".join(f"{s:.4g}" for s in self.spacing)
        org = ", ".join(f"{o:.4g}" for o in self.origin)
        desc = self.metadata.get("SeriesDescription", "")
        return (f"Volume({desc!r}, shape={self.shape}, dtype={self.array.dtype}, "
                f"spacing=({sp}) mm, origin=({org}) mm LPS)")

    # Conversions (see kernels/convert.py for the conventions).

    def to_sitk(self):
        """A ``SimpleITK.Image`` with the same geometry (LPS, as ITK); pixels copied once."""
        from .convert import to_sitk
        return to_sitk(self)

    @classmethod
    def from_sitk(cls, image, metadata: dict | None = None) -> Volume:
        """A Volume from a 3D ``SimpleITK.Image`` (LPS)."""
        from .convert import from_sitk
        return from_sitk(image, metadata, cls)

    def to_nifti(self):
        """A ``nibabel.Nifti1Image`` whose affine maps ``(i, j, k)`` to RAS
        (x and y of the LPS affine negated); data in ``(i, j, k)`` order."""
        from .convert import to_nifti
        return to_nifti(self)

    @classmethod
    def from_nifti(cls, img, metadata: dict | None = None) -> Volume:
        """A Volume (LPS) from a 3D NIfTI image or path (RAS affine)."""
        from .convert import from_nifti
        return from_nifti(img, metadata, cls)

    def save_nifti(self, path) -> None:
        """Write a NIfTI file (RAS affine); ``.nii.gz`` is compressed."""
        from .convert import save_nifti
        save_nifti(self, path)

    def to_monai(self, space: str = "RAS"):
        """A ``monai.data.MetaTensor`` ``(1, i, j, k)`` whose affine maps to
        ``space``: "RAS" (MONAI's loaders' default) or "LPS"."""
        from .convert import to_monai
        return to_monai(self, space)

    @classmethod
    def from_monai(cls, tensor, metadata: dict | None = None) -> Volume:
        """A Volume (LPS) from a ``MetaTensor`` (affine in its ``meta["space"]``)."""
        from .convert import from_monai
        return from_monai(tensor, metadata, cls)


@dataclass
class Frame:
    """Where one 2D frame lies and how its stored values map to physical ones."""

    position: np.ndarray  # ImagePositionPatient
    orientation: np.ndarray  # ImageOrientationPatient (6 values)
    pixel_spacing: tuple[float, float]  # (between rows, between columns)
    thickness: float | None
    slope: float
    intercept: float
    # (SOPInstanceUID, 1-based frame number) of the instance it came from
    source: tuple[str, int] | None = None


class VolumeBuilder:
    """Collects frames as they arrive, converts them into one preallocated
    array, and orders them along the slice normal at the end.

    ``expected`` is the number of frames announced up front (the archive's
    instance count); the array grows if more arrive.
    """

    def __init__(self, expected: int = 0, dtype=np.float32):
        self.expected = max(int(expected), 1)
        self.dtype = np.dtype(dtype)
        self.frames: list[Frame] = []
        self.out: np.ndarray | None = None
        self.rows = self.cols = None

    def add(self, frame: Frame, pixels: np.ndarray) -> None:
        rows, cols = pixels.shape
        if self.out is None:
            self.rows, self.cols = rows, cols
            self.out = np.empty((self.expected, rows, cols), self.dtype)
        elif (rows, cols) != (self.rows, self.cols):
            raise NotAVolume(
                f"images of different sizes in one series ({self.rows}x{self.cols} and "
                f"{rows}x{cols}): it is not one volume; pacs.load_images(series_uid) loads "
                "it as one array of frames per instance"
            )
        n = len(self.frames)
        if n >= self.out.shape[0]:
            grown = np.empty((max(2 * n, n + 1), rows, cols), self.dtype)
            grown[:n] = self.out[:n]
            self.out = grown
        target = self.out[n]
        t = self.dtype.type
        # A plain cast, then the rescale in place in the output type: 2.4x as
        # fast as one np.add with a cast (numpy's buffered casting loop); a
        # Python float would compute in float64.
        if self.dtype.kind != "f":  # integers: computed as such, rounded down
            np.multiply(pixels, frame.slope, out=target, casting="unsafe")
            target += t(frame.intercept)
        else:
            target[...] = pixels
            if frame.slope != 1.0:
                target *= t(frame.slope)
            if frame.intercept:
                target += t(frame.intercept)
        self.frames.append(frame)

    def build(self, metadata: dict | None = None) -> Volume:
        if not self.frames:
            raise NotAVolume("the series has no images with pixel data")
        n = len(self.frames)
        orientation = self.frames[0].orientation
        for f in self.frames[1:]:
            if np.abs(f.orientation - orientation).max() > 1e-3:
                raise NotAVolume(
                    "images with different orientations in one series (for example a "
                    "localiser with several planes): it is not one volume"
                )
        row_dir = orientation[:3] / np.linalg.norm(orientation[:3])
        col_dir = orientation[3:] / np.linalg.norm(orientation[3:])
        normal = np.cross(row_dir, col_dir)
        dist = np.array([float(normal @ f.position) for f in self.frames])
        order = np.argsort(dist, kind="stable")
        d = dist[order]
        steps = np.diff(d)
        if n > 1:
            dup = np.flatnonzero(steps < _SAME_POSITION_MM)
            if dup.size:
                raise NotAVolume(
                    f"{dup.size + 1} or more images at the same position "
                    f"({d[dup[0]]:.2f} mm along the normal): the series holds more than one "
                    "volume (several acquisitions, echoes or time points); select one with "
                    "pacs.search_for_instances and load those"
                )
            dz = float(np.median(steps))
            uneven = np.flatnonzero(np.abs(steps - dz) > max(_SPACING_RTOL * dz, 0.01))
            if uneven.size:
                i = uneven[0]
                ratio = steps[i] / dz
                what = (f"about {round(ratio) - 1} missing slice(s)" if ratio > 1.5
                        else "uneven slice spacing")
                raise NotAVolume(
                    f"{what} between {d[i]:.2f} mm and {d[i + 1]:.2f} mm along the normal "
                    f"(spacing {steps[i]:.3f} mm where the series has {dz:.3f} mm): it is "
                    "not a regular volume"
                )
        else:
            dz = self.frames[0].thickness or 1.0
        spacing_rows, spacing_cols = self.frames[0].pixel_spacing
        self._permute_in_place(order)
        array = self.out[:n] if self.out.shape[0] != n else self.out
        first = self.frames[order[0]]
        direction = np.column_stack([row_dir, col_dir, normal])
        meta = dict(metadata or {})
        meta.setdefault("SliceThickness", first.thickness)
        if all(f.source is not None for f in self.frames):
            # which instance (and frame) each slice k came from, for references
            # back to the source (DICOM SEG, SR)
            meta["source_frames"] = [self.frames[o].source for o in order]
        return Volume(
            array=array,
            spacing=(float(spacing_cols), float(spacing_rows), float(dz)),
            origin=tuple(float(v) for v in first.position),
            direction=direction,
            metadata=meta,
        )

    def _permute_in_place(self, order: np.ndarray) -> None:
        """Reorder ``out[:n]`` so that slot ``s`` holds frame ``order[s]``,
        following the permutation's cycles with one spare slice (no second
        copy of the volume)."""
        n = len(order)
        done = np.zeros(n, bool)
        spare = np.empty((self.rows, self.cols), self.dtype)
        for start in range(n):
            if done[start] or order[start] == start:
                done[start] = True
                continue
            spare[...] = self.out[start]
            slot = start
            while True:
                src = order[slot]
                done[slot] = True
                if src == start:
                    self.out[slot] = spare
                    break
                self.out[slot] = self.out[src]
                slot = src
