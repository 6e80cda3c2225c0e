"""The viewer as a user sees it: a user logs in with headless Chromium (Debian's
package, software WebGL not needed: the viewer draws 2D canvases), opens a
notebook in JupyterLab, runs it, and the phantom appears with its labels.
The NiiVue backend draws with WebGL2, here SwiftShader's (software).
Screenshots and timings are kept in tests/.artifacts/."""

from __future__ import annotations

import io
import json
import time

from browser_support import ARTIFACTS, notebook_page, run_cell

CELLS = [
    """import numpy as np
from imaginghub.hub import demo
mr = pacs.load_series(demo.series("mr-head").series_uid, progress=False)
k, j, i = np.indices(mr.shape)
points = np.stack([i, j, k, np.ones_like(i)], -1) @ mr.affine.T
labels = demo.phantom_labels(points[..., :3])
names = {label: name for label, name, *_ in demo.PHANTOM}
view(mr, labels, names=names)""",
    """ct = pacs.load_series(demo.series("ct-head").series_uid, progress=False)
import time; shown_at = time.time()
view(ct, preset="bone")""",
    "print(f'CT-SHOWN-AT {shown_at}')",
]


def _canvas_stats(page, index: int) -> dict:
    """How many pixels are not black, and how many carry the first label's
    colour (red, blended half with grey), in the index-th viewer canvas."""
    return page.evaluate("""(index) => {
        const c = document.querySelectorAll('.ih-viewer canvas')[index];
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let lit = 0, red = 0;
        for (let p = 0; p < d.length; p += 4) {
            if (d[p] + d[p + 1] + d[p + 2] > 30) lit++;
            if (d[p] - d[p + 1] > 80 && d[p] - d[p + 2] > 50) red++;
        }
        return {lit, red, width: c.width, height: c.height};
    }""", index)


def test_view_volume_and_labels_in_jupyterlab(stack, browser):
    # in both demo projects: the MR phantom is neuro's, the large CT oncology's
    with notebook_page(stack, browser, "vera", ["oncology", "neuro"], "viewer-test",
                       CELLS) as page:
        _check_viewer(page)


def _check_viewer(page):
    run_cell(page, 0)  # the phantom with its labels
    page.wait_for_selector(".ih-viewer .ih-readout:not(:empty)", timeout=120_000)
    page.wait_for_function("document.querySelectorAll('.ih-viewer canvas')[0].width > 0")
    time.sleep(0.5)

    legend = page.locator(".ih-viewer .ih-legend-item").all_inner_texts()
    assert [t.strip() for t in legend] == ["1 brain", "2 ventricles", "3 lesion"]
    for n in range(4):  # three planes and the 3D view: drawn, and red labels shown
        stats = _canvas_stats(page, n)
        assert stats["lit"] > 0.2 * stats["width"] * stats["height"], (n, stats)
        assert stats["red"] > 100, (n, stats)
    page.locator(".ih-viewer").first.screenshot(path=str(ARTIFACTS / "viewer-mr.png"))

    # the wheel moves the axial plane through the volume (a round trip to the kernel)
    axial = page.locator(".ih-viewer canvas").first
    name = page.locator(".ih-viewer .ih-name").first
    before = name.inner_text()
    axial.hover()
    page.mouse.wheel(0, 100)
    page.wait_for_function(f"document.querySelector('.ih-viewer .ih-name').textContent "
                           f"!== {json.dumps(before)}", timeout=10_000)
    # a click sets the crosshair: the readout names the new voxel
    readout = page.locator(".ih-viewer .ih-readout").first
    old = readout.inner_text()
    box = axial.bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.6)
    page.wait_for_function(f"document.querySelector('.ih-viewer .ih-readout').textContent "
                           f"!== {json.dumps(old)}", timeout=10_000)
    assert "LPS (" in readout.inner_text()

    # the 512 x 512 x 300 CT: how long from the end of loading to the picture
    run_cell(page, 1)
    page.wait_for_function("document.querySelectorAll('.ih-viewer').length == 2 && "
                           "document.querySelectorAll('.ih-viewer canvas')[4].width > 0",
                           timeout=180_000)
    drawn = time.time()
    stats = _canvas_stats(page, 4)
    assert stats["width"] == 512 and stats["lit"] > 0.1 * 512 * 512, stats
    run_cell(page, 2)
    out = page.wait_for_selector(".jp-OutputArea-output:has-text('CT-SHOWN-AT')",
                                 timeout=60_000).inner_text()
    shown_at = float(out.split()[-1])
    page.locator(".ih-viewer").nth(1).screenshot(path=str(ARTIFACTS / "viewer-ct.png"))
    (ARTIFACTS / "viewer-timing.json").write_text(json.dumps(
        {"ct_512x512x300_view_to_canvas_s": round(drawn - shown_at, 2)}))


NIIVUE_CELLS = [
    """from imaginghub.hub import demo
mr = pacs.load_series(demo.series("mr-head").series_uid, progress=False)
seg, names = pacs.load_segmentation(demo.series("mr-head-seg").series_uid, series=mr)
view(mr, seg, names=names, backend="niivue", max_edge=64)""",
]


def _niivue_colours(png: bytes) -> dict:
    """Pixels of a screenshot that are lit, and those that carry the brain's
    label colour (red) and the ventricles' (green), blended half with grey."""
    import numpy as np
    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return {"lit": int(((r + g + b) > 30).sum()), "size": r.size,
            "red": int(((r - g > 80) & (r - b > 50)).sum()),
            "green": int(((g - r > 40) & (g - b > 30)).sum())}


def test_view_with_niivue_in_jupyterlab(stack, browser):
    """backend="niivue": the MR phantom with its reference SEG, drawn by
    NiiVue under software WebGL: planes and 3D lit, the labels in colour."""
    with notebook_page(stack, browser, "nico", ["neuro"], "viewer-niivue-test",
                       NIIVUE_CELLS) as page:
        started = time.time()
        run_cell(page, 0)
        canvas = page.locator(".jp-OutputArea-output canvas").first
        canvas.wait_for(state="visible", timeout=60_000)
        deadline = time.time() + 45
        while True:  # NiiVue draws once both volumes are loaded: wait for the labels
            stats = _niivue_colours(canvas.screenshot())
            if stats["red"] > 2000 and stats["green"] > 100 or time.time() > deadline:
                break
            time.sleep(0.5)
        shown = time.time() - started
        page.locator(".jp-OutputArea-output:has(canvas)").first.screenshot(
            path=str(ARTIFACTS / "viewer-niivue-mr.png"))
        assert stats["lit"] > 0.1 * stats["size"], stats
        assert stats["red"] > 2000 and stats["green"] > 100, stats
        legend = page.locator(".ih-niivue-legend .ih-niivue-legend-item").all_inner_texts()
        assert [t.strip() for t in legend] == ["1 brain", "2 ventricles", "3 lesion"]
        (ARTIFACTS / "viewer-niivue-timing.json").write_text(json.dumps(
            {"mr_head_niivue_run_to_labels_s": round(shown, 2), **stats}))
