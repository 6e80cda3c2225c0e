"""The demo data set: real DICOM files that pydicom and pydicom-data ship,
and multi-slice series built with correct geometry from a real CT slice and
from an analytic head phantom.

Every UID is derived from a fixed key (``uid("series", "ct-head")``), so
tests and tutorials can name the series. Patient names start with ``Demo^``.

Patients, projects and series (by key):

- DEMO-001 Demo^Stack, project oncology: ``ct-head``, 300 x 512 x 512 CT: one
  real head slice (693_UNCR) stacked at 1.25 mm, plus a sphere of +400 HU.
- DEMO-002 Demo^Reversed, project oncology: ``ct-head-reversed``, 120 x 256 x 256,
  the same, stored head-first (z decreasing with InstanceNumber); real single
  files ``ct-slice``, ``ct-slice-j2k``, ``ct-small``, ``nm-jpeg-lossless``,
  ``nm-jpeg-lossy``, ``sc-jpeg-baseline``, ``seg-liver``, and ``ct-enhanced``
  (a real Enhanced CT, 2 frames).
- DEMO-003 Demo^Head, project neuro: ``mr-head``, 60 x 128 x 128 MR of an
  analytic head phantom (labels in :data:`PHANTOM`); ``mr-head-oblique``, the
  same phantom on a grid tilted by 20 degrees; ``mr-head-enhanced``, the
  phantom as one Enhanced MR image with shuffled frames; real enhanced
  multi-frame MR without geometry (``mr-enhanced``, ``-rle``, ``-jpegls``,
  ``-j2k``) and ``mr-small-rle``; ``mr-head-seg`` and ``mr-head-oblique-seg``,
  the phantom's known labels (brain, ventricles, lesion) on ``mr-head`` and
  ``mr-head-oblique`` as DICOM SEGs that reference them (reference labels:
  segment algorithm type MANUAL, as drawn by a person).

In the built series, voxel ``[row 0, column 0]`` of each slice stores the
slice's InstanceNumber, so tests can check the order slices come back in.
"""

from __future__ import annotations

import functools
import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

log = logging.getLogger(__name__)

_ENTROPY = "imaginghub-demo-v1"
STUDY_DATE = "20240115"


def uid(kind: str, key: str) -> str:
    """The deterministic UID of a demo object (kind: study, series, instance, frame)."""
    return generate_uid(entropy_srcs=[_ENTROPY, kind, key])


@dataclass(frozen=True)
class Patient:
    id: str
    name: str
    project: str
    sex: str
    age: str


PATIENTS = {
    "stack": Patient("DEMO-001", "Demo^Stack", "oncology", "F", "061Y"),
    "reversed": Patient("DEMO-002", "Demo^Reversed", "oncology", "M", "047Y"),
    "head": Patient("DEMO-003", "Demo^Head", "neuro", "F", "035Y"),
}


@dataclass(frozen=True)
class DemoSeries:
    key: str
    patient: str  # key into PATIENTS
    description: str
    modality: str
    source: str  # "built" or the test file's name
    of: str = ""  # a built segmentation: the key of the series it is drawn on

    @property
    def series_uid(self) -> str:
        return uid("series", self.key)

    @property
    def study_uid(self) -> str:
        return uid("study", self.patient)

    @property
    def project(self) -> str:
        return PATIENTS[self.patient].project


