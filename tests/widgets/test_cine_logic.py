"""The frames viewer's kernel side (``view(images)``): which sequences a
series becomes, that each frame travels once (the one on screen first) as
8-bit buffers, windows that send the grey frames again, the readout's
stored values, and the ruler in mm (or pixels, saying why)."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset

from imaginghub.kernels.images import Images, Instance
from imaginghub.widgets import cine
from imaginghub.widgets.cine import ImagesViewer
from imaginghub.widgets.viewer import view


def colour_cine(frames=12, rows=40, cols=60, frame_time=40.0) -> Instance:
    """A colour cine whose frame n has a red square at column 2n and a blue
    background."""
    px = np.zeros((frames, rows, cols, 3), np.uint8)
    px[..., 2] = 200
    for n in range(frames):
        px[n, 10:20, 2 * n:2 * n + 10] = (255, 0, 0)
    return Instance("1.2.3.1", 1, px, "YBR_FULL_422", "US", frame_time_ms=frame_time,
                    frame_starts_ms=np.arange(frames) * frame_time,
                    spacing=(0.5, 0.25), spacing_source="SequenceOfUltrasoundRegions")


def grey(number=1, rows=30, cols=20, frames=1, spacing=None, source=None, window=None,
         photometric="MONOCHROME2") -> Instance:
    px = (np.arange(frames * rows * cols, dtype=np.float64).reshape(frames, rows, cols)
          * 2.0 - 100.0)
    header = Dataset()
    header.PhotometricInterpretation = photometric
    if window:
        header.WindowCenter, header.WindowWidth = window
    return Instance(f"1.2.3.{number + 10}", number, px, photometric, "DX", spacing=spacing,
                    spacing_source=source, window=window, display_header=header)


class Sent(list):
    """What the widget sends to the browser."""

    def __call__(self, content, buffers=None):
        self.append((content, [bytes(b) for b in buffers or []]))


def viewer(images, **kwargs) -> tuple[ImagesViewer, Sent]:
    w = view(images, **kwargs)
    sent = Sent()
    w.send = sent
    return w, sent


def ask(w: ImagesViewer, first=0, generation=None, sequence=0):
    w._on_browser(None, {"type": "need", "sequence": sequence, "first": first,
                         "generation": w.generation if generation is None else generation}, [])


def frames_of(sent: Sent, seq_meta: dict) -> dict[int, bytes]:
    size = seq_meta["rows"] * seq_meta["cols"] * (3 if seq_meta["color"] else 1)
    got: dict[int, bytes] = {}
    for content, (body,) in sent:
        assert content["type"] == "frames" and len(body) == content["count"] * size
        for n in range(content["count"]):
            assert content["start"] + n not in got, "a frame was sent twice"
            got[content["start"] + n] = body[n * size:(n + 1) * size]
    return got


def test_a_colour_cine_travels_once_the_frame_on_screen_first(monkeypatch):
    monkeypatch.setattr(cine, "CHUNK_BYTES", 5 * 40 * 60 * 3)  # five frames a message
    inst = colour_cine()
    w, sent = viewer(Images([inst], {"Modality": "US", "SeriesDescription": "heart"}))
    (meta,) = w.sequences
    assert meta["frames"] == 12 and meta["color"] and meta["fps"] == pytest.approx(25.0)
    assert meta["fps_source"] == "header" and meta["starts_ms"][3] == pytest.approx(120.0)
    assert w.title == "US heart" and w.window_text == "colour"
    w.frame = 7
    ask(w, first=7)
    assert sent[0][0]["start"] == 7 and sent[0][0]["count"] == 1
    got = frames_of(sent, meta)
    assert sorted(got) == list(range(12))
    assert max(c["count"] for c, _ in sent) == 5
    for n, body in got.items():  # the colours as stored, unchanged
        assert body == inst.pixels[n].tobytes()
    # colour has no window: one set from the browser is dropped, no frames again
    gen = w.generation
    w.window = [100.0, 50.0]
    assert w.window == [] and w.generation == gen


def test_a_window_makes_new_grey_frames_and_old_requests_are_ignored():
    w, sent = viewer(Images([grey(frames=3)], {"Modality": "DX"}))
    assert w.window, "no header window: the sequence's own percentiles, one for all frames"
    gen = w.generation
    w.window = [100.0, 0.0]  # width 100 around 0: -50 -> 0, 50 -> 255
    assert w.generation == gen + 1 and w.window_text == "W 100 L 0"
    ask(w, generation=gen)  # the browser asked before it heard of the new window
    assert sent == []
    ask(w)
    got = frames_of(sent, w.sequences[0])
    first = np.frombuffer(got[0], np.uint8).reshape(30, 20)
    values = w.images[0].pixels[0]
    expected = np.clip((values + 50) * 255 / 100, 0, 255).astype(np.uint8)
    assert np.abs(first.astype(int) - expected).max() <= 1
    assert first[0, 0] == 0 and first.max() == 255


def test_monochrome1_and_the_header_window_as_the_screen_shows_them():
    inst = grey(window=(0.0, 200.0), photometric="MONOCHROME1")
    w, sent = viewer(Images([inst]))
    assert w.window == [] and w.window_text == "W 200 L 0 (header)"
    assert w.window_base == [200.0, 0.0]
    ask(w)
    (_, (body,)), = sent
    shown = np.frombuffer(body, np.uint8).reshape(30, 20)
    assert np.array_equal(shown, inst.display(0))
    assert shown[0, 0] > shown[-1, -1], "MONOCHROME1: low values light"


def test_the_readout_gives_stored_values_and_the_ruler_mm_or_pixels():
    inst = colour_cine()
    w, _ = viewer(Images([inst]))
    w.cursor = [3, 15, 7]
    assert "frame 4/12" in w.readout and "t 120 ms" in w.readout
    assert "row 15 col 7 (7.5, 1.8 mm)" in w.readout and "RGB (255, 0, 0)" in w.readout
    w.cursor = [3, 99, 7]  # off the image
    assert w.readout == ""
    w.ruler = [0, 0, 30, 40]  # 30 rows of 0.5 mm, 40 columns of 0.25 mm
    assert w.ruler_text == f"{np.hypot(15, 10):.1f} mm"

    g, _ = viewer(Images([grey(spacing=(0.2, 0.2), source="ImagerPixelSpacing (at the "
                                                           "detector)")]))
    g.cursor = [0, 2, 3]
    assert g.readout.endswith(f"value {2 * (2 * 20 + 3) - 100:g}")
    g.ruler = [0, 0, 3, 4]
    assert g.ruler_text == "1.0 mm at the detector"
    n, _ = viewer(Images([grey()]))
    n.ruler = [0, 0, 3, 4]
    assert n.ruler_text == "5.0 px (no pixel spacing in the header)"


def test_a_series_that_does_not_stack_is_a_sequence_per_instance():
    images = Images([grey(1, rows=30, cols=20), grey(2, rows=10, cols=10, frames=4)])
    w, sent = viewer(images)
    assert [s["name"] for s in w.sequences] == [
        "instance 1: 30x20 grey, 1 frame", "instance 2: 10x10 grey, 4 frames"]
    assert w.sequences[1]["fps_source"] == "no frame time in the header"
    w.frame = 0
    w.ruler = [0, 0, 1, 1]
    w.sequence = 1
    assert w.ruler == [] and w.ruler_text == ""
    ask(w, sequence=1)
    assert sorted(frames_of(sent, w.sequences[1])) == [0, 1, 2, 3]
    # instances that match stack into one sequence of all their frames
    both = Images([grey(1, frames=2), grey(2, frames=3)])
    (meta,) = viewer(both)[0].sequences
    assert meta["frames"] == 5


def test_view_says_what_it_shows():
    images = Images([grey()])
    with pytest.raises(ValueError, match="without labels"):
        view(images, np.zeros((30, 20)))
    with pytest.raises(TypeError, match="pacs.load_images"):
        view(np.zeros((3, 3, 3)))
    with pytest.raises(ValueError, match="no images"):
        view(Images([]))
    assert isinstance(view(images[0]), ImagesViewer)
