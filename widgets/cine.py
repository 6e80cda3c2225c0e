"""``view(images)``: any image series that is not a volume (radiographs,
mammograms, ultrasound and angiography cine, endoscopy, photographs,
secondary captures) in the notebook, offline.

The series is shown as one or more *sequences* of frames: one for the
whole series where its instances stack (:attr:`Images.stackable`), else one
per instance, picked from a list. The kernel turns each frame into 8 bits
for the screen once (grey through the window or the header's VOI LUT,
MONOCHROME1 inverted, colour as RGB) and sends a sequence's frames to the
browser once, as binary buffers: the frame on screen first, then the rest
in messages of a few megabytes. The browser (``cine.js``) keeps them and
plays the cine at the header's frame rate itself, so playing asks nothing
of the kernel. What the browser sends back is small: the frame a paused
cine rests on, the pointer's pixel (the kernel answers with its stored
value), the ends of a ruler (the kernel answers in mm), and a new window
(the kernel windows the grey frames again, and sends them again).
"""

from __future__ import annotations

from pathlib import Path

import anywidget
import numpy as np
import traitlets as t

from ..kernels.images import DETECTOR_SPACING, Images, Instance
from ._assets import esm

CHUNK_BYTES = 8 << 20  # frames per message: at most this many bytes (and one frame at least)
DEFAULT_FPS = 10.0  # where the header gives no timing


class Sequence:
    """Frames shown one after another: (instance, frame index) pairs."""

    def __init__(self, name: str, frames: list[tuple[Instance, int]]):
        self.name = name
        self.frames = frames
        first = frames[0][0]
        self.rows, self.cols = first.size
        self.color = first.color
        single = all(inst is first for inst, _ in frames)
        self.starts_ms = first.frame_starts_ms if single and first.frame_starts_ms is not None \
            else None
        self.fps_source = "header"
        fps = first.frame_rate if single else None
        if not fps:
            fps, self.fps_source = DEFAULT_FPS, "no frame time in the header"
        self.fps = float(fps)
        self.spacing = first.spacing
        self.spacing_source = first.spacing_source

    def describe(self) -> dict:
        return {"name": self.name, "frames": len(self.frames), "rows": self.rows,
                "cols": self.cols, "color": self.color, "fps": self.fps,
                "fps_source": self.fps_source,
                "starts_ms": None if self.starts_ms is None else
                [float(s) for s in self.starts_ms],
                "spacing": list(self.spacing) if self.spacing else None,
                "spacing_source": self.spacing_source}


def sequences_of(images: Images) -> list[Sequence]:
    """One sequence of every frame where the instances stack, else one per
    instance."""
    if not len(images):
        raise ValueError("the series has no images to show")
    if images.stackable:
        frames = [(inst, f) for inst in images for f in range(inst.frames)]
        return [Sequence(str(images.metadata.get("SeriesDescription") or "series"), frames)]
    out = []
    for n, inst in enumerate(images, start=1):
        kind = "colour" if inst.color else "grey"
        label = f"instance {inst.number if inst.number is not None else n}: " \
                f"{inst.size[0]}x{inst.size[1]} {kind}, {inst.frames} frame" \
                f"{'s' * (inst.frames != 1)}"
        out.append(Sequence(label, [(inst, f) for f in range(inst.frames)]))
    return out