SERIES = [
    DemoSeries("ct-head", "stack", "CT head 1.25 mm (a real slice stacked, with a sphere)", "CT",
               "built"),
    DemoSeries("ct-head-reversed", "reversed", "CT head 2.5 mm stored head-first", "CT", "built"),
    DemoSeries("ct-slice", "reversed", "CT slice uncompressed", "CT", "693_UNCR.dcm"),
    DemoSeries("ct-slice-j2k", "reversed", "CT slice JPEG 2000 lossless", "CT", "693_J2KR.dcm"),
    DemoSeries("ct-small", "reversed", "CT small", "CT", "CT_small.dcm"),
    DemoSeries("nm-jpeg-lossless", "reversed", "NM JPEG lossless", "NM", "JPEG-LL.dcm"),
    DemoSeries("nm-jpeg-lossy", "reversed", "NM JPEG extended 12 bit", "NM", "JPGExtended.dcm"),
    DemoSeries("sc-jpeg-baseline", "reversed", "Secondary capture JPEG baseline", "OT",
               "SC_rgb_jpeg_dcmtk.dcm"),
    DemoSeries("us-cine", "reversed", "Ultrasound cine JPEG baseline (30 frames)", "US",
               "examples_ybr_color.dcm"),
    DemoSeries("seg-liver", "reversed", "Liver segmentation (DICOM SEG)", "SEG", "liver.dcm"),
    DemoSeries("mr-head", "head", "MR head phantom axial", "MR", "built"),
    DemoSeries("mr-head-oblique", "head", "MR head phantom oblique 20 deg", "MR", "built"),
    DemoSeries("ct-enhanced", "reversed", "Enhanced CT multi-frame", "CT", "eCT_Supplemental.dcm"),
    DemoSeries("mr-head-enhanced", "head", "MR head phantom enhanced multi-frame", "MR", "built"),
    DemoSeries("mr-enhanced", "head", "Enhanced MR multi-frame", "MR", "emri_small.dcm"),
    DemoSeries("mr-enhanced-rle", "head", "Enhanced MR multi-frame RLE", "MR", "emri_small_RLE.dcm"),
    DemoSeries("mr-enhanced-jpegls", "head", "Enhanced MR multi-frame JPEG-LS", "MR",
               "emri_small_jpeg_ls_lossless.dcm"),
    DemoSeries("mr-enhanced-j2k", "head", "Enhanced MR multi-frame JPEG 2000", "MR",
               "emri_small_jpeg_2k_lossless.dcm"),
    DemoSeries("mr-small-rle", "head", "MR small RLE", "MR", "MR_small_RLE.dcm"),
    DemoSeries("mr-head-seg", "head", "MR head phantom axial labels (SEG)", "SEG", "built",
               of="mr-head"),
    DemoSeries("mr-head-oblique-seg", "head", "MR head phantom oblique labels (SEG)", "SEG",
               "built", of="mr-head-oblique"),
]
BY_KEY = {s.key: s for s in SERIES}


def series(key: str) -> DemoSeries:
    return BY_KEY[key]


# -- geometry of the built series -------------------------------------------------
@dataclass(frozen=True)
class Grid:
    rows: int
    cols: int
    slices: int
    pixel_spacing: tuple[float, float]  # (between rows, between columns)
    slice_spacing: float
    first_position: tuple[float, float, float]
    row_dir: tuple[float, float, float] = (1.0, 0.0, 0.0)
    col_dir: tuple[float, float, float] = (0.0, 1.0, 0.0)
    # +1: instance numbers go along the normal; -1: against it
    order: int = 1

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_dir, self.col_dir)

    def position(self, index: int) -> np.ndarray:
        """ImagePositionPatient of the slice with InstanceNumber ``index + 1``."""
        return np.asarray(self.first_position) + self.order * index * self.slice_spacing * self.normal

    def world(self, index: int) -> np.ndarray:
        """LPS coordinates of every pixel of a slice, shape (rows, cols, 3), float32."""
        return _in_plane(self) + self.position(index).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _in_plane(g: Grid) -> np.ndarray:
    j, i = np.mgrid[0:g.rows, 0:g.cols].astype(np.float32)
    r = np.asarray(g.row_dir, np.float32) * g.pixel_spacing[1]
    c = np.asarray(g.col_dir, np.float32) * g.pixel_spacing[0]
    return i[..., None] * r + j[..., None] * c


def _tilted(deg: float) -> tuple[tuple, tuple]:
    a = np.deg2rad(deg)
    return (1.0, 0.0, 0.0), (0.0, float(np.cos(a)), float(-np.sin(a)))


GRIDS = {
    "ct-head": Grid(512, 512, 300, (0.7, 0.7), 1.25, (-179.3, -179.3, -200.0)),
    "ct-head-reversed": Grid(256, 256, 120, (1.4, 1.4), 2.5, (-178.6, -178.6, 100.0), order=-1),
    "mr-head": Grid(128, 128, 60, (1.6, 1.6), 2.5, (-101.6, -101.6, -73.75)),
    "mr-head-oblique": Grid(128, 128, 60, (1.6, 1.6), 2.5, (0, 0, 0), *_tilted(20.0)),
}
GRIDS["mr-head-enhanced"] = GRIDS["mr-head"]
# The enhanced series stores its frames in this (shuffled) order: a reader
# must place frames by their PlanePositionSequence, not by frame number.
ENHANCED_FRAME_ORDER = list(np.random.default_rng(7).permutation(GRIDS["mr-head"].slices))


