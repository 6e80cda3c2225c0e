// imaginghub's volume viewer (anywidget module). The kernel sends 8-bit
// windowed slices and label slices as binary buffers; this draws them,
// blends the labels, draws the crosshair, and turns the wheel, clicks and
// drags into positions, windows and angles that go back to the kernel.

const CELL = 320; // the longest edge of a view, in CSS pixels



function render({ model, el: root }) {
  root.classList.add("ih-viewer");
  const title = el("div", "ih-title");
  const bar = el("div", "ih-bar");
  const grid = el("div", "ih-grid");
  const legend = el("div", "ih-legend");
  const readout = el("div", "ih-readout");
  root.append(title, bar, grid, legend, readout);

  // -- toolbar: presets, auto window, window/level, opacity, labels on/off
  const presets = el("span", "ih-presets");
  const auto = el("button", "ih-auto", "auto");
  auto.title = "window from the 1st to 99th percentile";
  auto.onclick = () => model.send({ type: "auto-window" });
  const wl = el("span", "ih-wl");
  const opacityLabel = el("label", "ih-opacity", "overlay ");
  const opacity = el("input");
  opacity.type = "range"; opacity.min = 0; opacity.max = 1; opacity.step = 0.05;
  opacity.oninput = () => { model.set("opacity", parseFloat(opacity.value)); model.save_changes(); };
  opacityLabel.append(opacity);
  const labelsLabel = el("label", "ih-show", " labels ");
  const show = el("input");
  show.type = "checkbox";
  show.onchange = () => { model.set("show_labels", show.checked); model.save_changes(); };
  labelsLabel.append(show);
  bar.append(presets, auto, wl, opacityLabel, labelsLabel);

  function setWindow(w) { model.set("window", w); model.save_changes(); }

  // -- the three planes and the 3D view
  const views = [0, 1, 2].map((n) => {
    const box = el("div", "ih-view");
    const name = el("div", "ih-name");
    const canvas = el("canvas", "ih-canvas");
    canvas.dataset.plane = String(n);
    box.append(name, canvas);
    grid.append(box);
    return { box, name, canvas };
  });
  const box3d = el("div", "ih-view");
  const canvas3d = el("canvas", "ih-canvas ih-3d");
  box3d.append(el("div", "ih-name", "3D (MIP, drag to turn)"), canvas3d);
  grid.append(box3d);

  function palette() {
    const lut = new Uint8Array(256 * 3);
    for (const entry of model.get("legend")) {
      const v = entry.value > 255 ? ((entry.value - 1) % 255) + 1 : entry.value;
      lut.set(entry.color, v * 3);
    }
    return lut;
  }

  function paint(canvas, width, height, gray, labels) {
    if (!width || !height || gray.length < width * height) return;
    canvas.width = width; canvas.height = height;
    const ctx = canvas.getContext("2d");
    const img = ctx.createImageData(width, height);
    const px = img.data;
    const lut = palette();
    const a = model.get("show_labels") ? model.get("opacity") : 0;
    const withLabels = a > 0 && labels.length === gray.length;
    for (let p = 0, q = 0; p < gray.length; p++, q += 4) {
      const g = gray[p];
      const l = withLabels ? labels[p] : 0;
      if (l) {
        px[q] = (1 - a) * g + a * lut[l * 3];
        px[q + 1] = (1 - a) * g + a * lut[l * 3 + 1];
        px[q + 2] = (1 - a) * g + a * lut[l * 3 + 2];
      } else {
        px[q] = px[q + 1] = px[q + 2] = g;
      }
      px[q + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
    return ctx;
  }

  function fit(canvas, w, h) {
    const scale = CELL / Math.max(w, h);
    canvas.style.width = `${Math.round(w * scale)}px`;
    canvas.style.height = `${Math.round(h * scale)}px`;
  }

  // screen pixel <-> voxel index along the plane's axes
  function toScreen(plane, axis, index) {
    const size = axis === plane.ax ? plane.width : plane.height;
    const flip = axis === plane.ax ? plane.flip_x : plane.flip_y;
    return flip ? size - 1 - index : index;
  }

  function drawPlane(n) {
    const plane = model.get("planes")[n];
    if (!plane) return;
    const v = views[n];
    v.name.textContent = `${plane.name} ${model.get("position")[plane.axis] + 1}` +
      ` / ${sizeAlong(plane.axis)}`;
    const ctx = paint(v.canvas, plane.width, plane.height, bytesOf(model.get(`image${n}`)),
      bytesOf(model.get(`label${n}`)));
    if (!ctx) return;
    fit(v.canvas, plane.width * plane.sx, plane.height * plane.sy);
    const pos = model.get("position");
    const x = toScreen(plane, plane.ax, pos[plane.ax]) + 0.5;
    const y = toScreen(plane, plane.ay, pos[plane.ay]) + 0.5;
    ctx.strokeStyle = "rgba(255, 200, 0, 0.8)";
    ctx.lineWidth = Math.max(1, plane.width / 300);
    ctx.beginPath();
    ctx.moveTo(x, 0); ctx.lineTo(x, plane.height);
    ctx.moveTo(0, y); ctx.lineTo(plane.width, y);
    ctx.stroke();
  }

  function sizeAlong(axis) {
    for (const p of model.get("planes")) {
      if (p.ax === axis) return p.width;
      if (p.ay === axis) return p.height;
    }
    return 0;
  }

  function draw3d() {
    const [h, w] = model.get("render3d_shape");
    const data = bytesOf(model.get("render3d"));
    if (!w || !h || data.length < 2 * w * h) return;
    paint(canvas3d, w, h, data.subarray(0, w * h), data.subarray(w * h, 2 * w * h));
    fit(canvas3d, w, h);
  }

  function drawBar() {
    presets.replaceChildren(...model.get("presets").map((p) => {
      const b = el("button", "ih-preset", p.name);
      b.onclick = () => setWindow(p.window);
      return b;
    }));
    const [w, l] = model.get("window");
    wl.textContent = ` W ${Math.round(w)} L ${Math.round(l)} `;
    opacity.value = model.get("opacity");
    show.checked = model.get("show_labels");
  }

  function drawLegend() {
    legend.replaceChildren(...model.get("legend").map((e) => {
      const item = el("span", "ih-legend-item");
      const swatch = el("span", "ih-swatch");
      swatch.style.background = `rgb(${e.color.join(",")})`;
      item.append(swatch, el("span", "", ` ${e.value} ${e.name}`));
      return item;
    }));
  }

  function drawAll() {
    title.textContent = model.get("title");
    drawBar(); drawLegend();
    [0, 1, 2].forEach(drawPlane); draw3d();
    readout.textContent = model.get("readout");
  }

  // -- interaction: wheel = next slice, left drag = crosshair, right or
  // shift drag = window/level, drag on 3D = turn
  views.forEach((v, n) => {
    v.canvas.addEventListener("wheel", (ev) => {
      ev.preventDefault();
      const plane = model.get("planes")[n];
      const pos = model.get("position").slice();
      const max = sizeAlong(plane.axis) - 1;
      pos[plane.axis] = Math.min(max, Math.max(0, pos[plane.axis] + (ev.deltaY > 0 ? 1 : -1)));
      model.set("position", pos); model.save_changes();
    }, { passive: false });
    v.canvas.addEventListener("contextmenu", (ev) => ev.preventDefault());
    v.canvas.addEventListener("pointerdown", (ev) => {
      v.canvas.setPointerCapture(ev.pointerId);
      const start = { x: ev.clientX, y: ev.clientY, window: model.get("window").slice() };
      const windowing = ev.button === 2 || ev.shiftKey;
      const move = (e) => {
        if (windowing) {
          const width = Math.max(1, start.window[0] * Math.exp((e.clientX - start.x) / 200));
          const level = start.window[1] - (e.clientY - start.y) * start.window[0] / 300;
          setWindow([width, level]);
          return;
        }
        const plane = model.get("planes")[n];
        const r = v.canvas.getBoundingClientRect();
        let sx = Math.floor((e.clientX - r.left) / r.width * plane.width);
        let sy = Math.floor((e.clientY - r.top) / r.height * plane.height);
        sx = Math.min(plane.width - 1, Math.max(0, sx));
        sy = Math.min(plane.height - 1, Math.max(0, sy));
        const pos = model.get("position").slice();
        pos[plane.ax] = plane.flip_x ? plane.width - 1 - sx : sx;
        pos[plane.ay] = plane.flip_y ? plane.height - 1 - sy : sy;
        model.set("position", pos); model.save_changes();
      };
      move(ev);
      const up = () => {
        v.canvas.removeEventListener("pointermove", move);
        v.canvas.removeEventListener("pointerup", up);
      };
      v.canvas.addEventListener("pointermove", move);
      v.canvas.addEventListener("pointerup", up);
    });
  });
  canvas3d.addEventListener("pointerdown", (ev) => {
    canvas3d.setPointerCapture(ev.pointerId);
    const start = { x: ev.clientX, angle: model.get("angle") };
    const up = (e) => {
      model.set("angle", (start.angle + (e.clientX - start.x) * 0.5) % 360);
      model.save_changes();
      canvas3d.removeEventListener("pointerup", up);
    };
    canvas3d.addEventListener("pointerup", up);
  });

  // Several traits change together (three planes, labels, readout): draw once.
  let pending = false;
  function schedule() {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => { pending = false; drawAll(); });
  }

  const changes = ["image0", "image1", "image2", "label0", "label1", "label2", "render3d",
    "readout", "window", "opacity", "show_labels", "legend", "presets", "planes", "title"];
  for (const name of changes) model.on(`change:${name}`, schedule);
  drawAll();
  return () => { for (const name of changes) model.off(`change:${name}`, schedule); };
}

export default { render };