class ImagesViewer(anywidget.AnyWidget):
    """What ``view(images)`` shows (see the module's docstring).

    From Python: ``.frame`` (the frame shown), ``.sequence`` (which
    sequence), ``.window`` (``[width, level]``, ``[]`` for the header's),
    ``.play()`` and ``.pause()``."""

    _esm = esm("cine.js")
    _css = Path(__file__).with_name("cine.css")

    title = t.Unicode().tag(sync=True)
    sequences = t.List().tag(sync=True)   # Sequence.describe() of each
    sequence = t.Int(0).tag(sync=True)
    frame = t.Int(0).tag(sync=True)       # where a paused cine rests
    playing = t.Bool(False).tag(sync=True)
    window = t.List().tag(sync=True)      # [] the header's VOI; else [width, level]
    window_text = t.Unicode().tag(sync=True)
    window_base = t.List([1.0, 0.0]).tag(sync=True)  # where a window drag starts from
    generation = t.Int(0).tag(sync=True)  # the frames' version: new with each window
    cursor = t.List().tag(sync=True)      # [frame, row, col] under the pointer
    readout = t.Unicode().tag(sync=True)
    ruler = t.List().tag(sync=True)       # [row0, col0, row1, col1], image pixels
    ruler_text = t.Unicode().tag(sync=True)

    def __init__(self, images: Images, *, window=None, play: bool = False):
        self.images = images
        self._sequences = sequences_of(images)
        self._cache: dict[tuple[int, int], list[np.ndarray]] = {}
        super().__init__(
            title=_title(images),
            sequences=[s.describe() for s in self._sequences],
            window=[float(window[0]), float(window[1])] if window is not None else [],
            playing=bool(play),
        )
        self._base_window()
        self.window_text = self._window_text()
        self.observe(self._new_window, names=["window"])
        self.observe(self._new_sequence, names=["sequence"])
        self.observe(self._read, names=["cursor"])
        self.observe(self._measure, names=["ruler"])
        self.on_msg(self._on_browser)

    # -- from Python ------------------------------------------------------------------
    def play(self) -> None:
        self.playing = True

    def pause(self) -> None:
        self.playing = False

    @property
    def current(self) -> Sequence:
        return self._sequences[self.sequence]

    def frame_u8(self, frame: int | None = None, sequence: int | None = None) -> np.ndarray:
        """Frame ``frame`` of sequence ``sequence`` as the browser gets it:
        (rows, cols) or (rows, cols, 3), 8 bits."""
        s = self.sequence if sequence is None else sequence
        return self._frames(s)[self.frame if frame is None else frame]

    # -- the frames ---------------------------------------------------------------------
    def _frames(self, s: int) -> list[np.ndarray]:
        key = (s, self.generation)
        if key not in self._cache:
            self._cache = {k: v for k, v in self._cache.items() if k[1] == self.generation}
            window = None
            if self.window:  # [width, level] -> Instance.display's (center, width)
                window = (float(self.window[1]), float(self.window[0]))
            self._cache[key] = [_display(inst, f, window)
                                for inst, f in self._sequences[s].frames]
        return self._cache[key]

    def _send_frames(self, s: int, generation: int, first: int) -> None:
        """Every frame of sequence ``s``: frame ``first`` alone first (what
        the screen waits for), then the rest in order, several a message."""
        if generation != self.generation or not 0 <= s < len(self._sequences):
            return  # asked for frames of an older window: newer ones are on their way
        frames = self._frames(s)
        first = min(max(int(first), 0), len(frames) - 1)
        self._send_chunk(s, first, frames[first:first + 1])
        per = max(1, CHUNK_BYTES // max(1, frames[0].nbytes))
        order = [n for n in range(len(frames)) if n != first]
        run: list[int] = []
        for n in order:
            if run and (n != run[-1] + 1 or len(run) == per):
                self._send_chunk(s, run[0], [frames[i] for i in run])
                run = []
            run.append(n)
        if run:
            self._send_chunk(s, run[0], [frames[i] for i in run])

    def _send_chunk(self, s: int, start: int, frames: list[np.ndarray]) -> None:
        body = frames[0].data if len(frames) == 1 else \
            np.ascontiguousarray(np.stack(frames)).data
        self.send({"type": "frames", "sequence": s, "generation": self.generation,
                   "start": start, "count": len(frames)}, buffers=[body])

    def _on_browser(self, _, content, buffers) -> None:
        if content.get("type") == "need":
            self._send_frames(int(content.get("sequence", 0)),
                              int(content.get("generation", -1)),
                              int(content.get("first", 0)))

    # -- what the browser asks ------------------------------------------------------------
    def _new_window(self, change=None) -> None:
        if self.current.color:
            if self.window:
                self.window = []  # colour has no window
            return
        self.window_text = self._window_text()
        self.generation += 1

    def _new_sequence(self, change=None) -> None:
        with self.hold_sync():
            self.frame = 0
            self.ruler = []
            self.ruler_text = ""
            self._base_window()
            self.window_text = self._window_text()

    def _base_window(self) -> None:
        """``window_base``: the header's first window, else the 1st to 99th
        percentile of the sequence, which is then the window too (one for
        every frame: a cine must not flicker with each frame's own range)."""
        seq = self.current
        if seq.color:
            return
        inst = seq.frames[0][0]
        header = inst.display_header
        if inst.window and inst.window[1] > 0:
            self.window_base = [float(inst.window[1]), float(inst.window[0])]
            return
        from .viewer import auto_window

        picks = np.linspace(0, len(seq.frames) - 1, min(len(seq.frames), 32)).astype(int)
        sample = np.stack([seq.frames[n][0].pixels[seq.frames[n][1]] for n in picks])
        self.window_base = list(auto_window(sample))
        if not self.window and not (header is not None and "VOILUTSequence" in header):
            self.window = list(self.window_base)

    def _window_text(self) -> str:
        if self.current.color:
            return "colour"
        if self.window:
            return f"W {self.window[0]:.4g} L {self.window[1]:.4g}"
        inst = self.current.frames[0][0]
        if inst.display_header is not None and "VOILUTSequence" in inst.display_header:
            return "the header's VOI LUT"
        if inst.window:
            return f"W {inst.window[1]:.6g} L {inst.window[0]:.6g} (header)"
        return "the frame's range"

    def _read(self, change=None) -> None:
        """The readout for ``cursor``: the frame, its time, the pixel and its
        stored value (rescaled), or its RGB."""
        try:
            f, r, c = (int(v) for v in self.cursor)
            inst, idx = self.current.frames[f]
        except (TypeError, ValueError, IndexError):
            self.readout = ""
            return
        rows, cols = inst.size
        if not (0 <= r < rows and 0 <= c < cols):
            self.readout = ""
            return
        seq = self.current
        text = f"frame {f + 1}/{len(seq.frames)}"
        if seq.starts_ms is not None:
            text += f"  t {seq.starts_ms[f]:.0f} ms"
        text += f"   row {r} col {c}"
        if seq.spacing:
            text += f" ({r * seq.spacing[0]:.1f}, {c * seq.spacing[1]:.1f} mm)"
        value = inst.pixels[idx, r, c]
        if inst.color:
            text += "   RGB (" + ", ".join(f"{float(v):.6g}" for v in value) + ")"
        else:
            text += f"   value {float(value):.6g}"
        self.readout = text

    def _measure(self, change=None) -> None:
        """The ruler's length: in mm where the spacing is known (and where it
        came from), else in pixels with why."""
        try:
            r0, c0, r1, c1 = (float(v) for v in self.ruler)
        except (TypeError, ValueError):
            self.ruler_text = ""
            return
        seq = self.current
        pixels = float(np.hypot(r1 - r0, c1 - c0))
        if seq.spacing:
            mm = float(np.hypot((r1 - r0) * seq.spacing[0], (c1 - c0) * seq.spacing[1]))
            where = " at the detector" if seq.spacing_source == DETECTOR_SPACING else ""
            self.ruler_text = f"{mm:.1f} mm{where}"
        else:
            self.ruler_text = f"{pixels:.1f} px (no pixel spacing in the header)"


def _display(inst: Instance, f: int, window) -> np.ndarray:
    if inst.color and inst.pixels.dtype == np.uint8:
        return inst.pixels[f]  # already what the screen shows: no copy
    return np.ascontiguousarray(inst.display(f, window))


def _title(images: Images) -> str:
    parts = [str(images.metadata.get(k) or "") for k in ("Modality", "SeriesDescription")]
    return " ".join(p for p in parts if p)


def as_images(images) -> Images:
    """``images`` (an :class:`Images`, or one :class:`Instance`) as Images."""
    if isinstance(images, Instance):
        return Images([images], {"Modality": images.modality})
    return images
