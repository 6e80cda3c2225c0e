"""Small datasets built in memory for tests, and kernels run as a user."""

import contextlib
from pathlib import Path
import time

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, generate_uid


def in_memory_ct(series_uid=None, study_uid=None, value=0, size=8) -> Dataset:
    """A ``size`` x ``size`` CT image (8 x 8 by default) built the way a
    notebook would: no preamble, no file meta."""
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.PatientID, ds.Modality = "MEM-1", "CT"
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.PixelData = ((np.arange(size * size) % 4096).astype(np.int16) + value).tobytes()
    return ds


def axial_ct_series(slices, rows, cols, *, origin, spacing, thickness, pixels=None,
                    number=None, **attributes):
    """A new series of axial CT slices as files are stored (file meta, one
    study, one frame of reference): slice k at ``origin`` plus k times
    ``thickness`` along z, ``spacing`` (between rows, between columns) in
    mm, its pixels ``pixels(k)`` (zeros), its InstanceNumber ``number(k)``
    (k + 1), and ``attributes`` on every slice. Returns (study, series,
    frame of reference, datasets)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    out = []
    for k in range(slices):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality = "CT"
        ds.InstanceNumber = number(k) if number else k + 1
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
        ds.ImagePositionPatient = [float(origin[0]), float(origin[1]),
                                   float(origin[2]) + thickness * k]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = list(spacing), thickness
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        values = pixels(k) if pixels else 0
        ds.PixelData = np.broadcast_to(np.asarray(values, np.int16), (rows, cols)).tobytes()
        out.append(ds)
    return study, series, frame, out


def ct_file(series_uid=None, study_uid=None, sop_uid=None, value=0, size=8) -> bytes:
    """A complete CT file (bytes) of a ``size`` x ``size`` image (8 x 8)."""
    import io

    ds = in_memory_ct(series_uid, study_uid, value, size)
    ds.SOPInstanceUID = sop_uid or ds.SOPInstanceUID
    from pydicom.dataset import FileMetaDataset

    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.preamble = b"\0" * 128
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@contextlib.contextmanager
def kernels_as(stack, user: str):
    """``user``'s token, set (with the gateway's URL and the kernelspec's
    path) for the kernels that this process starts; yields the token."""
    import pytest

    from imaginghub.hub.hubconfig import data_dir

    token = stack.token(user)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", str(data_dir(stack.home)))
        mp.setenv("IMAGINGHUB_DICOMWEB_URL", stack.run["gateway_url"])
        mp.setenv("IMAGINGHUB_DICOMWEB_TOKEN", token)
        mp.setenv("IMAGINGHUB_CACHE_DIR", "off")
        mp.delenv("IMAGINGHUB_DICOMWEB_USER", raising=False)
        yield token


def hub_config(stack):
    """The stack's hub configuration, as the hub loads it."""
    from traitlets.config.loader import PyFileConfigLoader

    return PyFileConfigLoader("jupyterhub_config.py", path=str(stack.home.hub_dir)).load_config()


def server_token(stack, user: str) -> str:
    """A token of ``user`` with just the scopes of a server's token (what
    code in the user's notebooks has)."""
    from imaginghub.hub.hubapi import HubAPI

    scopes = list(hub_config(stack).Spawner.server_token_scopes)
    return HubAPI(stack.home).request("POST", f"/users/{user}/tokens", json={
        "scopes": scopes, "note": "as the user's server"}).json()["token"]


def structure_set(study, series, frame, rois: dict[int, tuple[str, list]]) -> Dataset:
    """pydicom's rtstruct.dcm (read with force=True) made into the structure
    set of a series (its study, series and frame of reference UIDs), with
    ``rois``: {number: (name, [contour points x, y, z, ...])}, closed planar."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian
    ds = pydicom.dcmread(get_testdata_file("rtstruct.dcm"), force=True)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ref = ds.ReferencedFrameOfReferenceSequence[0]
    ref.FrameOfReferenceUID = frame
    ref.RTReferencedStudySequence[0].ReferencedSOPInstanceUID = study
    ref.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0].SeriesInstanceUID = series
    template_roi, template_contour = ds.StructureSetROISequence[0], ds.ROIContourSequence[0]
    ds.StructureSetROISequence, ds.ROIContourSequence = [], []
    ds.RTROIObservationsSequence = []
    for number, (name, contours) in rois.items():
        roi = Dataset()
        roi.ROINumber, roi.ROIName, roi.ReferencedFrameOfReferenceUID = number, name, frame
        roi.ROIGenerationAlgorithm = template_roi.ROIGenerationAlgorithm
        ds.StructureSetROISequence.append(roi)
        item = Dataset()
        item.ReferencedROINumber = number
        item.ROIDisplayColor = template_contour.ROIDisplayColor
        item.ContourSequence = []
        for n, data in enumerate(contours, start=1):
            c = Dataset()
            c.ContourGeometricType, c.ContourNumber = "CLOSED_PLANAR", n
            c.NumberOfContourPoints = len(data) // 3
            c.ContourData = [round(float(v), 4) for v in data]
            item.ContourSequence.append(c)
        ds.ROIContourSequence.append(item)
    return ds


def wait_for(predicate, timeout=60, what="a condition"):
    """``predicate()``'s first true value, asked every 0.2 s; an
    AssertionError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


WORKFLOWS = Path(__file__).parents[1] / "notebooks" / "workflows"


def run_workflow(name: str, where: Path, **parameters):
    """Execute workflow ``name`` (of notebooks/workflows) in folder ``where``
    with papermill in the imaging kernel (the executed notebook is saved
    there too); the executed notebook."""
    import papermill

    where.mkdir(exist_ok=True)
    return papermill.execute_notebook(WORKFLOWS / name, where / name, parameters=parameters,
                                      kernel_name="imaging", cwd=where, progress_bar=False)


class Recorder:
    """A federation test's TLS-terminating proxy between the sites and the
    coordinator's Fleet proxy: every request body a site sent and
    every answer, by path, in a thread of its own."""

    def __init__(self, folder: Path, upstream: str, upstream_ca: Path):
        import asyncio
        import threading

        from imaginghub.hub.services.federation.pki import make_ca, make_server_cert
        from imaginghub.hub.state import free_port

        make_ca(folder, "the test's CA")
        self.cert, self.key = make_server_cert(folder, ["127.0.0.1", "localhost"])
        self.ca = folder / "ca.crt"
        self.port = free_port()
        self.sent: list[tuple[str, bytes]] = []
        self.received: list[tuple[str, bytes]] = []
        self.upstream, self.upstream_ca = upstream, upstream_ca
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        threading.Thread(target=self._run, args=(ready,), daemon=True).start()
        ready.wait(10)

    def _record(self, path, body, answer):
        self.sent.append((path, body))
        self.received.append((path, answer))

    def _run(self, ready):
        import asyncio

        from imaginghub.hub.services.federation import fleetproxy

        asyncio.set_event_loop(self.loop)
        app = fleetproxy.make_app(self.upstream, str(self.upstream_ca), record=self._record)
        self.server = fleetproxy.listen(app, "127.0.0.1", self.port, str(self.cert),
                                        str(self.key))
        ready.set()
        self.loop.run_forever()

    def stop(self):
        self.loop.call_soon_threadsafe(self.server.stop)
        self.loop.call_soon_threadsafe(self.loop.stop)

    def sent_bytes(self) -> bytes:
        return b"".join(body for _, body in self.sent)
