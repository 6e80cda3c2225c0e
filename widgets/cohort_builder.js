// imaginghub's cohort builder (anywidget module): facets as bars, chips,
// search, ranges, results with thumbnails, selection, save, open, run workflow.


function render({ model, el: root }) {
  root.classList.add("ih-cohort");
  const tabs = el("div", "ih-tabs");
  const tabSearch = el("button", "ih-tab ih-active", "search");
  const tabCohorts = el("button", "ih-tab", "cohorts");
  tabs.append(tabSearch, tabCohorts);
  const search = el("div", "ih-search");
  const shared = el("div", "ih-shared");
  shared.style.display = "none";
  root.append(tabs, search, shared);
  tabSearch.onclick = () => { search.style.display = ""; shared.style.display = "none";
    tabSearch.classList.add("ih-active"); tabCohorts.classList.remove("ih-active"); };
  tabCohorts.onclick = () => { search.style.display = "none"; shared.style.display = "";
    tabCohorts.classList.add("ih-active"); tabSearch.classList.remove("ih-active");
    model.send({ action: "cohorts" }); };

  const top = el("div", "ih-top");
  const box = el("input", "ih-text");
  box.type = "search"; box.placeholder = "search descriptions";
  const status = el("span", "ih-status");
  top.append(box, status);
  const chips = el("div", "ih-chips");
  const body = el("div", "ih-body");
  const side = el("div", "ih-side");
  const main = el("div", "ih-main");
  body.append(side, main);
  const actions = el("div", "ih-actions");
  const message = el("div", "ih-message");
  search.append(top, chips, body, actions, message);

  function query() {
    const q = model.get("query") || {};
    return { filters: { ...(q.filters || {}) }, ranges: { ...(q.ranges || {}) }, text: q.text || "" };
  }
  function setQuery(q) { model.set("query", q); model.set("offset", 0); model.save_changes(); }

  let timer = null;
  box.oninput = () => {
    clearTimeout(timer);
    timer = setTimeout(() => { const q = query(); q.text = box.value.trim(); setQuery(q); }, 300);
  };

  function toggle(field, value) {
    const q = query();
    const values = new Set(q.filters[field] || []);
    values.has(value) ? values.delete(value) : values.add(value);
    if (values.size) q.filters[field] = [...values]; else delete q.filters[field];
    setQuery(q);
  }

  function drawFacets() {
    const facets = model.get("facets") || {};
    const q = query();
    side.replaceChildren();
    for (const field of model.get("facet_fields")) {
      const panel = el("div", "ih-facet");
      panel.append(el("div", "ih-facet-title", field.replace("_", " ")));
      const counts = facets[field] || [];
      const max = Math.max(1, ...counts.map((c) => c[1]));
      const chosen = new Set(q.filters[field] || []);
      for (const [value, n] of counts.slice(0, 12)) {
        const row = el("div", "ih-bar" + (chosen.has(value) ? " ih-chosen" : ""));
        row.dataset.field = field; row.dataset.value = value;
        const fill = el("div", "ih-fill");
        fill.style.width = `${(100 * n) / max}%`;
        row.append(fill, el("span", "ih-label", value), el("span", "ih-count", n.toLocaleString()));
        row.onclick = () => toggle(field, value);
        panel.append(row);
      }
      side.append(panel);
    }
    for (const [field, kind] of Object.entries(model.get("range_fields"))) {
      const panel = el("div", "ih-facet");
      panel.append(el("div", "ih-facet-title", field.replace("_", " ")));
      const [lo, hi] = q.ranges[field] || [null, null];
      const inputs = [lo, hi].map((v, i) => {
        const input = el("input", "ih-range");
        input.type = kind === "date" ? "date" : "number";
        input.value = v ?? ""; input.placeholder = i ? "to" : "from";
        input.dataset.field = field;
        input.onchange = () => {
          const q2 = query();
          const pair = [inputs[0].value || null, inputs[1].value || null];
          if (pair[0] === null && pair[1] === null) delete q2.ranges[field]; else q2.ranges[field] = pair;
          setQuery(q2);
        };
        return input;
      });
      panel.append(...inputs);
      side.append(panel);
    }
  }

  function drawChips() {
    const q = query();
    chips.replaceChildren();
    for (const [field, values] of Object.entries(q.filters)) {
      for (const v of values) {
        const chip = el("span", "ih-chip", `${field}: ${v} ×`);
        chip.onclick = () => toggle(field, v);
        chips.append(chip);
      }
    }
    for (const [field, [lo, hi]] of Object.entries(q.ranges)) {
      const chip = el("span", "ih-chip", `${field}: ${lo ?? "…"} – ${hi ?? "…"} ×`);
      chip.onclick = () => { const q2 = query(); delete q2.ranges[field]; setQuery(q2); };
      chips.append(chip);
    }
    if (q.text) {
      const chip = el("span", "ih-chip", `text: ${q.text} ×`);
      chip.onclick = () => { const q2 = query(); q2.text = ""; box.value = ""; setQuery(q2); };
      chips.append(chip);
    }
  }

  // a link to the hub's browser viewer (its path comes from the kernel)
  function viewerLink(path, cls, text, title) {
    const a = el("a", cls, text);
    a.href = path; a.target = "_blank"; a.rel = "noopener"; a.title = title;
    a.onclick = (ev) => ev.stopPropagation();
    return a;
  }

  const urls = [];
  function drawResults() {
    for (const u of urls.splice(0)) URL.revokeObjectURL(u);
    const rows = model.get("rows") || [];
    const thumbs = model.get("thumbs") || [];
    const selected = new Set(model.get("selected") || []);
    const grid = el("div", "ih-gallery");
    rows.forEach((r, i) => {
      const card = el("div", "ih-card" + (selected.has(r.series_uid) ? " ih-selected" : ""));
      card.dataset.uid = r.series_uid;
      const t = thumbs[i];
      const size = t ? (t.byteLength ?? t.length ?? 0) : 0;
      if (size) {
        const img = el("img", "ih-thumb");
        const url = URL.createObjectURL(new Blob([t], { type: "image/png" }));
        urls.push(url); img.src = url;
        card.append(img);
      } else {
        card.append(el("div", "ih-nothumb", r.modality || "?"));
      }
      card.append(el("div", "ih-desc", r.series_description || "(no description)"),
        el("div", "ih-meta", [r.modality, r.body_part, r.study_date, `${r.instances ?? "?"} images`]
          .filter(Boolean).join(" · ")));
      const open = el("button", "ih-open", "view");
      open.onclick = (ev) => { ev.stopPropagation(); model.send({ action: "view", series_uid: r.series_uid }); };
      card.append(open);
      if (r.viewer) card.append(viewerLink(r.viewer, "ih-ohif", "open in OHIF",
        "the study in the browser viewer (OHIF), in a new tab, on this series"));
      card.onclick = () => {
        const sel = new Set(model.get("selected") || []);
        sel.has(r.series_uid) ? sel.delete(r.series_uid) : sel.add(r.series_uid);
        model.set("selected", [...sel]); model.save_changes();
      };
      grid.append(card);
    });
    const pager = el("div", "ih-pager");
    const offset = model.get("offset"), size = model.get("page_size"), total = model.get("total");
    const prev = el("button", "", "‹ previous"), next = el("button", "", "next ›");
    prev.disabled = offset === 0; next.disabled = offset + size >= total;
    prev.onclick = () => { model.set("offset", Math.max(0, offset - size)); model.save_changes(); };
    next.onclick = () => { model.set("offset", offset + size); model.save_changes(); };
    pager.append(prev, el("span", "", ` ${total ? offset + 1 : 0}–${Math.min(offset + size, total)} of ${total.toLocaleString()} `), next);
    main.replaceChildren(grid, pager);
  }

  // actions: selection and saving
  const selInfo = el("span", "ih-selinfo");
  const selectPage = el("button", "", "select page");
  selectPage.onclick = () => {
    const sel = new Set(model.get("selected") || []);
    for (const r of model.get("rows") || []) sel.add(r.series_uid);
    model.set("selected", [...sel]); model.save_changes();
  };
  const clear = el("button", "", "clear selection");
  clear.onclick = () => { model.set("selected", []); model.save_changes(); };
  const name = el("input", "ih-name");
  name.placeholder = "cohort name";
  const project = el("select", "ih-project");
  const saveSel = el("button", "ih-save", "save selection");
  const saveQuery = el("button", "ih-save-query", "save all matches");
  const addSel = el("button", "ih-add", "add selection to cohort");
  addSel.onclick = () => model.send({ action: "add", name: name.value.trim(), project: project.value });
  saveSel.onclick = () => model.send({ action: "save", what: "selection", name: name.value.trim(), project: project.value });
  saveQuery.onclick = () => model.send({ action: "save", what: "query", name: name.value.trim(), project: project.value });
  const run = el("button", "ih-run", "run workflow");
  run.title = "open the jobs widget below with the saved cohort (or the selected series)";
  run.onclick = () => model.send({ action: "run" });
  actions.append(selInfo, selectPage, clear, name, project, saveSel, saveQuery, addSel, run);

  function drawActions() {
    const n = (model.get("selected") || []).length;
    selInfo.textContent = `${n} selected`;
    const current = project.value;
    project.replaceChildren(...(model.get("projects") || []).map((p) => { const o = el("option", "", p); o.value = p; return o; }));
    if (current) project.value = current;
  }

  function drawShared() {
    const rows = model.get("cohorts") || [];
    const table = el("table", "ih-table");
    const head = el("tr");
    for (const h of ["project", "cohort", "version", "series", "saved by", "saved at", "note", ""]) head.append(el("th", "", h));
    table.append(head);
    for (const c of rows) {
      const tr = el("tr");
      for (const v of [c.project, c.name, c.version, c.size, c.saved_by, (c.saved_at || "").slice(0, 16), c.note]) tr.append(el("td", "", String(v ?? "")));
      const cell = el("td");
      const runIt = el("button", "ih-run-cohort", "run workflow");
      runIt.onclick = () => model.send({ action: "run", cohort: c.ref || `${c.name}@${c.version}`, project: c.project });
      cell.append(runIt);
      if (c.viewer) cell.append(viewerLink(c.viewer, "ih-ohif-cohort", "open in OHIF",
        "the cohort's studies as the study list of the browser viewer (OHIF), in a new tab"));
      tr.append(cell);
      table.append(tr);
    }
    shared.replaceChildren(rows.length ? table : el("div", "ih-message", "no cohorts yet"));
  }

  function drawStatus() {
    status.textContent = model.get("busy") ? "…" :
      `${model.get("total").toLocaleString()} series · ${Math.round(model.get("took_ms"))} ms`;
    message.textContent = model.get("message");
  }

  let pending = false;
  function drawAll() {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => {
      pending = false;
      drawFacets(); drawChips(); drawResults(); drawActions(); drawShared(); drawStatus();
    });
  }
  const names = ["facets", "rows", "thumbs", "selected", "projects", "cohorts", "message", "busy", "total", "query", "offset"];
  for (const n of names) model.on(`change:${n}`, drawAll);
  box.value = (model.get("query") || {}).text || "";
  drawAll();
  return () => { for (const n of names) model.off(`change:${n}`, drawAll); for (const u of urls) URL.revokeObjectURL(u); };
}

export default { render };
