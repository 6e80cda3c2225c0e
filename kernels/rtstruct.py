"""RT Structure Sets (RTSTRUCT) as labels on their series' grid.

Radiotherapy data is mostly RTSTRUCT: each ROI a stack of closed planar
contours in patient coordinates (mm), drawn on the slices of a referenced
image series. ``load_rtstruct`` rasterises them with scikit-image's
``draw.polygon`` (a pixel is in a contour when its centre is), on the grid
of that series as ``pacs.load_series`` loads it:

- a contour goes to the slice nearest its plane; contours of one ROI on
  one slice are combined by parity (a contour inside another is a hole,
  as treatment planning systems write them);
- ROIs overlap (a body contour holds every organ): the label volume gives
  a voxel the highest ROI number among those containing it, and one
  boolean mask per ROI is there on request (``masks=True``);
- POINT and OPEN contours have no inside and are skipped (the names list
  them all).
"""

from __future__ import annotations

import numpy as np

from .errors import NotFound, PACSError
from .volume import Volume


def referenced_series(ds) -> str:
    """The image series an RTSTRUCT was drawn on."""
    found = {str(series.SeriesInstanceUID)
             for frame in ds.get("ReferencedFrameOfReferenceSequence", [])
             for study in frame.get("RTReferencedStudySequence", [])
             for series in study.get("RTReferencedSeriesSequence", [])}
    if len(found) != 1:
        which = ", ".join(sorted(found)) or "no series"
        raise NotFound(
            f"structure set {ds.get('SOPInstanceUID', '?')} references {which}: pass "
            "series= (a series UID or a loaded Volume) to say which grid to draw it on")
    return found.pop()


def load_rtstruct(pacs, ds, *, series=None, masks: bool = False):
    """``(labels, names)``, or ``(labels, names, masks)`` with ``masks``: a
    label Volume on the grid of the referenced series (or ``series``: a
    series UID or a loaded :class:`Volume` in the same frame of reference),
    ``{ROI number: ROIName}``, and ``{ROI number: boolean array}``."""
    from skimage.draw import polygon

    uid = str(ds.get("SOPInstanceUID", "?"))
    if not isinstance(series, Volume):
        source = series or referenced_series(ds)
        try:
            series = pacs.load_series(source)
        except NotFound:
            raise NotFound(
                f"the series {source} that structure set {uid} was drawn on is not in the "
                f"archive at {pacs.url} (or not visible to you): store it first or ask for "
                "access to its project, or pass series= (a series UID or a loaded Volume)"
            ) from None
    names = {int(roi.ROINumber): str(roi.get("ROIName", f"ROI {roi.ROINumber}"))
             for roi in ds.get("StructureSetROISequence", [])}
    if not names:
        raise PACSError(f"structure set {uid} has no ROIs (StructureSetROISequence)")
    nk, nj, ni = series.shape
    to_index = np.linalg.inv(series.affine)
    out: dict[int, np.ndarray] = {}
    for item in ds.get("ROIContourSequence", []):
        number = int(item.ReferencedROINumber)
        mask = np.zeros(series.shape, dtype=bool)
        for contour in item.get("ContourSequence", []):
            if str(contour.get("ContourGeometricType", "")) != "CLOSED_PLANAR":
                continue
            points = np.asarray(contour.ContourData, dtype=np.float64).reshape(-1, 3)
            if len(points) < 3:
                continue
            ijk = (to_index @ np.c_[points, np.ones(len(points))].T)[:3].T
            k = int(np.rint(ijk[:, 2].mean()))
            if not 0 <= k < nk:
                continue
            rows, cols = polygon(ijk[:, 1], ijk[:, 0], shape=(nj, ni))
            mask[k, rows, cols] ^= True
        out[number] = mask
    dtype = np.uint8 if max(names) <= 255 else np.uint16
    labels = np.zeros(series.shape, dtype=dtype)
    for number in sorted(out):  # the highest number wins where ROIs overlap
        labels[out[number]] = number
    metadata = {
        "Modality": "RTSTRUCT",
        "StudyInstanceUID": str(ds.get("StudyInstanceUID", "")),
        "SeriesInstanceUID": str(ds.get("SeriesInstanceUID", "")),
        "SOPInstanceUID": uid,
        "SeriesDescription": str(ds.get("SeriesDescription", "")),
        "SourceSeriesInstanceUID": series.metadata.get("SeriesInstanceUID"),
        "segments": names,
    }
    volume = Volume(labels, series.spacing, series.origin, np.array(series.direction), metadata)
    return (volume, names, out) if masks else (volume, names)
