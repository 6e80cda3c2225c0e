"""DICOM Segmentation (SEG) objects: label volumes to and from the archive.

``write_segmentation`` stores a label array drawn on a series loaded with
``pacs.load_series`` as a DICOM SEG that references every source instance
(and frame); ``load_segmentation`` reads a SEG back as a label
:class:`~imaginghub.kernels.volume.Volume` on the grid of its source series.
Both are built on highdicom.

Choices:

- SEGs are written as BINARY (one bit-packed frame per segment and slice,
  empty frames left out): the type that every SEG reader understands (3D
  Slicer, OHIF, dcmqi, ITK). LABELMAP (2024) would be smaller for many
  segments but few viewers read it yet.
- Segment numbers must run 1, 2, ..., N in a BINARY SEG: label values are
  written as they are when they already do (and then come back unchanged);
  other values (say 1, 2, 5) are renumbered in ascending order (1, 2, 3) and
  the names travel with them.
- Reading a SEG whose segments overlap (possible in SEGs from other tools):
  a voxel in several segments gets the highest segment number.
- The SEG's own grid (only the slices with something drawn, possibly another
  resolution) is put onto the source grid by highdicom's
  ``Volume.match_geometry`` (axis permutations, flips, crop and pad, no
  interpolation); where that is not possible (another orientation or a
  non-integer spacing ratio) it is resampled by nearest neighbour.
"""

from __future__ import annotations

import numpy as np

from .errors import NotFound, PACSError
from .volume import Volume

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
LABEL_MAP_SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.7"
RTSTRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
# Tolerance (mm) for labels given as a Volume to lie on the source grid.
_GRID_ATOL = 1e-3


class NotASegmentation(PACSError):
    """The series or instance is not a DICOM Segmentation."""


# -- reading -----------------------------------------------------------------
def load_segmentation(pacs, seg_uid: str, *, series=None, masks: bool = False):
    """Load a DICOM SEG or an RT Structure Set (RTSTRUCT) as a label volume
    on its source series' grid.

    ``seg_uid`` is the SEG's SeriesInstanceUID (or its SOPInstanceUID).
    ``series`` is the grid to put the labels on: by default the source series
    that the SEG references, loaded with ``pacs.load_series``; or a series UID
    or an already loaded :class:`Volume` (in the SEG's frame of reference).

    Returns ``(labels, names)``: a uint8 volume (uint16 beyond 255 segments)
    whose voxels hold segment numbers (0: background; where segments overlap,
    the highest number), and ``{segment number: SegmentLabel}``. For an
    RTSTRUCT the numbers are its ROI numbers and the names its ROI names,
    and ``masks=True`` adds ``{ROI number: boolean array}`` (ROIs overlap:
    a body contour holds every organ); see :mod:`.rtstruct`.
    """
    import highdicom as hd

    ds = _retrieve_segmentation(pacs, seg_uid)
    if ds.get("SOPClassUID") == RTSTRUCT_STORAGE:
        from .rtstruct import load_rtstruct

        return load_rtstruct(pacs, ds, series=series, masks=masks)
    if masks:
        raise ValueError("masks=True is for RT Structure Sets, whose ROIs overlap: a SEG's "
                         "segments come as the label volume")
    seg = hd.seg.Segmentation.from_dataset(ds, copy=False)
    if not isinstance(series, Volume):
        source_uid = series or _source_series_uid(seg, seg_uid)
        try:
            series = pacs.load_series(source_uid)
        except NotFound:
            raise NotFound(
                f"the source series {source_uid} of segmentation {seg_uid} is not in the "
                f"archive at {pacs.url} (or not visible to you): store that series first or "
                "ask for access to its project, or pass series= (a series UID or a loaded "
                "Volume in the same frame of reference) to put the labels on another grid"
            ) from None
    frame_of_reference = series.metadata.get("FrameOfReferenceUID") or None
    if frame_of_reference and frame_of_reference != seg.FrameOfReferenceUID:
        raise ValueError(
            f"segmentation {seg_uid} lies in frame of reference {seg.FrameOfReferenceUID}, "
            f"the series {series.metadata.get('SeriesInstanceUID', '')} in "
            f"{frame_of_reference}: their coordinates cannot be matched"
        )
    numbers = [int(n) for n in seg.segment_numbers]
    dtype = np.uint8 if max(numbers, default=0) <= 255 else np.uint16
    target = hd.VolumeGeometry(
        affine=series.affine[:, [2, 1, 0, 3]],  # index order (k, j, i) as highdicom's
        spatial_shape=series.shape,
        coordinate_system="PATIENT",
        frame_of_reference_uid=frame_of_reference,
    )
    labels = _on_grid(seg.get_volume(combine_segments=True, skip_overlap_checks=True,
                                     dtype=dtype), target)
    names = {n: str(seg.get_segment_description(n).SegmentLabel) for n in numbers}
    metadata = {
        "Modality": "SEG",
        "StudyInstanceUID": str(seg.StudyInstanceUID),
        "SeriesInstanceUID": str(seg.SeriesInstanceUID),
        "SOPInstanceUID": str(seg.SOPInstanceUID),
        "SeriesDescription": str(seg.get("SeriesDescription", "")),
        "SourceSeriesInstanceUID": series.metadata.get("SeriesInstanceUID"),
        "segments": names,
    }
    return Volume(labels, series.spacing, series.origin, np.array(series.direction),
                  metadata), names


