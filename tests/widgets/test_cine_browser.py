"""view(images) as a user sees it in headless Chromium: a colour ultrasound
cine with a frame time, stored through the gateway from the user's own
kernel and read back with pacs.load_images, plays in the browser and keeps
its colours on screen; the ruler measures in mm, the readout gives the
pixel's stored colour, and a radiograph's window follows a drag.
Screenshots go to tests/.artifacts/."""

from __future__ import annotations

import re
import time

from browser_support import ARTIFACTS, notebook_page, run_cell

# A 24-frame RGB cine, 50 ms a frame: a blue background, a green band along
# the top, and a red square that moves 4 columns right with each frame.
BUILD = """import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

def cine_dataset():
    frames, rows, cols = 24, 96, 160
    px = np.zeros((frames, rows, cols, 3), np.uint8)
    px[..., 2] = 200
    px[:, :12] = (0, 190, 0)
    for n in range(frames):
        px[n, 40:70, 4 * n:4 * n + 30] = (230, 20, 20)
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"  # ultrasound multi-frame
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = (
        generate_uid(), generate_uid(), generate_uid())
    ds.PatientID, ds.PatientName, ds.Modality = "CINE-1", "Cine^Test", "US"
    ds.SeriesDescription, ds.InstanceNumber = "echo loop", 1
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, cols, frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.FrameTime, ds.PixelSpacing = 50.0, [0.5, 0.5]
    ds.PixelData = px.tobytes()
    return ds

def radiograph():
    ds = cine_dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray
    ds.SOPInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.SeriesDescription = "DX", "chest"
    del ds.NumberOfFrames, ds.FrameTime, ds.PlanarConfiguration, ds.PixelSpacing
    ds.ImagerPixelSpacing = [0.2, 0.2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ramp = np.tile(np.linspace(0, 4000, 160), (96, 1)).astype(np.uint16)
    ds.Rows, ds.Columns, ds.PixelData = 96, 160, ramp.tobytes()
    ds.WindowCenter, ds.WindowWidth = 2000, 4000
    return ds

cine, dx = cine_dataset(), radiograph()
pacs.store_instances([cine, dx])
images = pacs.load_images(cine.SeriesInstanceUID, progress=False)
print(images)
view(images)"""
CELLS = [BUILD, "view(pacs.load_images(dx.SeriesInstanceUID, progress=False))"]

CANVAS = "document.querySelectorAll('.ih-cine canvas.ih-canvas')"


def colours(page, index: int = 0) -> dict:
    """The shown frame of the index-th frames viewer: where its red square
    lies (mean column, in image pixels), and how many pixels are red, green,
    blue."""
    return page.evaluate(f"""(index) => {{
        const c = {CANVAS}[index];
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let red = 0, green = 0, blue = 0, cols = 0;
        for (let p = 0; p < d.length; p += 4) {{
            const [r, g, b] = [d[p], d[p + 1], d[p + 2]];
            if (r > 200 && g < 60 && b < 60) {{ red++; cols += (p / 4) % c.width; }}
            if (g > 160 && r < 40 && b < 40) green++;
            if (b > 170 && r < 40 && g < 40) blue++;
        }}
        return {{red, green, blue, column: red ? cols / red : -1,
                 frame: Number(c.closest('.ih-cine').dataset.frame)}};
    }}""", index)


