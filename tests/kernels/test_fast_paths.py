"""The two fast paths of load_series, checked against the slow ones: the
multipart parser's sized bodies (any chunking, right and wrong declared
lengths) and quick_frame against pydicom on every demo instance."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.sequence import Sequence
from pydicom.uid import ImplicitVRLittleEndian

from imaginghub.hub import demo
from imaginghub.kernels.decode import frames_and_pixels, quick_frame
from imaginghub.kernels.multipart import PartParser, iter_parts

BOUNDARY = b"b0undary-42"


def _body(parts: list[bytes], lengths: list[int | None]) -> bytes:
    out = [b"preamble to ignore\r\n"]
    for part, length in zip(parts, lengths):
        out.append(b"--" + BOUNDARY + b"\r\nContent-Type: application/dicom\r\n")
        if length is not None:
            out.append(b"Content-Length: %d\r\n" % length)
        out.append(b"\r\n" + part + b"\r\n")
    out.append(b"--" + BOUNDARY + b"--\r\nepilogue")
    return b"".join(out)


def _chunked(data: bytes, rng: random.Random):
    i = 0
    while i < len(data):
        n = rng.choice([1, 2, 7, 64, 1000, 65536])
        yield data[i:i + n]
        i += n


PARTS = [bytes(range(256)) * 40, b"", b"\r\n--b0undary-4 almost the boundary\r\n",
         b"x" * 3, np.random.default_rng(1).bytes(200_000)]


@pytest.mark.parametrize("lengths", [
    "declared", "none", "mixed", "too long", "too short"])
def test_parts_come_out_whole_for_any_chunking(lengths):
    declared = [len(p) for p in PARTS]
    lengths = {
        "declared": declared,
        "none": [None] * len(PARTS),
        "mixed": [n if i % 2 else None for i, n in enumerate(declared)],
        # a wrong Content-Length: the boundary decides
        "too long": [n + 5 for n in declared[:-1]] + [declared[-1]],
        "too short": [max(0, n - 3) for n in declared[:-1]] + [declared[-1]],
    }[lengths]
    data = _body(PARTS, lengths)
    for seed in range(8):
        got = [b for _, b in iter_parts(_chunked(data, random.Random(seed)), BOUNDARY)]
        assert got == PARTS, f"chunking seed {seed}"
        assert all(type(b) is bytes for b in got)  # what tornado and httpx take
        writable = [b for _, b in iter_parts(_chunked(data, random.Random(seed)), BOUNDARY,
                                             writable=True)]
        assert writable == PARTS


def test_a_huge_declared_length_is_not_allocated():
    parser = PartParser(BOUNDARY, max_sized=1000)
    data = _body([b"abc"], [None]).replace(b"application/dicom\r\n",
                                          b"application/dicom\r\nContent-Length: 99999999999\r\n")
    got = [bytes(b) for _, b in parser.feed(data)]
    assert got == [b"abc"]
    assert parser.body is None


def test_a_stream_cut_inside_a_sized_part_is_an_error():
    data = _body([b"x" * 100], [100])
    with pytest.raises(ValueError, match="middle of a part"):
        list(iter_parts([data[:-60]], BOUNDARY))
    with pytest.raises(ValueError, match="before its closing boundary"):
        list(iter_parts([data[:data.rindex(b"--" + BOUNDARY) + len(BOUNDARY) + 2]], BOUNDARY))


def _demo_files():
    for s in demo.SERIES:
        for ds in itertools.islice(demo.instances(s), 3):
            yield s.key, demo.to_bytes(ds)


@pytest.mark.parametrize("key,body", list(_demo_files()),
                         ids=lambda v: v if isinstance(v, str) else "")
def test_quick_frame_reads_what_pydicom_reads(key, body):
    fast = quick_frame(body)
    ds = dcmread(DicomBytesIO(body), force=True)
    try:
        slow = list(frames_and_pixels(ds))
    except Exception:
        assert fast is None, f"{key}: pydicom cannot place it, the fast path must not either"
        return
    syntax = ds.file_meta.TransferSyntaxUID
    single = len(slow) == 1 and "PerFrameFunctionalGroupsSequence" not in ds
    if syntax == "1.2.840.10008.1.2.1" and single:
        assert fast is not None, f"{key}: a plain single-frame image must take the fast path"
    if fast is None:
        return
    (f, p), ((g, q),) = fast, slow
    assert f.source == g.source
    np.testing.assert_array_equal(f.position, g.position)
    np.testing.assert_array_equal(f.orientation, g.orientation)
    assert (f.pixel_spacing, f.thickness, f.slope, f.intercept) == (
        g.pixel_spacing, g.thickness, g.slope, g.intercept)
    assert p.dtype == q.dtype
    np.testing.assert_array_equal(p, q)


def test_quick_frame_steps_over_nested_sequences_of_undefined_length():
    ct = next(demo.instances(demo.series("ct-head")))
    inner = Dataset()
    inner.CodeValue, inner.CodeMeaning = "T-A0100", "Brain"
    item = Dataset()
    item.AnatomicRegionSequence = Sequence([inner])
    ct.ReferencedImageSequence = Sequence([item, Dataset()])
    for owner, keyword in ((ct, "ReferencedImageSequence"), (item, "AnatomicRegionSequence")):
        owner[keyword].is_undefined_length = True
    for it in (item, inner):
        it.is_undefined_length_sequence_item = True
    body = demo.to_bytes(ct)
    assert b"\xfe\xff\xdd\xe0" in body  # a sequence delimiter is there
    fast = quick_frame(body)
    assert fast is not None
    np.testing.assert_array_equal(fast[1], dcmread(DicomBytesIO(body)).pixel_array)


def test_quick_frame_leaves_other_encodings_to_pydicom():
    ct = next(demo.instances(demo.series("ct-head")))
    ct.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    assert quick_frame(demo.to_bytes(ct)) is None
    body = bytearray(demo.to_bytes(next(demo.instances(demo.series("ct-head")))))
    assert quick_frame(body[:-1000]) is None  # truncated pixel data
    assert quick_frame(b"not dicom at all" * 20) is None