def _retrieve_segmentation(pacs, uid: str):
    """The SEG dataset: ``uid`` is its series UID or its SOP instance UID."""
    from .query import first_value

    try:
        record = pacs.find_series(uid)
    except NotFound:
        found = pacs.search_for_instances(search_filters={"SOPInstanceUID": uid})
        if not found:
            raise NotFound(
                f"no segmentation series or instance {uid} in the archive at {pacs.url}"
            ) from None
        study, series = first_value(found[0], "0020000D"), first_value(found[0], "0020000E")
        datasets = [pacs.retrieve_instance(study, series, uid)]
    else:
        modality = first_value(record, "00080060")
        if modality not in ("SEG", "RTSTRUCT"):
            raise NotASegmentation(
                f"series {uid} is not a segmentation (Modality {modality or 'unknown'}, not "
                "SEG or RTSTRUCT): load images with pacs.load_series"
            )
        count = int(first_value(record, "00201209") or 0)
        if count > 1:
            raise NotASegmentation(
                f"series {uid} holds {count} segmentation instances: load one of them by "
                "its SOPInstanceUID (pacs.search_for_instances lists them)"
            )
        datasets = pacs.retrieve_series(first_value(record, "0020000D"), uid)
    ds = datasets[0]
    if ds.get("SOPClassUID") not in (SEGMENTATION_STORAGE, LABEL_MAP_SEGMENTATION_STORAGE,
                                     RTSTRUCT_STORAGE):
        raise NotASegmentation(
            f"{uid} is not a DICOM Segmentation or RT Structure Set (SOP class "
            f"{ds.get('SOPClassUID', '?')})"
        )
    return ds


def _source_series_uid(seg, seg_uid: str) -> str:
    referenced = {str(item.SeriesInstanceUID)
                  for item in seg.get("ReferencedSeriesSequence", [])}
    referenced |= {str(series) for _, series, _ in seg.get_source_image_uids()}
    if len(referenced) != 1:
        which = ", ".join(sorted(referenced)) or "no series"
        raise NotFound(
            f"segmentation {seg_uid} references {which} as its source: pass series= (a "
            "series UID or a loaded Volume) to say which grid to put the labels on"
        )
    return referenced.pop()


