// imaginghub's jobs widget (anywidget module): a form that runs a workflow,
// the list of jobs with status and progress, and per job: output notebook,
// log, cancel, rerun. The kernel does every request; this only draws and
// sends what the user asked for.

const ACTIVE = new Set(["queued", "running"]);
const IDLE_REFRESH_MS = 5000; // ask for the list now and then when nothing runs ...
const IDLE_FOR_MS = 10 * 60 * 1000; // ... until the widget was left alone this long

function labConfig() {
  let base = "", root = "";
  const node = document.getElementById("jupyter-config-data");
  if (node) {
    try { const c = JSON.parse(node.textContent); base = c.baseUrl || ""; root = c.serverRoot || ""; } catch (e) { /* not JupyterLab */ }
  }
  if (!base) {
    const m = window.location.pathname.match(/^(.*?\/)(lab|tree|notebooks|doc)(\/|$)/);
    base = m ? m[1] : "/";
  }
  if (!base.endsWith("/")) base += "/";
  return { base, root };
}

function labUrl(base, path) {
  return base + "lab/tree/" + path.split("/").map(encodeURIComponent).join("/");
}

function clock(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return isNaN(d) ? iso : d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
}

function render({ model, el: root }) {
  root.classList.add("ih-jobs");
  const lab = labConfig();
  model.set("lab", lab);
  model.save_changes();

  // -- the run form ---------------------------------------------------------
  const form = el("div", "ih-form");
  const head = el("div", "ih-form-head");
  const select = el("select", "ih-workflow");
  const desc = el("div", "ih-wf-desc");
  head.append(el("span", "ih-form-title", "run"), select);
  const cohortNote = el("div", "ih-cohort-note");
  const fieldsBox = el("div", "ih-fields");
  const foot = el("div", "ih-form-foot");
  const sharedLabel = el("label", "ih-shared");
  const shared = el("input");
  shared.type = "checkbox";
  sharedLabel.append(shared, document.createTextNode(" share with the project"));
  const submit = el("button", "ih-submit", "submit");
  foot.append(submit, sharedLabel);
  form.append(head, desc, cohortNote, fieldsBox, foot);
  const message = el("div", "ih-message");

  // -- the list ----------------------------------------------------------------
  const listHead = el("div", "ih-list-head");
  const listTitle = el("span", "ih-list-title", "jobs");
  const refreshed = el("span", "ih-refreshed");
  const refresh = el("button", "ih-refresh", "refresh");
  refresh.onclick = () => model.send({ action: "refresh" });
  listHead.append(listTitle, refresh, refreshed);
  const table = el("table", "ih-table");
  const thead = el("tr");
  for (const h of ["job", "workflow", "cohort", "by", "status", "progress", "submitted", "ended", "", "notebook"]) thead.append(el("th", "", h));
  const tbody = el("tbody");
  table.append(thead, tbody);
  const empty = el("div", "ih-empty", "no jobs yet");

  // -- the log panel -------------------------------------------------------------
  const logPanel = el("div", "ih-logpanel");
  const logHead = el("div", "ih-log-head");
  const logTitle = el("span", "ih-log-title");
  const logClose = el("button", "ih-log-close", "close");
  logClose.onclick = () => model.send({ action: "hide_log" });
  logHead.append(logTitle, logClose);
  const logText = el("pre", "ih-log");
  // the series the job stored in the archive, each a link to the browser viewer
  const storedList = el("div", "ih-stored");
  logPanel.append(logHead, storedList, logText);

  root.append(form, message, listHead, table, empty, logPanel);

  // -- the form's parts ------------------------------------------------------------
  function drawWorkflows() {
    const flows = model.get("workflows") || [];
    select.replaceChildren(...flows.map((w) => {
      const same = !w.title || w.title.toLowerCase() === w.name.toLowerCase();
      const o = el("option", "", same ? w.name : `${w.name} — ${w.title}`);
      o.value = w.name;
      return o;
    }));
    select.value = model.get("workflow") || "";
    const current = flows.find((w) => w.name === select.value);
    desc.textContent = current ? current.description + (current.per_series ? " (runs once per series)" : "") : "";
  }
  select.onchange = () => { model.set("workflow", select.value); model.save_changes(); };

  function drawFields() {
    const fields = model.get("fields") || [];
    fieldsBox.replaceChildren();
    for (const f of fields) {
      const row = el("label", "ih-field");
      row.dataset.name = f.name;
      const name = el("span", "ih-fname", f.name);
      const type = el("span", "ih-ftype", f.type);
      const input = el("input", "ih-input");
      input.name = f.name;
      input.dataset.kind = f.kind;
      if (f.kind === "bool") {
        input.type = "checkbox";
        input.checked = Boolean(f.value);
      } else {
        input.type = "text";
        input.value = f.value ?? "";
        if (f.kind === "int" || f.kind === "float") input.inputMode = "decimal";
        if (f.kind === "list") input.placeholder = "comma-separated";
      }
      input.onkeydown = (ev) => { if (ev.key === "Enter") submitForm(); };
      row.append(name, type, input, el("span", "ih-help", f.help || ""));
      fieldsBox.append(row);
    }
    if (!fields.length && model.get("workflow")) fieldsBox.append(el("div", "ih-help", "this workflow takes no parameters"));
    drawCohort();
  }

  function drawCohort() {
    const c = model.get("cohort") || {};
    const names = new Set((model.get("fields") || []).map((f) => f.name));
    let text = "";
    if (c.ref) text = `cohort ${c.project ? c.project + "/" : ""}${c.ref}`;
    else if ((c.series || []).length) text = `${c.series.length} selected series (not saved as a cohort)`;
    if (text && model.get("workflow") && !names.has("cohort") && !names.has("series")) text += ": this workflow reads no cohort";
    cohortNote.textContent = text;
    cohortNote.style.display = text ? "" : "none";
  }

  function submitForm() {
    if (model.get("busy")) return;
    const values = {};
    for (const input of fieldsBox.querySelectorAll("input.ih-input")) {
      values[input.name] = input.type === "checkbox" ? input.checked : input.value;
    }
    model.send({ action: "submit", values, shared: shared.checked });
  }
  submit.onclick = submitForm;

  function drawMessage() {
    message.textContent = model.get("message") || "";
    message.classList.toggle("ih-error", Boolean(model.get("error")));
    submit.disabled = Boolean(model.get("busy"));
    submit.textContent = model.get("busy") ? "submitting…" : "submit";
  }

  // -- the rows, kept by job id so buttons stay put while they update --------------
  const pending = new Map(); // job id: the window opened for its notebook
  const trs = new Map();
  function makeRow(id) {
    const tr = el("tr", "ih-row");
    tr.dataset.id = id;
    const c = {};
    for (const k of ["id", "workflow", "cohort", "user", "status", "progress", "submitted", "ended", "actions", "link"]) {
      c[k] = el("td", "ih-c-" + k);
      tr.append(c[k]);
    }
    c.id.textContent = id.slice(0, 8);
    c.id.title = id;
    c.badge = el("span", "ih-badge");
    c.reason = el("div", "ih-reason");
    c.status.append(c.badge, c.reason);
    c.bar = el("div", "ih-progress");
    c.fill = el("div", "ih-progress-fill");
    c.pct = el("span", "ih-pct");
    c.bar.append(c.fill);
    c.progress.append(c.bar, c.pct);
    const button = (cls, text, title, action) => {
      const b = el("button", cls, text);
      b.title = title;
      b.onclick = () => action();
      c.actions.append(b);
      return b;
    };
    c.open = button("ih-open", "notebook", "save the executed notebook in jobs/ and open it", () => {
      let w = null;
      try { w = window.open("about:blank", "_blank"); } catch (e) { w = null; }
      pending.set(id, w);
      model.send({ action: "open", id });
    });
    c.log = button("ih-show-log", "log", "show the log", () => model.send({ action: "log", id }));
    c.cancel = button("ih-cancel", "cancel", "stop this job", () => model.send({ action: "cancel", id }));
    c.rerun = button("ih-rerun", "rerun", "run again with exactly the same inputs", () => model.send({ action: "rerun", id }));
    tr.cells_ = c;
    return tr;
  }

  function drawRows() {
    const rows = model.get("rows") || [];
    const links = model.get("links") || {};
    const seen = new Set();
    rows.forEach((r, i) => {
      let tr = trs.get(r.id);
      if (!tr) { tr = makeRow(r.id); trs.set(r.id, tr); }
      seen.add(r.id);
      const c = tr.cells_;
      c.workflow.textContent = r.workflow;
      c.cohort.textContent = r.cohort || "";
      c.user.textContent = r.mine ? "you" : r.user;
      c.badge.textContent = r.status;
      c.badge.className = "ih-badge ih-s-" + r.status;
      c.badge.title = r.reason || "";
      c.reason.textContent = r.reason && r.reason !== r.status ? r.reason : "";
      const pct = Math.round(100 * (r.progress || 0));
      c.fill.style.width = pct + "%";
      c.bar.dataset.progress = String(pct);
      c.bar.className = "ih-progress ih-p-" + r.status;
      c.pct.textContent = pct + "%";
      c.submitted.textContent = clock(r.submitted);
      c.ended.textContent = clock(r.ended);
      const active = ACTIVE.has(r.status);
      c.cancel.style.display = active && r.mine ? "" : "none";
      c.rerun.style.display = active ? "none" : "";
      c.open.disabled = r.status === "queued";
      tr.classList.toggle("ih-active", active);
      if (links[r.id]) {
        if (!c.a) { c.a = el("a", "ih-link"); c.a.target = "_blank"; c.link.append(c.a); }
        c.a.href = labUrl(lab.base, links[r.id]);
        c.a.textContent = links[r.id];
      }
      if (tbody.children[i] !== tr) tbody.insertBefore(tr, tbody.children[i] || null);
    });
    for (const [id, tr] of trs) if (!seen.has(id)) { tr.remove(); trs.delete(id); }
    empty.style.display = rows.length ? "none" : "";
    table.style.display = rows.length ? "" : "none";
    refreshed.textContent = model.get("refreshed") ? `updated ${model.get("refreshed")}` : "";
    const shown = model.get("log_id");
    for (const [id, tr] of trs) tr.classList.toggle("ih-logged", id === shown);
  }

  function drawLog() {
    const id = model.get("log_id");
    logPanel.style.display = id ? "" : "none";
    if (!id) return;
    const r = (model.get("rows") || []).find((x) => x.id === id);
    logTitle.textContent = `log of job ${id.slice(0, 8)}` + (r ? ` (${r.workflow}, ${r.status})` : "");
    const atEnd = logText.scrollTop + logText.clientHeight >= logText.scrollHeight - 4;
    logText.textContent = model.get("log_text") || "(nothing logged yet)";
    if (atEnd) logText.scrollTop = logText.scrollHeight;
    const stored = model.get("stored") || [];
    storedList.replaceChildren(...(stored.length ? [el("span", "", "stored in the archive: ")] : []),
      ...stored.map((s) => {
        const a = el("a", "ih-stored-link", `${s.description || s.series_uid} (${s.modality || "?"})`);
        a.href = s.viewer; a.target = "_blank"; a.rel = "noopener";
        a.title = "open in the browser viewer (OHIF), with its series";
        return a;
      }));
  }

  function onCustom(msg) {
    if (!msg || !pending.has(msg.id)) return; // another view of this widget asked
    const w = pending.get(msg.id);
    pending.delete(msg.id);
    if (msg.event === "opened") {
      const url = labUrl(lab.base, msg.path);
      if (w && !w.closed) w.location.href = url; else window.open(url, "_blank");
    } else if (w && !w.closed) {
      w.close();
    }
  }

  const handlers = [
    ["change:workflows", drawWorkflows], ["change:workflow", drawWorkflows],
    ["change:fields", drawFields], ["change:cohort", drawCohort],
    ["change:message", drawMessage], ["change:error", drawMessage], ["change:busy", drawMessage],
    ["change:rows", drawRows], ["change:links", drawRows], ["change:refreshed", drawRows],
    ["change:log_id", drawRows], ["change:log_id", drawLog], ["change:log_text", drawLog],
    ["change:stored", drawLog],
    ["change:rows", drawLog], ["msg:custom", onCustom],
  ];
  for (const [ev, fn] of handlers) model.on(ev, fn);
  drawWorkflows(); drawFields(); drawMessage(); drawRows(); drawLog();

  // while a job is active the kernel polls; otherwise ask now and then, but
  // not forever: a tab left open must not keep an idle server busy
  let touched = Date.now();
  const touch = () => { touched = Date.now(); };
  root.addEventListener("pointerdown", touch);
  root.addEventListener("keydown", touch);
  const timer = setInterval(() => {
    if (document.hidden || Date.now() - touched > IDLE_FOR_MS) return;
    const rows = model.get("rows") || [];
    if (!rows.some((r) => ACTIVE.has(r.status))) model.send({ action: "refresh" });
  }, IDLE_REFRESH_MS);

  return () => {
    clearInterval(timer);
    root.removeEventListener("pointerdown", touch);
    root.removeEventListener("keydown", touch);
    for (const [ev, fn] of handlers) model.off(ev, fn);
  };
}

export default { render };