def _centre_oblique() -> None:
    g = GRIDS["mr-head-oblique"]
    half = (np.asarray(g.row_dir) * g.pixel_spacing[1] * (g.cols - 1)
            + np.asarray(g.col_dir) * g.pixel_spacing[0] * (g.rows - 1)
            + g.normal * g.slice_spacing * (g.slices - 1)) / 2
    GRIDS["mr-head-oblique"] = Grid(**{**g.__dict__, "first_position": tuple(-half)})


_centre_oblique()

# -- the head phantom: analytic, so any grid samples the same anatomy ---------------
# (label, name, centre mm, semi-axes mm, signal)
PHANTOM = [
    (1, "brain", (0.0, 0.0, 0.0), (60.0, 75.0, 65.0), 400),
    (2, "ventricles", (0.0, -5.0, 5.0), (10.0, 25.0, 15.0), 150),
    (3, "lesion", (25.0, 20.0, -10.0), (12.0, 12.0, 12.0), 900),
]
_SCALP = ((0.0, 0.0, 0.0), (70.0, 85.0, 75.0), 200)


def _inside(points: np.ndarray, centre, axes) -> np.ndarray:
    q = (points - np.asarray(centre, np.float32)) / np.asarray(axes, np.float32)
    return np.einsum("...i,...i->...", q, q) <= 1.0


def phantom_labels(points: np.ndarray) -> np.ndarray:
    """Label (0 background, 1 brain, 2 ventricles, 3 lesion) at LPS points (..., 3)."""
    labels = np.zeros(points.shape[:-1], np.uint8)
    for label, _, centre, axes, _ in PHANTOM:
        labels[_inside(points, centre, axes)] = label
    return labels


def phantom_signal(points: np.ndarray) -> np.ndarray:
    """Noise-free MR signal of the phantom at LPS points (..., 3)."""
    signal = np.where(_inside(points, *_SCALP[:2]), _SCALP[2], 0).astype(np.int16)
    for _, _, centre, axes, value in PHANTOM:
        signal[_inside(points, centre, axes)] = value
    return signal


# -- building datasets -----------------------------------------------------------------
def _base_ct() -> np.ndarray:
    """Stored values of the real 512x512 CT slice 693_UNCR (rescale -1024)."""
    ds = pydicom.dcmread(_testfile("693_UNCR.dcm"))
    return ds.pixel_array.astype(np.int16)


def _testfile(name: str) -> str:
    path = get_testdata_file(name, download=False)
    if path is None:
        raise FileNotFoundError(
            f"the demo file {name} is missing: install the project with its [hub] extra "
            "(it ships pydicom-data)"
        )
    return path


def built_slice(key: str, index: int, _cache: dict = {}) -> np.ndarray:
    """Stored values of slice ``index`` (InstanceNumber - 1) of a built series."""
    g = GRIDS[key]
    if key.startswith("ct-"):
        if "ct" not in _cache:
            _cache["ct"] = _base_ct()
        base = _cache["ct"]
        if (g.rows, g.cols) != base.shape:
            step = base.shape[0] // g.rows
            base = base[::step, ::step]
        world = g.world(index)
        # a sphere of 30 mm radius (+400 HU) whose cross-section changes along z
        nodule = _inside(world, (40.0, 20.0, -20.0 if key == "ct-head" else 50.0),
                         (30.0, 30.0, 30.0))
        pixels = base.copy()
        pixels[nodule] += 400
    else:
        rng = np.random.default_rng(index + (1000 if "oblique" in key else 0))
        signal = phantom_signal(g.world(index)).astype(np.float32)
        pixels = np.clip(signal + rng.normal(0, 10, signal.shape), 0, 4000).astype(np.int16)
    pixels[0, 0] = index + 1
    return pixels


def _patient_study(ds: Dataset, s: DemoSeries) -> None:
    p = PATIENTS[s.patient]
    ds.PatientName = p.name
    ds.PatientID = p.id
    ds.PatientSex = p.sex
    ds.PatientAge = p.age
    ds.PatientBirthDate = ""
    ds.StudyInstanceUID = s.study_uid
    ds.StudyDate = STUDY_DATE
    ds.StudyTime = "101500"
    ds.StudyID = p.id[-3:]
    ds.AccessionNumber = "ACC" + p.id[-3:]
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = {"oncology": "Demo CT", "neuro": "Demo head"}[p.project]
    ds.SeriesInstanceUID = s.series_uid
    ds.SeriesNumber = SERIES.index(s) + 1
    ds.SeriesDescription = s.description
    ds.SeriesDate = STUDY_DATE


