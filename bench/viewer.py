"""The viewers in a real browser (headless Chromium, software rendering), one
run of the demo stack, alice logged in to JupyterLab:

- ``view(images)`` on pydicom's ``color3d_jpeg_baseline.dcm`` (an ultrasound
  cine, 120 frames of 480 x 640 YBR_FULL_422 JPEG, 33.3 ms a frame), stored
  into her project first: the time from ``view()`` to the first picture, to
  every frame in the browser, and the frame rate the browser reaches while
  it plays (the header asks for 30 frames/s);
- the baseline next to it, today's volume view: ``view(ct)`` on the demo's
  512 x 512 x 300 CT, its time to the first picture and the slices a second
  the mouse wheel gets (each slice is a round trip to the kernel);
- the browser viewer (OHIF at /services/viewer/) on the same CT: the time
  from opening the study's address to the first screenshot with the CT
  drawn, on the first visit and again in a new tab, next to the notebook's
  load_series plus its view's first picture.

Both times to the first picture are taken the same way: the kernel's clock
just before ``view()``, the browser's when the canvas first has pixels (one
machine, one clock).

    .venv/bin/python bench/viewer.py [--play-seconds 5]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import nbformat
from _stack import running_stack

from imaginghub.hub.state import Home

CHROMIUM = "/usr/bin/chromium"
CELLS = [
    """import json, time, pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
ds = pydicom.dcmread(get_testdata_file("color3d_jpeg_baseline.dcm"))
ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
pacs.store_instances([ds])
t = time.time(); images = pacs.load_images(ds.SeriesInstanceUID, progress=False)
loaded_s = time.time() - t
print("BENCH", json.dumps({"load_s": loaded_s}))""",
    "cine_at = time.time() * 1000; view(images)",
    """from imaginghub.hub import demo