def test_a_colour_cine_plays_and_keeps_its_colours(stack, browser):
    with notebook_page(stack, browser, "cindy", ["cine"], "cine-test", CELLS) as page:
        run_cell(page, 0)
        page.wait_for_function(f"{CANVAS}.length && {CANVAS}[0].width === 160", timeout=120_000)
        out = page.locator(".jp-OutputArea-output:has-text('<Images')").first.inner_text()
        assert "24 frames" in out and "20.0 frames/s" in out, out
        root = page.locator(".ih-cine").first
        page.wait_for_function("document.querySelector('.ih-cine').dataset.received === '24'",
                               timeout=30_000)
        # paused on the first frame, in its colours: red square at columns 0-29
        first = colours(page)
        assert first["frame"] == 0 and first["red"] == 30 * 30, first
        assert first["green"] == 12 * 160 and first["blue"] > 0.5 * 96 * 160, first
        assert abs(first["column"] - 14.5) < 0.01
        assert "20.0 frames/s" in root.locator(".ih-rate").inner_text()

        # play: the browser moves through the frames by itself, the square with them
        root.locator(".ih-play").click()
        seen = {}
        deadline = time.time() + 20
        while len(seen) < 8 and time.time() < deadline:
            now = colours(page)
            seen[now["frame"]] = now
            time.sleep(0.07)
        assert len(seen) >= 8, f"the cine did not play: frames seen {sorted(seen)}"
        for frame, c in seen.items():  # each frame's square where that frame has it
            assert c["red"] == 900 and abs(c["column"] - (4 * frame + 14.5)) < 0.01, (frame, c)
        rate = root.locator(".ih-rate").inner_text()
        assert re.search(r"\d+ of 20.0 frames/s", rate), rate
        root.locator(".ih-play").click()  # pause: the kernel hears where it rests
        page.wait_for_function("document.querySelector('.ih-cine .ih-play').textContent "
                               "=== 'play'")
        root.locator(".ih-slider").fill(str(5))  # the slider shows frame 6
        page.wait_for_function("document.querySelector('.ih-cine').dataset.frame === '5'")
        assert abs(colours(page)["column"] - 34.5) < 0.01

        # the readout: the pixel's stored colour; the ruler: mm from PixelSpacing
        canvas = root.locator("canvas.ih-canvas")
        root.scroll_into_view_if_needed()
        box = canvas.bounding_box()
        sx, sy = box["width"] / 160, box["height"] / 96
        page.mouse.move(box["x"] + 40.5 * sx, box["y"] + 50.5 * sy)  # in frame 6's square
        page.wait_for_function("document.querySelector('.ih-cine .ih-readout')"
                               ".textContent.includes('RGB')", timeout=10_000)
        readout = root.locator(".ih-readout").inner_text()
        assert "frame 6/24" in readout and "row 50 col 40" in readout, readout
        assert "RGB (230, 20, 20)" in readout, readout
        page.mouse.move(box["x"] + 10 * sx, box["y"] + 80 * sy)
        page.mouse.down()
        page.mouse.move(box["x"] + 90 * sx, box["y"] + 20 * sy, steps=5)
        page.mouse.up()
        page.wait_for_selector(".ih-cine .ih-ruler-label:has-text('mm')", timeout=10_000)
        mm = float(root.locator(".ih-ruler-label").inner_text().split()[0])
        assert abs(mm - 0.5 * (80 ** 2 + 60 ** 2) ** 0.5) < 1.0, mm  # 50 mm
        root.screenshot(path=str(ARTIFACTS / "viewer-cine.png"))

        # a radiograph: grey, windowed as its header says; a shift drag narrows the
        # window, and more of the ramp is black or white
        run_cell(page, 1)
        page.wait_for_function(f"{CANVAS}.length === 2 && {CANVAS}[1].width === 160",
                               timeout=60_000)
        dx = page.locator(".ih-cine").nth(1)
        assert dx.locator(".ih-wl").inner_text().strip() == "W 4000 L 2000 (header)"
        assert dx.locator(".ih-play").is_hidden()
        before = saturated(page, 1)
        dx.scroll_into_view_if_needed()
        box = dx.locator("canvas.ih-canvas").bounding_box()
        page.keyboard.down("Shift")
        page.mouse.move(box["x"] + 80 * sx, box["y"] + 48 * sy)
        page.mouse.down()
        page.mouse.move(box["x"] + 80 * sx - 150, box["y"] + 48 * sy, steps=6)
        page.mouse.up()
        page.keyboard.up("Shift")
        page.wait_for_function(  # the drag's last window, 4000 * exp(-150 / 200) wide
            "(() => { const t = document.querySelectorAll('.ih-cine .ih-wl')[1].textContent"
            ".trim().split(' '); return t[0] === 'W' && Number(t[1]) < 2000; })()",
            timeout=10_000)
        assert "header" not in dx.locator(".ih-wl").inner_text()
        deadline = time.time() + 10  # the frame windowed anew comes from the kernel
        while saturated(page, 1) < before + 0.2 and time.time() < deadline:
            time.sleep(0.1)
        assert saturated(page, 1) >= before + 0.2, (before, saturated(page, 1))
        dx.screenshot(path=str(ARTIFACTS / "viewer-radiograph.png"))


def saturated(page, index: int) -> float:
    """The share of the index-th viewer's pixels that are black or white."""
    return page.evaluate(f"""(index) => {{
        const c = {CANVAS}[index];
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let p = 0; p < d.length; p += 4) if (d[p] === 0 || d[p] === 255) n++;
        return n / (d.length / 4);
    }}""", index)