def _built_instances(s: DemoSeries) -> Iterator[Dataset]:
    g = GRIDS[s.key]
    ct = s.modality == "CT"
    for index in range(g.slices):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = CTImageStorage if ct else MRImageStorage
        ds.SOPInstanceUID = uid("instance", f"{s.key}/{index}")
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        _patient_study(ds, s)
        ds.Modality = s.modality
        ds.Manufacturer = "imaginghub demo"
        ds.ManufacturerModelName = "phantom"
        ds.BodyPartExamined = "HEAD"
        ds.FrameOfReferenceUID = uid("frame", s.patient)
        ds.PositionReferenceIndicator = ""
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber = index + 1
        ds.AcquisitionNumber = 1
        pos = g.position(index)
        ds.ImagePositionPatient = [f"{v:.4f}" for v in pos]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*g.row_dir, *g.col_dir)]
        ds.SliceLocation = f"{float(g.normal @ pos):.4f}"
        ds.SliceThickness = g.slice_spacing
        ds.PixelSpacing = list(g.pixel_spacing)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = g.rows, g.cols
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1
        if ct:
            ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
            ds.WindowCenter, ds.WindowWidth = -600, 1500
            ds.KVP = 120
        else:
            ds.WindowCenter, ds.WindowWidth = 450, 900
            ds.MagneticFieldStrength = 3
        ds.PixelData = built_slice(s.key, index).tobytes()
        yield ds


def _enhanced_instance(s: DemoSeries) -> Dataset:
    """The head phantom as one Enhanced MR image: per-frame positions, shared
    orientation, pixel measures and rescale; frames in a shuffled order."""
    g = GRIDS[s.key]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = EnhancedMRImageStorage
    ds.SOPInstanceUID = uid("instance", f"{s.key}/0")
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    _patient_study(ds, s)
    ds.Modality = "MR"
    ds.Manufacturer = "imaginghub demo"
    ds.ManufacturerModelName = "phantom"
    ds.BodyPartExamined = "HEAD"
    ds.FrameOfReferenceUID = uid("frame", s.patient)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.InstanceNumber = 1
    ds.NumberOfFrames = g.slices
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = g.rows, g.cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1
    shared = Dataset()
    orientation = Dataset()
    orientation.ImageOrientationPatient = [*g.row_dir, *g.col_dir]
    shared.PlaneOrientationSequence = [orientation]
    measures = Dataset()
    measures.PixelSpacing = list(g.pixel_spacing)
    measures.SliceThickness = g.slice_spacing
    shared.PixelMeasuresSequence = [measures]
    transform = Dataset()
    transform.RescaleIntercept, transform.RescaleSlope, transform.RescaleType = 0, 1, "US"
    shared.PixelValueTransformationSequence = [transform]
    ds.SharedFunctionalGroupsSequence = [shared]
    per_frame = []
    for index in ENHANCED_FRAME_ORDER:
        item = Dataset()
        position = Dataset()
        position.ImagePositionPatient = [f"{v:.4f}" for v in g.position(int(index))]
        item.PlanePositionSequence = [position]
        content = Dataset()
        content.InStackPositionNumber = int(index) + 1
        item.FrameContentSequence = [content]
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    ds.PixelData = np.stack(
        [built_slice("mr-head", int(i)) for i in ENHANCED_FRAME_ORDER]).tobytes()
    return ds