t = time.time(); ct = pacs.load_series(demo.series("ct-head").series_uid, progress=False)
ct_load_s = time.time() - t
volume_at = time.time() * 1000; view(ct)""",
    'print("BENCH", json.dumps({"cine_at": cine_at, "volume_at": volume_at, '
    '"ct_load_s": ct_load_s}))',
    'view(pacs.load_images(demo.series("sc-jpeg-baseline").series_uid, progress=False))',
]


def run_cell(page, n: int) -> None:
    page.locator(".jp-Notebook .jp-Cell").nth(n).locator(".jp-InputPrompt").click()
    page.keyboard.press("Shift+Enter")


def printed(page, n: int) -> dict:
    """The JSON a cell printed after "BENCH"."""
    out = page.locator(".jp-Notebook .jp-Cell").nth(n).locator(
        ".jp-OutputArea-output:has-text('BENCH')")
    out.wait_for(timeout=300_000)
    return json.loads(out.inner_text().split("BENCH", 1)[1])


def when(page, condition: str, timeout_ms: int = 300_000) -> float:
    """The browser's clock (ms) on the first animation frame where
    ``condition`` holds."""
    handle = page.wait_for_function(f"() => ({condition}) ? Date.now() : false",
                                    polling="raf", timeout=timeout_ms)
    return float(handle.json_value())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--play-seconds", type=float, default=5.0)
    ap.add_argument("--screenshots", type=Path, help="a folder for pictures of both viewers "
                    "(the README's come from here)")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    with running_stack() as (_direct, _gateway, run), sync_playwright() as pw:
        home = Home(Path(run["home"]))
        password = json.loads((home.secrets_dir / "demo_logins.json").read_text())["alice"]
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
        nb.metadata["kernelspec"] = {"name": "imaging", "display_name": "Imaging (Python 3)"}
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        page.goto(f"{run['url']}/hub/login")
        page.fill("#username_input", "alice")
        page.fill("#password_input", password)
        page.click("#login_submit")
        page.wait_for_url("**/user/alice/lab**", timeout=180_000)
        upload(page, run, nb)
        page.goto(f"{run['url']}/user/alice/lab/tree/viewer-bench.ipynb?reset")
        page.wait_for_selector("text=/Imaging \\(Python 3\\) \\| Idle/", timeout=180_000)

        run_cell(page, 0)
        load_s = printed(page, 0)["load_s"]
        run_cell(page, 1)
        cine_first = when(page, "document.querySelector('.ih-cine') && "
                                "document.querySelector('.ih-cine').dataset.firstPaint")
        cine_all = when(page, "document.querySelector('.ih-cine').dataset.received === '120'")
        root = page.locator(".ih-cine")
        root.locator(".ih-play").click()
        time.sleep(1.0)  # the first second: the loop starts
        start = int(root.get_attribute("data-painted"))
        time.sleep(args.play_seconds)
        painted = int(root.get_attribute("data-painted")) - start
        root.locator(".ih-play").click()
        if args.screenshots:
            shoot(page, root, args.screenshots / "view-cine.png")

        run_cell(page, 2)
        volume_first = when(page, "document.querySelector('.ih-viewer canvas') && "
                                  "document.querySelector('.ih-viewer canvas').width > 0")
        axial = page.locator(".ih-viewer canvas").first
        axial.scroll_into_view_if_needed()
        axial.hover()
        name = page.locator(".ih-viewer .ih-name").first
        steps, t = 30, time.perf_counter()
        for _ in range(steps):
            before = name.inner_text()
            page.mouse.wheel(0, 100)
            page.wait_for_function("(b) => document.querySelector('.ih-viewer .ih-name')"
                                   ".textContent !== b", arg=before, timeout=30_000)
        slices_per_s = steps / (time.perf_counter() - t)
        run_cell(page, 3)
        marks = printed(page, 3)
        if args.screenshots:
            run_cell(page, 4)
            page.wait_for_function("document.querySelectorAll('.ih-cine').length === 2 && "
                                   "document.querySelectorAll('.ih-cine')[1].dataset.firstPaint",
                                   timeout=60_000)
            shoot(page, page.locator(".ih-cine").nth(1), args.screenshots / "view-colour.png")
        ohif_cold, ohif_warm = (ohif_first_image(context, run["url"]) for _ in range(2))
        browser.close()

    rows = [
        ("view(images): color3d_jpeg_baseline, 120 x 480 x 640 RGB",
         cine_first - marks["cine_at"], f"{painted / args.play_seconds:5.1f} frames/s played "
         f"(header: 30.0), all 120 frames in the browser after "
         f"{(cine_all - marks['cine_at']) / 1000:.2f} s"),
        ("view(ct): demo CT 300 x 512 x 512 (baseline)", volume_first - marks["volume_at"],
         f"{slices_per_s:5.1f} slices/s by mouse wheel (a kernel round trip each)"),
    ]
    print(f"\nthe viewers in headless Chromium (load_images of the cine: {load_s:.2f} s)")
    print(f"{'':58} {'first picture':>14}")
    for label, first_ms, rest in rows:
        print(f"{label:58} {first_ms / 1000:11.2f} s   {rest}")
    print("\nthe demo CT (300 x 512 x 512) from its address to the first drawn image")
    print(f"{'OHIF at /services/viewer/, first visit (app not cached)':58} {ohif_cold:11.2f} s")
    print(f"{'OHIF at /services/viewer/, again in a new tab':58} {ohif_warm:11.2f} s")
    print(f"{'baseline: the notebook, load_series + view(ct)':58} "
          f"{marks['ct_load_s'] + (volume_first - marks['volume_at']) / 1000:11.2f} s   "
          f"(load_series {marks['ct_load_s']:.2f} s, then the first picture)")


def ohif_first_image(context, url: str) -> float:
    """Seconds from opening the CT's study address in a new tab (alice is
    logged in to the hub: the viewer's OAuth passes without a form) to the
    first screenshot in which the CT is drawn (a WebGL canvas read back in
    the page can be blank, so the screen is looked at: a tenth of a second or
    so per look)."""
    from imaginghub.hub import demo

    study = demo.series("ct-head").study_uid
    page = context.new_page()
    start = time.perf_counter()
    page.goto(f"{url}/services/viewer/viewer?StudyInstanceUIDs={study}")
    canvas = page.locator("[data-cy=viewport-pane] canvas.cornerstone-canvas").first
    canvas.wait_for(timeout=300_000)
    while True:
        box = canvas.bounding_box()
        if box and box["width"] > 10 and drawn(page.screenshot(clip={
                "x": box["x"] + box["width"] / 5, "y": box["y"] + box["height"] / 5,
                "width": box["width"] * 3 / 5, "height": box["height"] * 3 / 5})):
            took = time.perf_counter() - start
            break
        if time.perf_counter() - start > 300:
            sys.exit("OHIF drew nothing in 300 s")
    page.close()
    return took


def drawn(png: bytes) -> bool:
    """Whether a screenshot of the CT's viewport shows the head (more than
    15% of it brighter than dark grey), not a black canvas."""
    import io

    import numpy as np
    from PIL import Image

    grey = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
    return bool((grey > 60).mean() > 0.15)


def shoot(page, widget, path: Path) -> None:
    """The widget as it is on screen, the pointer over its middle (the
    readout shows that pixel)."""
    widget.scroll_into_view_if_needed()
    box = widget.locator("canvas.ih-canvas").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.45)
    time.sleep(0.5)
    path.parent.mkdir(parents=True, exist_ok=True)
    widget.screenshot(path=str(path))


def upload(page, run: dict, nb) -> None:
    """The notebook into alice's home through Jupyter's contents API (her
    own server writes it, as her)."""
    xsrf = next((c["value"] for c in page.context.cookies()
                 if c["name"] == "_xsrf" and c["path"].startswith("/user/alice")), "")
    r = page.request.put(f"{run['url']}/user/alice/api/contents/viewer-bench.ipynb",
                         data=json.dumps({"type": "notebook", "content": nb}),
                         headers={"Content-Type": "application/json", "X-XSRFToken": xsrf})
    if not r.ok:
        sys.exit(f"could not write the notebook into alice's home: {r.status} {r.text()}")


if __name__ == "__main__":
    main()
