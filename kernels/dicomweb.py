"""``pacs``: the kernel's DICOMweb client.

Built on dicomweb-client and keeping its names (``search_for_*``,
``retrieve_*``, ``iter_*``, ``store_instances``); anything it offers that is
not wrapped here is reached through the same object. It is configured from
the environment that the hub's spawner sets:

``IMAGINGHUB_DICOMWEB_URL``
    base URL of the DICOMweb service (the archive, later the gateway)
``IMAGINGHUB_DICOMWEB_USER`` / ``IMAGINGHUB_DICOMWEB_PASSWORD``
    HTTP basic credentials, or
``IMAGINGHUB_DICOMWEB_TOKEN`` (default: ``JUPYTERHUB_API_TOKEN``)
    a bearer token, used when no user is set.

It hides quirks of archives so that plain DICOMweb works: query values are
sent with DICOM's wildcard characters unescaped (Orthanc's plugin 1.7 does
not percent-decode them), frames are asked for as octet streams in any
transfer syntax, and datasets built in memory get a preamble and file meta
before STOW-RS.

This module imports nothing heavy at import time: the kernel's start-up
stays fast, and the first call pays for dicomweb-client and numpy.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
from urllib.parse import urlsplit, urlunsplit

from .errors import (REFUSED, ArchiveUnavailable, AuthenticationFailed, Forbidden, NotFound,
                     PACSError, Refused, ServiceUnavailable, Unavailable)
from .query import archive_filters, first_value, keep, plain_query

log = logging.getLogger(__name__)

from .environment import ENV_PASSWORD, ENV_URL, ENV_USER, kernel_environment

# (connect, read) seconds: a dead archive fails fast, a big answer may stream.
DEFAULT_TIMEOUT = (5.0, 120.0)
# Instances go to the archive in STOW-RS requests of about this size (the
# gateway takes at most 256 MiB per request by default).
STOW_BATCH_BYTES = 64 * 1024**2
# Series of at least this many instances decode compressed frames in worker processes.
PARALLEL_DECODE_FROM = 16
CINE_PART_FRAMES = 16  # a long cine is decoded by several workers, this many frames each at least
MULTIPART_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'
def _session(username, password, token, timeout):
    import requests
    from requests.auth import AuthBase, HTTPBasicAuth

    class _Bearer(AuthBase):
        def __init__(self, value):
            self._value = value

        def __call__(self, r):
            r.headers["Authorization"] = f"token {self._value}"
            return r

        def __repr__(self):  # never show the token
            return "<token auth>"

    class ArchiveSession(requests.Session):
        def request(self, method, url, *args, **kwargs):
            parts = urlsplit(url)
            if parts.query:
                url = urlunsplit(parts._replace(query=plain_query(parts.query)))
            kwargs["timeout"] = kwargs.get("timeout") or timeout
            return super().request(method, url, *args, **kwargs)

    s = ArchiveSession()
    if username:
        s.auth = HTTPBasicAuth(username, password or "")
    elif token:
        s.auth = _Bearer(token)
    return s


class PACS:
    """A DICOMweb archive as seen from a notebook.

    >>> pacs.search_for_series(search_filters={"Modality": "CT"})
    >>> vol = pacs.load_series(series_uid)
    """

    def __init__(self, url: str | None = None, *, username: str | None = None,
                 password: str | None = None, token: str | None = None,
                 timeout: tuple[float, float] = DEFAULT_TIMEOUT,
                 cache_dir: str | os.PathLike | None = None, cache_gb: float = 5.0):
        """``cache_dir``: where loaded volumes are kept for the next load (see
        :mod:`imaginghub.kernels.cache`); None: no cache. The kernel's
        ``pacs`` has one in ``~/.cache/imaginghub/volumes``."""
        self.url = (url or "").rstrip("/")
        self._cache_args = (cache_dir, cache_gb)
        self._cache = None
        self._username = username
        self._password = password
        self._token = token
        self.timeout = timeout
        self._client = None
        self._http = None

    @classmethod
    def from_env(cls, environ=None) -> "PACS":
        env = kernel_environment(environ)
        return cls(env.dicomweb_url, username=env.username, password=env.password,
                   token=env.token, cache_dir=env.cache_dir, cache_gb=env.cache_gb)

    @property
    def cache(self):
        """The local volume cache (``.info()``, ``.clear()``), or None."""
        if self._cache is None and self._cache_args[0] is not None:
            from .cache import VolumeCache

            self._cache = VolumeCache(self._cache_args[0], int(self._cache_args[1] * 1e9))
        return self._cache

    def __repr__(self) -> str:
        return f"<PACS {self.url or '(not configured)'}>"

    # -- plumbing ---------------------------------------------------------
    @property
    def client(self):
        """The underlying ``dicomweb_client.DICOMwebClient``."""
        if self._client is None:
            if not self.url:
                raise PACSError(
                    f"no archive configured: set {ENV_URL} (the hub sets it in every "
                    "user server), or create a client with PACS(url, ...)"
                )
            from dicomweb_client import DICOMwebClient

            self._client = DICOMwebClient(
                self.url,
                session=_session(self._username, self._password, self._token, self.timeout),
                timeout=self.timeout,
            )
            # dicomweb-client retries a refused connection five times with
            # growing waits (a minute for a dead archive), each logged with a
            # traceback: fail at once with our own message instead.
            self._client.set_http_retry_params(retry=False)
        return self._client

    def _httpx(self):
        """An httpx client for streamed transfers (connection reuse)."""
        if self._http is None:
            import httpx

            auth = None
            headers = {}
            if self._username:
                auth = httpx.BasicAuth(self._username, self._password or "")
            elif self._token:
                headers["Authorization"] = f"token {self._token}"
            connect, read = self.timeout
            self._http = httpx.Client(
                auth=auth, headers=headers,
                timeout=httpx.Timeout(read, connect=connect),
            )
        return self._http

    def _call(self, what: str, fn, *args, **kwargs):
        """Run a dicomweb-client call, turning transport errors into ours."""
        import requests

        try:
            return fn(*args, **kwargs)
        except requests.exceptions.HTTPError as e:
            raise self._http_error(e.response.status_code if e.response is not None else 0,
                                   what) from None
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as e:
            raise self._unreachable(e) from None
        except Exception as e:  # retrying wraps the last answer in RetryError
            if type(e).__name__ == "RetryError":
                raise ArchiveUnavailable(
                    f"the archive at {self.url} kept failing ({what}); try again later"
                ) from None
            raise

    @property
    def _through_gateway(self) -> bool:
        """Whether this client talks to the data service (a token) rather
        than to an archive with its own credentials."""
        return not self._username

    def _unreachable(self, exc) -> Unavailable:
        """ServiceUnavailable when the data service did not answer,
        ArchiveUnavailable when an archive reached directly did not."""
        kind = "timed out" if "timeout" in type(exc).__name__.lower() else "is not reachable"
        what, cls = (("the data service", ServiceUnavailable) if self._through_gateway
                     else ("the archive", ArchiveUnavailable))
        return cls(
            f"{what} at {self.url} {kind}: check that the workspace is running "
            f"('imaginghub up') and that {ENV_URL} is right"
        )

    def _http_error(self, status: int, what: str) -> PACSError:
        if status == 403:
            return Forbidden(f"{what}: not allowed by {self.url} (HTTP 403)")
        if status == 401:
            return AuthenticationFailed(
                f"the archive at {self.url} refused the credentials (HTTP {status}) for "
                f"{what}: check {ENV_USER}/{ENV_PASSWORD} or the token"
            )
        if status == 404:
            return NotFound(f"{what}: not found in the archive at {self.url}")
        if status in REFUSED:
            return Refused(f"{what}: refused by {self.url} (HTTP {status})")
        if status in (502, 504) or (status == 503 and not self._through_gateway):
            return ArchiveUnavailable(f"{what}: the archive behind {self.url} did not answer "
                                      f"(HTTP {status}); try again later")
        if status == 503:
            return ServiceUnavailable(f"{what}: {self.url} cannot answer now (HTTP 503); try "
                                      "again later")
        return PACSError(f"{what}: the archive at {self.url} answered HTTP {status}")

    # -- QIDO-RS ----------------------------------------------------------
    def _search(self, what: str, fn, *args, search_filters=None, **kwargs) -> list[dict]:
        filters, exact = archive_filters(search_filters)
        found = self._call(what, fn, *args, search_filters=filters, **kwargs)
        return [r for r in found if keep(r, exact)] if exact else found

    def search_for_studies(self, **kwargs) -> list[dict]:
        """QIDO-RS studies; keyword arguments as dicomweb-client's
        (``search_filters``, ``fields``, ``limit``, ``offset``, ``fuzzymatching``)."""
        return self._search("search for studies", self.client.search_for_studies, **kwargs)

    def search_for_series(self, study_instance_uid: str | None = None, **kwargs) -> list[dict]:
        """QIDO-RS series, e.g. ``search_filters={"Modality": "CT", "PatientName": "Demo*"}``."""
        return self._search("search for series", self.client.search_for_series,
                            study_instance_uid, **kwargs)

    def search_for_instances(self, study_instance_uid: str | None = None,
                             series_instance_uid: str | None = None, **kwargs) -> list[dict]:
        return self._search("search for instances", self.client.search_for_instances,
                            study_instance_uid, series_instance_uid, **kwargs)

    # -- WADO-RS ----------------------------------------------------------
    def retrieve_series_metadata(self, study_instance_uid, series_instance_uid):
        return self._call(f"series {series_instance_uid}", self.client.retrieve_series_metadata,
                          study_instance_uid, series_instance_uid)

    def retrieve_instance(self, study_instance_uid, series_instance_uid, sop_instance_uid, **kw):
        return self._call(f"instance {sop_instance_uid}", self.client.retrieve_instance,
                          study_instance_uid, series_instance_uid, sop_instance_uid, **kw)

    def retrieve_series(self, study_instance_uid, series_instance_uid, **kw):
        return self._call(f"series {series_instance_uid}", self.client.retrieve_series,
                          study_instance_uid, series_instance_uid, **kw)

    def iter_series(self, study_instance_uid, series_instance_uid, **kw):
        return self._call(f"series {series_instance_uid}", self.client.iter_series,
                          study_instance_uid, series_instance_uid, **kw)

    def retrieve_instance_frames(self, study_instance_uid, series_instance_uid,
                                 sop_instance_uid, frame_numbers, media_types=None):
        """Frames as bytes, in their stored transfer syntax unless ``media_types`` says else."""
        media_types = media_types or (("application/octet-stream", "*"),)
        return self._call(f"frames of {sop_instance_uid}", self.client.retrieve_instance_frames,
                          study_instance_uid, series_instance_uid, sop_instance_uid,
                          frame_numbers, media_types=media_types)

    # -- STOW-RS ----------------------------------------------------------
    def store_instances(self, datasets, study_instance_uid: str | None = None, *,
                        project: str | None = None):
        """STOW-RS pydicom datasets, into ``project`` when the gateway needs to
        be told which (you belong to several). Datasets built in memory get
        the preamble and file meta that a DICOM file needs. They are sent in
        requests of about 64 MiB. Returns the archive's answer (stored and
        failed instances of all requests) as a pydicom Dataset."""
        import io

        from pydicom.dataset import Dataset, FileMetaDataset
        from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

        answer = Dataset()
        batch: list[bytes] = []
        size = 0
        series: dict[str, dict] = {}  # what was sent, by series: for a job's record
        for ds in datasets:
            series.setdefault(str(ds.get("SeriesInstanceUID", "")), {
                "study_uid": str(ds.get("StudyInstanceUID", "")),
                "modality": str(ds.get("Modality", "")),
                "description": str(ds.get("SeriesDescription", "")),
                "instances": set()})["instances"].add(str(ds.get("SOPInstanceUID", "")))
            if getattr(ds, "preamble", None) is None:
                ds.preamble = b"\0" * 128
            meta = getattr(ds, "file_meta", None) or FileMetaDataset()
            meta.setdefault("TransferSyntaxUID", ExplicitVRLittleEndian)
            meta.MediaStorageSOPClassUID = ds.SOPClassUID
            meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            meta.setdefault("ImplementationClassUID", PYDICOM_IMPLEMENTATION_UID)
            ds.file_meta = meta
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            batch.append(buf.getvalue())
            size += len(batch[-1])
            if size >= STOW_BATCH_BYTES:  # archives limit the size of one request
                _merge_stow_answer(answer, self._post_dicom(batch, study_instance_uid, project))
                batch, size = [], 0
        if batch:
            _merge_stow_answer(answer, self._post_dicom(batch, study_instance_uid, project))
        _record_stored(answer, series)
        return answer

    def _post_dicom(self, bodies: list[bytes], study_instance_uid=None, project=None):
        """POST raw DICOM files as one STOW-RS request; returns the httpx answer
        (200 all stored, 202 some refused or stored with a WarningReason,
        409 none stored)."""
        import httpx

        from .multipart import dicom_body

        boundary = "imaginghub-stow-boundary"
        content = dicom_body(bodies, boundary)
        headers = {"Content-Type": f'multipart/related; type="application/dicom"; '
                                   f"boundary={boundary}",
                   "Accept": "application/dicom+json"}
        if project:
            headers["X-Imaginghub-Project"] = project
        url = f"{self.url}/studies" + (f"/{study_instance_uid}" if study_instance_uid else "")
        try:
            try:
                r = self._httpx().post(url, content=content, headers=headers)
            except httpx.RemoteProtocolError:
                # The service closed a kept-alive connection as this was sent
                # (it was never answered): storing the same instances again
                # is harmless (they keep their SOP Instance UIDs).
                r = self._httpx().post(url, content=content, headers=headers)
        except httpx.TransportError as e:
            raise self._unreachable(e) from None
        if r.status_code not in (200, 202, 409):
            reason = r.reason_phrase
            raise self._http_error(r.status_code, f"store instances: {reason}")
        return r

    # -- volumes ----------------------------------------------------------
    def find_series(self, series_instance_uid: str) -> dict:
        """The QIDO-RS record of one series (study UID, instance count, ...)."""
        found = self.search_for_series(
            search_filters={"SeriesInstanceUID": series_instance_uid},
            fields=["NumberOfSeriesRelatedInstances", "SeriesDescription", "Modality"],
        )
        if not found:
            raise NotFound(f"series {series_instance_uid}: not found in the archive at {self.url}")
        return found[0]

    def load_segmentation(self, seg_uid: str, *, series=None, masks: bool = False):
        """A DICOM SEG or RTSTRUCT (series or instance UID) as ``(labels,
        names)``: a label Volume on its source series' grid and ``{number:
        name}``; for an RTSTRUCT, ``masks=True`` adds one boolean mask per
        ROI. See :func:`~imaginghub.kernels.segmentation.load_segmentation`."""
        from .segmentation import load_segmentation

        return load_segmentation(self, seg_uid, series=series, masks=masks)

    def write_segmentation(self, volume, labels, names: dict, **kwargs) -> str:
        """Store ``labels`` (the shape of ``volume``, from :meth:`load_series`)
        as a DICOM SEG with segments ``names`` (``{1: "liver"}``); returns its
        series UID. See :func:`~imaginghub.kernels.segmentation.write_segmentation`."""
        from .segmentation import write_segmentation

        return write_segmentation(self, volume, labels, names, **kwargs)

    def load_images(self, series_instance_uid: str, study_instance_uid: str | None = None, *,
                    progress: bool | None = None):
        """Load any image series (radiographs, ultrasound cine, colour,
        secondary captures, ...) as :class:`~imaginghub.kernels.images.Images`:
        one array of frames per instance, RGB for colour, stored values with
        the rescale applied, and each instance's timing, spacing and window.
        Where a series is a volume, :meth:`load_series` places it in space."""
        return _load_images(self, series_instance_uid, study_instance_uid, progress)

    def load_series(self, series_instance_uid: str, study_instance_uid: str | None = None, *,
                    dtype="float32", progress: bool | None = None, cache: bool = True):
        """Load a series as a :class:`~imaginghub.kernels.volume.Volume`.

        The WADO-RS answer is streamed and every instance is decoded into one
        preallocated array as it arrives; slices are ordered along the slice
        normal (not by InstanceNumber) and stored values are rescaled to
        physical units (for CT, Hounsfield units). With a local cache
        (:attr:`cache`; ``cache=False`` skips it), an unchanged series comes
        from disk the second time.
        """
        import numpy as np
        from pydicom import dcmread
        from pydicom.filebase import DicomBytesIO

        from .decode import frames_and_pixels, is_compressed, quick_frame, stored_compressed
        from .multipart import boundary_of, iter_parts
        from .volume import VolumeBuilder

        record = self.find_series(series_instance_uid)
        study_instance_uid = study_instance_uid or first_value(record, "0020000D")
        count = int(first_value(record, "00201209") or 0)
        url = f"{self.url}/studies/{study_instance_uid}/series/{series_instance_uid}"
        store = self.cache if cache else None
        headers = {"Accept": MULTIPART_DICOM}
        known = store.etag(self.url, series_instance_uid, dtype) if store else None
        if known:
            headers["If-None-Match"] = known
        builder = VolumeBuilder(expected=count, dtype=np.dtype(dtype))
        bar = _progress(count, f"series {series_instance_uid[-12:]}", progress)
        meta = {}
        etag = None
        pending: collections.deque = collections.deque()
        with _stream_end(self, pending, bar), \
                self._httpx().stream("GET", url, headers=headers) as r:
            if r.status_code == 304:
                hit = store.get(self.url, series_instance_uid, dtype)
                if hit is not None:
                    bar.update(count)
                    return hit
                bar.close()  # the cached copy went away meanwhile
                return self.load_series(series_instance_uid, study_instance_uid,
                                        dtype=dtype, progress=progress, cache=False)
            etag = r.headers.get("etag")
            if r.status_code != 200:
                raise self._http_error(r.status_code, f"series {series_instance_uid}")
            boundary = boundary_of(r.headers.get("content-type", ""))
            quick = None  # whether quick_frame agreed with pydicom on the first image
            parallel = count >= PARALLEL_DECODE_FROM
            for _, body in iter_parts(r.iter_bytes(), boundary, writable=True):
                if meta:  # after the first instance, most need no pydicom dataset here
                    if quick:
                        fast = quick_frame(body)
                        if fast is not None:
                            builder.add(*fast)
                            bar.update(1)
                            continue
                    if parallel and stored_compressed(body):
                        _decode_elsewhere(pending, builder, body, bar)
                        continue
                ds = dcmread(DicomBytesIO(body), force=True)
                if not meta:
                    meta = _series_meta(ds)
                if "PixelData" not in ds:
                    continue
                if parallel and is_compressed(ds):
                    _decode_elsewhere(pending, builder, body, bar)
                    continue
                both = list(frames_and_pixels(ds))
                if quick is None:
                    quick = _agrees(quick_frame(body), both)
                for frame, pixels in both:
                    builder.add(frame, pixels)
                bar.update(1)
            while pending:
                _add_decoded(builder, pending.popleft(), bar)
        volume = builder.build(meta)
        if store is not None and etag:
            store.put(self.url, series_instance_uid, volume, etag)
        return volume


@contextlib.contextmanager
def _stream_end(pacs, pending: collections.deque, bar):
    """How a series' stream ends, whatever happens: the archive out of reach
    as our error, decodes not taken in cancelled, the progress bar closed."""
    import httpx

    try:
        yield
    except httpx.TransportError as e:
        raise pacs._unreachable(e) from None
    finally:
        for item in pending:  # a future, or the futures of one instance's parts
            for future in item if isinstance(item, list) else [item]:
                future.cancel()
        bar.close()


ENV_JOB_STORED = "IMAGINGHUB_JOB_STORED"
STORED_FILE = "stored-series.jsonl"  # its name in a job's work folder


def _record_stored(answer, series: dict[str, dict]) -> None:
    """In a job (``$IMAGINGHUB_JOB_STORED`` names a file of its work folder),
    the series it stored, a JSON line each: the jobs widget links them to the
    browser viewer."""
    path = os.environ.get(ENV_JOB_STORED)
    if not path:
        return
    stored = {str(item.get("ReferencedSOPInstanceUID", ""))
              for item in answer.get("ReferencedSOPSequence", [])}
    if not stored:
        return
    import json

    with open(path, "a") as f:
        for uid, info in series.items():
            if uid and info["instances"] & stored:
                line = {"series_uid": uid, **{k: v for k, v in info.items() if k != "instances"}}
                f.write(json.dumps(line) + "\n")


def _load_images(pacs, series_uid: str, study_uid: str | None, progress):
    """:meth:`PACS.load_images` (streamed; compressed instances decoded in
    the worker processes while the stream goes on, a long cine's frames
    shared among them)."""
    from pydicom import dcmread
    from pydicom.filebase import DicomBytesIO

    from .decode import stored_compressed, worker_pool
    from .images import Images, instance_from_bytes, joined
    from .multipart import boundary_of, iter_parts

    record = pacs.find_series(series_uid)
    study_uid = study_uid or first_value(record, "0020000D")
    count = int(first_value(record, "00201209") or 0)
    url = f"{pacs.url}/studies/{study_uid}/series/{series_uid}"
    bar = _progress(count, f"series {series_uid[-12:]}", progress)
    found, pending = [], collections.deque()
    meta: dict = {}
    with _stream_end(pacs, pending, bar), \
            pacs._httpx().stream("GET", url, headers={"Accept": MULTIPART_DICOM}) as r:
        if r.status_code != 200:
            raise pacs._http_error(r.status_code, f"series {series_uid}")
        boundary = boundary_of(r.headers.get("content-type", ""))
        for _, body in iter_parts(r.iter_bytes(), boundary):
            head = None
            if not meta:
                head = dcmread(DicomBytesIO(body), force=True, stop_before_pixels=True)
                meta = _series_meta(head)
            if stored_compressed(body):
                if head is None:
                    head = dcmread(DicomBytesIO(body), force=True, stop_before_pixels=True)
                body = bytes(body)
                pending.append([worker_pool().submit(instance_from_bytes, body, part)
                                for part in _frame_parts(head)])
                while len(pending) > 4 * (os.cpu_count() or 1):
                    found.append(joined([f.result() for f in pending.popleft()]))
                    bar.update(1)
                continue
            found.append(instance_from_bytes(body))
            bar.update(1)
        while pending:
            found.append(joined([f.result() for f in pending.popleft()]))
            bar.update(1)
    return Images([i for i in found if i is not None], meta)


def _frame_parts(head) -> list[tuple[int, int] | None]:
    """How a compressed instance is shared among the worker processes:
    whole (``[None]``), or a long cine in runs of frames, one per worker
    and at least CINE_PART_FRAMES each."""
    frames = int(head.get("NumberOfFrames", 1) or 1)
    n = min(os.cpu_count() or 1, frames // CINE_PART_FRAMES)
    if n < 2:
        return [None]
    edges = [round(frames * k / n) for k in range(n + 1)]
    return list(zip(edges[:-1], edges[1:]))


def _agrees(fast, both) -> bool:
    """Whether the fast path read the image as pydicom did (geometry, scaling,
    values): if not, pydicom reads the whole series."""
    import numpy as np

    if fast is None or len(both) != 1:
        return False
    (f, p), (g, q) = fast, both[0]
    return (f.source == g.source and np.array_equal(f.position, g.position)
            and np.array_equal(f.orientation, g.orientation)
            and f.pixel_spacing == g.pixel_spacing and f.thickness == g.thickness
            and f.slope == g.slope and f.intercept == g.intercept
            and p.dtype == q.dtype and np.array_equal(p, q))


def _decode_elsewhere(pending: collections.deque, builder, body, bar) -> None:
    """Hand a compressed instance to the worker processes (the decoders hold
    the GIL) while the stream goes on; take in what they have finished."""
    from .decode import decode_instance, worker_pool

    pending.append(worker_pool().submit(decode_instance, body))
    while len(pending) > 4 * (os.cpu_count() or 1):
        _add_decoded(builder, pending.popleft(), bar)


def _add_decoded(builder, future, bar) -> None:
    decoded = future.result()
    if decoded is not None:
        for frame, p in zip(*decoded):
            builder.add(frame, p)
    bar.update(1)


def _merge_stow_answer(answer, r) -> None:
    """Add one STOW-RS request's answer (stored and failed instances) to the
    answer of several."""
    from pydicom.dataset import Dataset

    if not r.content:
        return
    part = Dataset.from_json(r.json())
    for keyword in ("ReferencedSOPSequence", "FailedSOPSequence"):
        items = list(part.get(keyword, []))
        if items:
            if keyword not in answer:
                setattr(answer, keyword, [])
            getattr(answer, keyword).extend(items)
    if "RetrieveURL" in part and "RetrieveURL" not in answer:
        answer.RetrieveURL = part.RetrieveURL


_META_KEYWORDS = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "Modality",
                  "SeriesDescription", "BodyPartExamined", "Manufacturer", "SOPClassUID",
                  "FrameOfReferenceUID", "SeriesNumber")


def _series_meta(ds) -> dict:
    return {k: str(ds.get(k, "")) for k in _META_KEYWORDS}


class _NoBar:
    def update(self, n):
        pass

    def close(self):
        pass


def _progress(total: int, desc: str, enabled: bool | None):
    """A tqdm bar (the notebook's widget in a kernel) or nothing.

    By default a bar is shown for series of more than 20 instances."""
    if enabled is False or (enabled is None and total <= 20):
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", leave=False)