def _on_grid(volume, target) -> np.ndarray:
    """The array of highdicom ``volume`` on the grid of ``target`` (a
    VolumeGeometry): rearranged without interpolation when the grids share
    their axes and their voxel spacings divide, else by nearest neighbour."""
    m = volume.inverse_affine @ target.affine  # index (k, j, i) in target -> in volume
    if np.allclose(m, np.rint(m), atol=1e-3):
        return volume.match_geometry(target, tol=1e-3).array
    # else nearest neighbour, one slice at a time
    shape = target.spatial_shape
    rows, cols = np.mgrid[:shape[1], :shape[2]]
    plane = m[:3, 1:3] @ np.stack([rows.ravel(), cols.ravel()])
    bounds = np.asarray(volume.spatial_shape)[:, None]
    out = np.zeros((shape[0], shape[1] * shape[2]), volume.dtype)
    for k in range(shape[0]):
        idx = np.rint(plane + (m[:3, 0] * k + m[:3, 3])[:, None]).astype(np.intp)
        inside = np.all((idx >= 0) & (idx < bounds), axis=0)
        out[k, inside] = volume.array[idx[0, inside], idx[1, inside], idx[2, inside]]
    return out.reshape(shape)


# -- writing -----------------------------------------------------------------
def write_segmentation(pacs, volume: Volume, labels, names: dict[int, str], *,
                       description: str = "Segmentation", algorithm=None,
                       colors: dict | None = None, categories: dict | None = None,
                       project: str | None = None, series_number: int | None = None) -> str:
    """Store ``labels`` drawn on ``volume`` as a DICOM SEG; returns its series UID.

    ``volume`` comes from ``pacs.load_series`` (it knows the instance and frame
    of every slice); ``labels`` is an integer array of the same shape
    ``[k, j, i]`` or a Volume on the same grid, 0 for background.
    ``names`` gives every label value its segment name: ``{1: "liver"}``.

    Optional: ``algorithm``, the name (or ``(name, version)``) of the
    algorithm that made the labels (else they count as drawn by hand);
    ``colors``, ``{value: (r, g, b)}`` in 0..255; ``categories``,
    ``{value: (category code, type code)}`` (pydicom ``Code``s; by default
    SNOMED CT "Tissue"); ``project``, the project to store into;
    ``series_number`` (default: the source's + 1000).
    """
    import highdicom as hd

    names = {int(v): str(name) for v, name in names.items()}
    array = _check_labels(volume, labels, names)
    sources, array = _sources_and_frames(pacs, volume, array)
    values = sorted(names)
    # BINARY needs segment numbers 1..N: values other than those are renumbered
    numbers = {v: n for n, v in enumerate(values, start=1)}
    if values[-1] != len(values):
        lut = np.zeros(values[-1] + 1, np.uint16)
        lut[values] = np.arange(1, len(values) + 1)
        array = lut[array]
    array = array.astype(np.uint8 if len(values) <= 255 else np.uint16)
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[
            _segment_description(numbers[v], names[v], algorithm, (colors or {}).get(v),
                                 (categories or {}).get(v))
            for v in values
        ],
        series_instance_uid=hd.UID(),
        series_number=series_number or _default_series_number(volume),
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="imaginghub",
        manufacturer_model_name="imaginghub",
        software_versions=_version(),
        device_serial_number="0",
        series_description=description[:64],
        content_description=description[:64],
    )
    answer = pacs.store_instances([seg], project=project)
    failed = answer.get("FailedSOPSequence")
    if failed:
        reason = failed[0].get("FailureReason", "?")
        raise PACSError(f"the archive refused the segmentation (failure reason {reason})")
    return str(seg.SeriesInstanceUID)