def _segmentation_instance(s: DemoSeries) -> Dataset:
    """The phantom's known labels on the grid of series ``s.of``, as a BINARY
    DICOM SEG that references every instance of that series (built with
    highdicom; the segments are the reference, so MANUAL, not AUTOMATIC)."""
    try:
        import highdicom as hd
    except ImportError:
        raise ImportError(
            f"the demo series {s.key} (a DICOM SEG) is built with highdicom, which is not "
            "installed: install the project with its [kernel] extra (it ships highdicom)"
        ) from None
    from pydicom.sr.codedict import codes

    source = series(s.of)
    images = list(instances(source))
    g = GRIDS[source.key]
    labels = np.stack([phantom_labels(g.world(index)) for index in range(g.slices)])
    seg = hd.seg.Segmentation(
        source_images=images,
        pixel_array=labels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[
            hd.seg.SegmentDescription(
                segment_number=label, segment_label=name,
                segmented_property_category=codes.SCT.Tissue,
                segmented_property_type=codes.SCT.Tissue,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
            for label, name, *_ in PHANTOM],
        series_instance_uid=s.series_uid,
        series_number=SERIES.index(s) + 1,
        sop_instance_uid=uid("instance", f"{s.key}/0"),
        instance_number=1,
        manufacturer="imaginghub demo",
        manufacturer_model_name="phantom",
        software_versions="1",
        device_serial_number="0",
        series_description=s.description,
        content_description="phantom labels",
        content_label="PHANTOM",
    )
    _patient_study(seg, s)
    seg.ContentDate, seg.ContentTime = STUDY_DATE, "101500"
    seg.BodyPartExamined = "HEAD"
    return seg


def _real_instance(s: DemoSeries) -> Dataset:
    ds = pydicom.dcmread(_testfile(s.source))
    _patient_study(ds, s)
    ds.SOPInstanceUID = uid("instance", f"{s.key}/0")
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if "FrameOfReferenceUID" in ds:
        ds.FrameOfReferenceUID = uid("frame", f"{s.patient}/{s.source}")
    return ds


def instances(s: DemoSeries) -> Iterator[Dataset]:
    if s.key == "mr-head-enhanced":
        yield _enhanced_instance(s)
    elif s.of:
        yield _segmentation_instance(s)
    elif s.source == "built":
        yield from _built_instances(s)
    else:
        yield _real_instance(s)


def count_instances() -> int:
    return sum(GRIDS[s.key].slices if s.key in _CLASSIC else 1 for s in SERIES)


_CLASSIC = ("ct-head", "ct-head-reversed", "mr-head", "mr-head-oblique")


def to_bytes_path(s: DemoSeries) -> io.BytesIO:
    """The first instance of a demo series as a readable in-memory file."""
    return io.BytesIO(to_bytes(next(instances(s))))


def to_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.preamble = b"\0" * 128
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def check_keys(text: str) -> list[str]:
    """Demo series keys from ``"k1,k2"``; a ConfigError names unknown ones
    and lists the keys."""
    from .errors import ConfigError

    keys = [k.strip() for k in text.replace(" ", ",").split(",") if k.strip()]
    unknown = [k for k in keys if k not in BY_KEY]
    if unknown or not keys:
        raise ConfigError(f"no demo series {', '.join(unknown) or '(none given)'}; the demo "
                          f"series are {', '.join(BY_KEY)}")
    return keys


def load(dicomweb_url: str, auth, *, out=None, batch: int = 32,
         keys: list[str] | None = None, verify=True) -> int:
    """STOW-RS the demo set (or the series named by ``keys``) to
    ``dicomweb_url`` (TLS checked with ``verify``); returns the instances
    stored."""
    import httpx
    from tqdm import tqdm

    from ..kernels.multipart import dicom_body

    chosen = [s for s in SERIES if keys is None or s.key in keys]
    total = sum(GRIDS[s.key].slices if s.key in _CLASSIC else 1 for s in chosen)
    stored = 0
    boundary = "imaginghub-demo-boundary"
    ctype = f'multipart/related; type="application/dicom"; boundary={boundary}'
    with httpx.Client(auth=auth, timeout=120, verify=verify) as client, \
            tqdm(total=total, desc="demo data", unit="img", file=out) as bar:
        for s in chosen:
            items = instances(s)
            while True:
                pending = [to_bytes(ds) for _, ds in zip(range(batch), items)]
                if not pending:
                    break
                body = dicom_body(pending, boundary)
                r = client.post(f"{dicomweb_url}/studies", content=body,
                                headers={"Content-Type": ctype, "Accept": "application/dicom+json"})
                if r.status_code not in (200, 202):
                    raise RuntimeError(
                        f"the archive refused demo series {s.key} (HTTP {r.status_code})")
                stored += len(pending)
                bar.update(len(pending))
    return stored


def assign_projects(store) -> int:
    """Put every demo series into its patient's project (idempotent)."""
    added = 0
    for project in {p.project for p in PATIENTS.values()}:
        added += store.assign([(s.study_uid, s.series_uid) for s in SERIES if s.project == project],
                              project, by="demo")
    return added
