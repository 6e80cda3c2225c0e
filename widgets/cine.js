// imaginghub's frames viewer (anywidget module) for radiographs, colour
// images and cine. The kernel sends each sequence's frames once, as 8-bit
// buffers (the frame on screen first); this keeps them and plays the cine
// at the header's rate by itself. Back to the kernel go only the frame a
// paused cine rests on, the pixel under the pointer, a ruler's ends and a
// new window.

const MAX_W = 720, MAX_H = 540; // the largest the picture is drawn, in CSS pixels

function render({ model, el: root }) {
  root.classList.add("ih-cine");
  const title = el("div", "ih-title");
  const bar = el("div", "ih-bar");
  const stage = el("div", "ih-stage");
  const holder = el("div", "ih-holder");
  const canvas = el("canvas", "ih-canvas");
  const overlay = el("canvas", "ih-overlay"); // the ruler, at the screen's resolution
  const rulerLabel = el("div", "ih-ruler-label");
  holder.append(canvas, overlay, rulerLabel);
  stage.append(holder);
  const readout = el("div", "ih-readout");
  root.append(title, bar, stage, readout);

  const play = el("button", "ih-play", "play");
  const slider = el("input", "ih-slider");
  slider.type = "range"; slider.min = 0; slider.step = 1;
  const counter = el("span", "ih-counter");
  const rate = el("span", "ih-rate");
  const choose = el("select", "ih-sequence");
  const wl = el("span", "ih-wl");
  const reset = el("button", "ih-reset", "header window");
  reset.title = "the window or VOI LUT the header gives";
  const hint = el("span", "ih-hint");
  bar.append(play, slider, counter, rate, choose, wl, reset, hint);

  // -- the frames: those of the current sequence and window, and the last
  // window's while the new ones travel
  let store = null, stale = null, shown = -1;
  const stats = { painted: 0, times: [] };

  function seq() { return model.get("sequences")[model.get("sequence")] || null; }
  function frameBytes(s) { return s.rows * s.cols * (s.color ? 3 : 1); }

  function need() {
    const s = seq();
    if (!s) return;
    const gen = model.get("generation");
    if (store && store.sequence === model.get("sequence") && store.generation === gen) return;
    stale = store && store.sequence === model.get("sequence") ? store : null;
    store = { sequence: model.get("sequence"), generation: gen,
      frames: new Array(s.frames), received: 0 };
    root.dataset.received = "0";
    model.send({ type: "need", sequence: store.sequence, generation: gen, first: current() });
  }

  model.on("msg:custom", (msg, buffers) => {
    if (msg.type !== "frames" || !store || msg.sequence !== store.sequence ||
        msg.generation !== store.generation) return;
    const s = seq();
    const data = bytesOf(buffers[0]);
    const size = frameBytes(s);
    for (let n = 0; n < msg.count; n++) {
      if (!store.frames[msg.start + n]) store.received++;
      store.frames[msg.start + n] = data.subarray(n * size, (n + 1) * size);
    }
    root.dataset.received = String(store.received);
    if (store.received === s.frames) stale = null;
    if (waiting && store.frames[current()]) { waiting = false; if (wanted) flushWindow(); }
    if (msg.start <= current() && current() < msg.start + msg.count) paint(current(), true);
  });

  // -- drawing --------------------------------------------------------------------
  let image = null;
  function paint(f, force) {
    const s = seq();
    if (!s || (f === shown && !force)) return false;
    const data = (store && store.frames[f]) || (stale && stale.frames[f]);
    if (!data) return false;
    if (canvas.width !== s.cols || canvas.height !== s.rows || !image) {
      canvas.width = s.cols; canvas.height = s.rows;
      image = new ImageData(s.cols, s.rows);
      fit(s);
    }
    const px = image.data;
    if (s.color) {
      for (let p = 0, q = 0; q < px.length; p += 3, q += 4) {
        px[q] = data[p]; px[q + 1] = data[p + 1]; px[q + 2] = data[p + 2]; px[q + 3] = 255;
      }
    } else {
      for (let p = 0, q = 0; q < px.length; p++, q += 4) {
        px[q] = px[q + 1] = px[q + 2] = data[p]; px[q + 3] = 255;
      }
    }
    canvas.getContext("2d").putImageData(image, 0, 0);
    if (shown === -1) root.dataset.firstPaint = String(Date.now());
    shown = f;
    stats.painted++;
    stats.times.push(performance.now());
    root.dataset.painted = String(stats.painted);
    root.dataset.frame = String(f);
    slider.value = f;
    counter.textContent = ` ${f + 1} / ${s.frames} `;
    return true;
  }

  function fit(s) {
    const sy = s.spacing ? s.spacing[0] : 1, sx = s.spacing ? s.spacing[1] : 1;
    const w = s.cols * sx, h = s.rows * sy;
    const scale = Math.min(MAX_W / w, MAX_H / h, s.cols >= 256 ? 1e9 : 4 * s.cols / w);
    canvas.style.width = `${Math.round(w * scale)}px`;
    canvas.style.height = `${Math.round(h * scale)}px`;
    drawRuler();
  }

  function current() {
    return playing ? Math.max(shown, 0) : Math.min(model.get("frame"), (seq() || {}).frames - 1);
  }

  // -- cine: played here, at the header's frame times -------------------------------
  let playing = false, t0 = 0, timer = null;
  function startOf(s, f) { return s.starts_ms ? s.starts_ms[f] : f * 1000 / s.fps; }
  function frameAt(s, ms) {
    const step = s.starts_ms && s.frames > 1 ? s.starts_ms[s.frames - 1] / (s.frames - 1)
      : 1000 / s.fps;
    const total = startOf(s, s.frames - 1) + step;
    const t = ((ms % total) + total) % total;
    if (!s.starts_ms) return Math.min(s.frames - 1, Math.floor(t * s.fps / 1000));
    let lo = 0, hi = s.frames - 1;
    while (lo < hi) { const mid = (lo + hi + 1) >> 1; if (s.starts_ms[mid] <= t) lo = mid; else hi = mid - 1; }
    return lo;
  }
  function tick() {
    if (!playing) return;
    const s = seq();
    paint(frameAt(s, performance.now() - t0));
    const now = performance.now();
    while (stats.times.length && stats.times[0] < now - 1000) stats.times.shift();
    const achieved = stats.times.length;
    root.dataset.fps = String(achieved);
    rate.textContent = ` ${achieved} of ${s.fps.toFixed(1)} frames/s `;
    timer = requestAnimationFrame(tick);
  }
  function setPlaying(on) {
    const s = seq();
    if (on && s && s.frames > 1) {
      if (!playing) {
        playing = true;
        t0 = performance.now() - startOf(s, Math.max(0, Math.min(model.get("frame"), s.frames - 1)));
        stats.times = [];
        timer = requestAnimationFrame(tick);
        if (!model.get("playing")) { model.set("playing", true); model.save_changes(); }
      }
    } else if (playing) {
      playing = false;
      if (timer) cancelAnimationFrame(timer);
      model.set("frame", Math.max(shown, 0));
      model.set("playing", false);
      model.save_changes();
    }
    play.textContent = playing ? "pause" : "play";
    drawRate();
  }
  play.onclick = () => setPlaying(!playing);

  function goTo(f) {
    const s = seq();
    if (!s) return;
    f = Math.max(0, Math.min(s.frames - 1, f));
    if (playing) setPlaying(false);
    model.set("frame", f); model.save_changes();
    paint(f);
  }
  slider.oninput = () => goTo(parseInt(slider.value, 10));
  canvas.addEventListener("wheel", (ev) => {
    ev.preventDefault();
    goTo(current() + (ev.deltaY > 0 ? 1 : -1));
  }, { passive: false });

  // -- window, pixel readout, ruler ------------------------------------------------
  let waiting = false, wanted = null;
  function setWindow(w) { wanted = w; if (!waiting) flushWindow(); }
  function flushWindow() {
    // one window at a time: the next when the frame on screen came in the last one
    const same = JSON.stringify(wanted) === JSON.stringify(model.get("window"));
    waiting = !same;
    model.set("window", wanted); wanted = null;
    model.save_changes();
  }
  reset.onclick = () => setWindow([]);

  function pixelOf(ev) {
    const r = canvas.getBoundingClientRect();
    return [(ev.clientY - r.top) / r.height * canvas.height,
      (ev.clientX - r.left) / r.width * canvas.width];
  }
  let ruler = null; // [row0, col0, row1, col1] while drawn or kept
  function drawRuler() {
    const w = canvas.clientWidth, h = canvas.clientHeight, dpr = window.devicePixelRatio || 1;
    overlay.width = Math.round(w * dpr); overlay.height = Math.round(h * dpr);
    overlay.style.width = `${w}px`; overlay.style.height = `${h}px`;
    const ctx = overlay.getContext("2d");
    ctx.clearRect(0, 0, overlay.width, overlay.height);
    if (!ruler || !canvas.width) { rulerLabel.textContent = ""; return; }
    const [r0, c0, r1, c1] = ruler;
    const sx = overlay.width / canvas.width, sy = overlay.height / canvas.height;
    ctx.strokeStyle = "rgba(255, 220, 0, 0.95)";
    ctx.lineWidth = 1.5 * dpr;
    ctx.beginPath(); ctx.moveTo(c0 * sx, r0 * sy); ctx.lineTo(c1 * sx, r1 * sy); ctx.stroke();
    for (const [r, c] of [[r0, c0], [r1, c1]]) {
      ctx.beginPath(); ctx.arc(c * sx, r * sy, 3 * dpr, 0, 2 * Math.PI); ctx.stroke();
    }
    rulerLabel.style.left = `${c1 / canvas.width * w + 8}px`;
    rulerLabel.style.top = `${r1 / canvas.height * h - 8}px`;
    rulerLabel.textContent = model.get("ruler_text");
  }

  let hover = null;
  canvas.addEventListener("pointermove", (ev) => {
    if (ev.buttons) return;
    const [r, c] = pixelOf(ev).map(Math.floor);
    if (hover === null) requestAnimationFrame(() => {
      model.set("cursor", [current(), hover[0], hover[1]]); model.save_changes(); hover = null;
    });
    hover = [r, c];
  });
  canvas.addEventListener("contextmenu", (ev) => ev.preventDefault());
  canvas.addEventListener("pointerdown", (ev) => {
    canvas.setPointerCapture(ev.pointerId);
    const s = seq();
    const windowing = (ev.button === 2 || ev.shiftKey) && !s.color;
    const start = { x: ev.clientX, y: ev.clientY, at: pixelOf(ev) };
    const base = (model.get("window").length ? model.get("window") : model.get("window_base")).slice();
    const move = (e) => {
      if (windowing) {
        const width = Math.max(1e-3, base[0] * Math.exp((e.clientX - start.x) / 200));
        setWindow([width, base[1] - (e.clientY - start.y) * base[0] / 300]);
        return;
      }
      ruler = [...start.at, ...pixelOf(e)];
      drawRuler();
    };
    const up = (e) => {
      canvas.removeEventListener("pointermove", move);
      canvas.removeEventListener("pointerup", up);
      if (!windowing && ruler) { model.set("ruler", ruler); model.save_changes(); }
    };
    canvas.addEventListener("pointermove", move);
    canvas.addEventListener("pointerup", up);
  });

  // -- the bar --------------------------------------------------------------------
  function drawRate() {
    const s = seq();
    if (!s) return;
    if (!playing) rate.textContent = s.frames > 1 ?
      ` ${s.fps.toFixed(1)} frames/s${s.fps_source === "header" ? "" : ` (${s.fps_source})`} ` : "";
  }
  function drawBar() {
    const s = seq();
    title.textContent = model.get("title");
    const all = model.get("sequences");
    choose.replaceChildren(...all.map((q, n) => { const o = el("option", "", q.name); o.value = n; return o; }));
    choose.value = String(model.get("sequence"));
    choose.style.display = all.length > 1 ? "" : "none";
    if (!s) return;
    slider.max = s.frames - 1;
    for (const e of [play, slider, counter]) e.style.display = s.frames > 1 ? "" : "none";
    wl.textContent = ` ${model.get("window_text")} `;
    reset.style.display = s.color || !model.get("window").length ? "none" : "";
    hint.textContent = (s.color ? "" : "right or shift drag: window · ") + "drag: measure" +
      (s.spacing ? "" : " (no pixel spacing: in pixels)");
    drawRate();
  }
  choose.onchange = () => { model.set("sequence", parseInt(choose.value, 10)); model.save_changes(); };

  model.on("change:sequence", () => {
    setPlaying(false); ruler = null; shown = -1; image = null; store = null; stale = null;
    drawBar(); need();
  });
  model.on("change:generation", () => need());
  model.on("change:window_text", drawBar);
  model.on("change:window", drawBar);
  model.on("change:readout", () => { readout.textContent = model.get("readout"); });
  model.on("change:ruler_text", drawRuler);
  model.on("change:ruler", () => { if (!model.get("ruler").length) { ruler = null; drawRuler(); } });
  model.on("change:playing", () => setPlaying(model.get("playing")));
  model.on("change:frame", () => { if (!playing) paint(current()); });

  drawBar();
  need();
  if (model.get("playing")) setPlaying(true);
  return () => { playing = false; if (timer) cancelAnimationFrame(timer); };
}

export default { render };