def _check_labels(volume: Volume, labels, names) -> np.ndarray:
    """The label array, checked against the volume and the names (ValueError)."""
    if isinstance(labels, Volume):
        if labels.shape != volume.shape or not np.allclose(labels.affine, volume.affine,
                                                           atol=_GRID_ATOL):
            raise ValueError(
                f"the labels (shape {labels.shape}) are not on the grid of the volume "
                f"(shape {volume.shape}): resample them onto it first"
            )
        labels = labels.array
    array = np.asarray(labels)
    if array.shape != volume.shape:
        raise ValueError(
            f"labels of shape {array.shape} for a volume of shape {volume.shape}: they must "
            "have the volume's shape [k, j, i]"
        )
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if array.dtype.kind not in "iu":
        raise ValueError(f"labels must be integers (got {array.dtype}): use .astype(np.uint16)")
    if array.size and array.min() < 0:
        raise ValueError("labels must not be negative (0 is the background)")
    if not names:
        raise ValueError("names is empty: give every label value a name, e.g. {1: 'liver'}")
    if min(names) < 1 or len(names) > 65535:
        raise ValueError("names: label values are 1 to 65535 (0 is the background)")
    unnamed = sorted(set(np.unique(array).tolist()) - {0} - set(names))
    if unnamed:
        raise ValueError(f"label values without a name: {unnamed[:10]}; add them to names")
    if len(volume.metadata.get("source_frames", ())) != volume.shape[0]:
        raise ValueError(
            "the volume does not say which instances its slices come from (or was cropped "
            "since): write labels on a volume as pacs.load_series returns it"
        )
    return array


def _sources_and_frames(pacs, volume: Volume, array: np.ndarray):
    """The source datasets (metadata, no pixels) that highdicom needs and the
    label frames in their order: one per instance, or one per frame of a
    single multi-frame instance."""
    from pydicom.dataset import Dataset

    meta = volume.metadata
    frames = meta["source_frames"]
    found = pacs.retrieve_series_metadata(meta["StudyInstanceUID"], meta["SeriesInstanceUID"])
    by_uid = {}
    for item in found:
        ds = Dataset.from_json(item, bulk_data_uri_handler=lambda tag, vr, uri: None)
        ds.pop("PixelData", None)
        by_uid[str(ds.SOPInstanceUID)] = ds
    uids = list(dict.fromkeys(uid for uid, _ in frames))
    missing = [u for u in uids if u not in by_uid]
    if missing:
        raise NotFound(
            f"{len(missing)} source instance(s) of series {meta['SeriesInstanceUID']} are no "
            f"longer in the archive (for example {missing[0]})"
        )
    size = (int(by_uid[uids[0]].Rows), int(by_uid[uids[0]].Columns))
    if array.shape[1:] != size:
        raise ValueError(
            f"the volume's slices are {array.shape[1:]}, its source images {size}: write "
            "labels on a volume as pacs.load_series returns it"
        )
    if len(uids) == len(frames):  # one frame per instance
        return [by_uid[u] for u, _ in frames], array
    if len(uids) == 1:  # one multi-frame instance: labels in frame order
        source = by_uid[uids[0]]
        ordered = np.zeros((int(source.NumberOfFrames), *array.shape[1:]), array.dtype)
        ordered[[number - 1 for _, number in frames]] = array
        return [source], ordered
    raise ValueError(
        f"the volume's slices come from {len(uids)} multi-frame instances: a segmentation "
        "can reference single-frame instances or one multi-frame instance"
    )


def _segment_description(number: int, name: str, algorithm, color, category):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    category, kind = category or (codes.SCT.Tissue, codes.SCT.Tissue)
    identification = None
    if algorithm:
        name_, version = (algorithm, "unknown") if isinstance(algorithm, str) else algorithm
        identification = hd.AlgorithmIdentificationSequence(
            name=name_, family=codes.DCM.ArtificialIntelligence, version=version)
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=name[:64],
        segmented_property_category=category,
        segmented_property_type=kind,
        algorithm_type="AUTOMATIC" if algorithm else "MANUAL",
        algorithm_identification=identification,
        display_color=hd.color.CIELabColor.from_rgb(*color) if color else None,
    )


def _default_series_number(volume: Volume) -> int:
    try:
        return int(volume.metadata.get("SeriesNumber") or 0) + 1000
    except ValueError:
        return 1000


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("imaginghub")
    except PackageNotFoundError:
        return "unknown"
