"""``jobs_widget()``: run workflows and follow your jobs, in a notebook.

The widget lists your jobs and those others shared with your projects,
newest first, each with its status, a progress bar and actions: open the
executed notebook (saved as ``jobs/<id>-<workflow>.ipynb`` in your server's
root folder and opened in a new JupyterLab tab, with a link beside the job),
show the log (refreshed while the job runs), cancel (jobs still queued or
running) and rerun (exactly the recorded inputs). A form above the list runs
a workflow: its inputs are made from the notebook's parameters (``str``,
``int``, ``float``, ``bool``, ``list[str]`` as comma-separated values, other
types as Python or JSON literals), with the defaults filled in and each
parameter's help beside it; a cohort given to the widget fills the
workflow's ``cohort``, ``project`` and ``series`` parameters.

Only parameters changed from their defaults are submitted. What the service
refuses (a parameter of the wrong type, say) is shown in the widget as the
service words it, and nothing is queued. Text that does not read as the
field's type is passed on as text, so that the service's check, the one
every client meets, is the one that answers.

The widget does no I/O of its own: it calls the kernel's ``jobs`` client. A
background thread polls the service about once a second while one of the
listed jobs is queued or running, and stops when none is; the kernel is
never blocked waiting for a job. When nothing is active the browser asks
for a refresh every 5 s (so that jobs submitted elsewhere appear), for ten
minutes after the widget was last used, so that a tab left open does not
keep an idle server busy.

The executed notebook is saved under the root folder that the JupyterLab
page reports (``serverRoot``), which is where ``lab/tree/...`` paths start;
outside JupyterLab it goes to the kernel's working folder.
"""

from __future__ import annotations

import ast
import json
import logging
import math
import os
import threading
import time
from pathlib import Path

import anywidget
import traitlets as t

from ._assets import esm

log = logging.getLogger(__name__)

ACTIVE = ("queued", "running")
POLL_SECONDS = 1.0  # while some job is active
LIMIT = 50  # jobs listed
LOG_CHARS = 200_000  # the end of a long log is what the panel shows
JOBS_FOLDER = "jobs"  # under the server's root: where output notebooks are saved
# names that jobs.submit() takes for itself: a workflow parameter cannot have them
RESERVED = ("workflow", "shared", "time_limit")


# -- parameters: types, defaults, the form's text and back --------------------------------
def field_kind(type_name: str) -> tuple[str, str, bool]:
    """``(kind, item kind, optional)`` of a parameter's annotated type as
    papermill names it: kind is str, int, float, bool, list or json (any
    other type, or none, read as a Python/JSON literal)."""
    name = (type_name or "").replace(" ", "").lower()
    optional = False
    if name.startswith("optional[") and name.endswith("]"):
        name, optional = name[9:-1], True
    elif name.endswith("|none"):
        name, optional = name[:-5], True
    elif name.startswith("none|"):
        name, optional = name[5:], True
    if name in ("str", "int", "float", "bool"):
        return name, "", optional
    if name.startswith(("list", "tuple")):
        inner = name[name.find("[") + 1:-1] if "[" in name else ""
        return "list", inner if inner in ("str", "int", "float", "bool") else "str", optional
    return "json", "", optional


def default_text(type_name: str, source: str):
    """The form's initial value for a parameter whose default is the Python
    source ``source`` (as papermill reports it): text, or a bool for a
    checkbox. A default that is an expression shows as its source."""
    kind, _, _ = field_kind(type_name)
    try:
        value = ast.literal_eval(source) if source not in (None, "") else None
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return False if kind == "bool" else str(source)
    if kind == "bool":
        return bool(value)
    if value is None:
        return ""
    if kind == "str":
        return value if isinstance(value, str) else str(source)
    if kind in ("int", "float"):
        return repr(value)
    if kind == "list":
        if isinstance(value, (list, tuple)):
            return ", ".join(str(v) for v in value)
        return str(source)
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return str(source)


def _scalar(kind: str, text: str):
    """``text`` as ``kind``; the text itself when it does not read as one
    (the service then says what it expected)."""
    if kind == "int":
        try:
            return int(text.strip().replace("_", ""))
        except ValueError:
            return text
    if kind == "float":
        try:
            value = float(text.strip())
        except ValueError:
            return text
        return value if math.isfinite(value) else text
    if kind == "bool":
        low = text.strip().lower()
        return {"true": True, "1": True, "yes": True, "false": False, "0": False,
                "no": False}.get(low, text)
    return text


def parse_value(type_name: str, value):
    """A form value (text, or bool from a checkbox) as the JSON value the
    parameter takes: numbers read as numbers, ``list[...]`` split at commas
    (blanks dropped), other types read as Python or JSON literals, an empty
    field of an ``Optional`` type as None."""
    kind, inner, optional = field_kind(type_name)
    if isinstance(value, bool):
        return value
    text = "" if value is None else str(value)
    if optional and not text.strip() and kind != "str":
        return None
    if kind == "str":
        return text
    if kind in ("int", "float", "bool"):
        return _scalar(kind, text)
    if kind == "list":
        return [_scalar(inner or "str", v.strip()) for v in text.split(",") if v.strip()]
    stripped = text.strip()
    for reader in (json.loads, ast.literal_eval):
        try:
            value = reader(stripped)
            json.dumps(value)
            return value
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
    return text


def form_fields(spec: dict, cohort: dict | None = None) -> list[dict]:
    """The form's fields for a workflow (``jobs.workflow(name)``): name, type,
    kind, help, the default's text and the value to show (the default, or
    the cohort's reference, project and series for those parameters)."""
    cohort = cohort or {}
    prefill = {}
    if cohort.get("ref"):
        prefill["cohort"] = cohort["ref"]
        if cohort.get("project"):
            prefill["project"] = cohort["project"]
    elif cohort.get("series"):
        prefill["series"] = ", ".join(cohort["series"])
    fields = []
    for name, p in (spec.get("parameters") or {}).items():
        kind, _, _ = field_kind(p.get("type", ""))
        default = default_text(p.get("type", ""), p.get("default", ""))
        value = prefill.get(name, default)
        fields.append({"name": name, "type": p.get("type") or "any", "kind": kind,
                       "help": p.get("help") or "", "default": default, "value": value})
    return fields


def changed_parameters(fields: list[dict], values: dict) -> dict:
    """The parameters to submit: those whose form value differs from the
    default's, read as their types."""
    out = {}
    for f in fields:
        if f["name"] not in values:
            continue
        value = values[f["name"]]
        if f["kind"] == "bool":
            value = bool(value)
            if value == bool(f["default"]):
                continue
        elif str(value) == str(f["default"]):
            continue
        out[f["name"]] = parse_value(f["type"], value)
    return out


def as_cohort(cohort=None, series=None) -> dict:
    """``{"ref", "project", "series"}`` of a cohort given as a reference
    (``"lung-ct@3"`` or ``"project/lung-ct@3"``), a ``Cohort``, a dict with
    those keys, or a list of SeriesInstanceUIDs (``series``)."""
    if cohort is None and not series:
        return {}
    if series:
        return {"ref": "", "project": "", "series": [str(s) for s in series]}
    if isinstance(cohort, dict):
        return {"ref": str(cohort.get("ref") or ""), "project": str(cohort.get("project") or ""),
                "series": [str(s) for s in cohort.get("series") or []]}
    if isinstance(cohort, str):
        project, _, ref = cohort.rpartition("/")
        return {"ref": ref, "project": project, "series": []}
    if isinstance(cohort, (list, tuple)):
        return {"ref": "", "project": "", "series": [str(s) for s in cohort]}
    ref = getattr(cohort, "ref", None)
    if ref:
        return {"ref": str(ref), "project": str(getattr(cohort, "project", "") or ""),
                "series": []}
    raise TypeError(f"cohort must be a reference such as 'lung-ct@3', a Cohort or a list of "
                    f"SeriesInstanceUIDs, not {type(cohort).__name__}")


def _clean(value):
    """A DataFrame cell as JSON (NaN and NaT as None)."""
    if value is None:
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if type(value).__module__ == "numpy":
        return value.item()
    return value


def job_rows(frame, me: str = "") -> list[dict]:
    """The list's rows from ``jobs.list()``'s DataFrame."""
    rows = []
    records = frame.to_dict("records") if hasattr(frame, "to_dict") else list(frame)
    for r in records:
        r = {k: _clean(v) for k, v in r.items()}
        progress = r.get("progress") or 0.0
        rows.append({"id": str(r["id"]), "workflow": r.get("workflow") or "",
                     "user": r.get("user") or "", "mine": not me or r.get("user") == me,
                     "status": r.get("status") or "", "progress": min(1.0, max(0.0, progress)),
                     "submitted": r.get("submitted") or "", "ended": r.get("ended") or "",
                     "cohort": r.get("cohort") or "", "reason": r.get("reason") or ""})
    return rows


def stored_series(job) -> list[dict]:
    """The series a job stored in the archive (its runs' ``stored-series.jsonl``,
    see :mod:`imaginghub.hub.services.jobs.child`), each with its browser
    viewer path (``viewer``), in the order stored."""
    from ..kernels.browser_viewer import study_path
    from ..kernels.dicomweb import STORED_FILE

    found: dict[str, dict] = {}
    for artifact in job.artifacts():
        if artifact["path"].rsplit("/", 1)[-1] != STORED_FILE:
            continue
        for line in job.read(artifact["path"]).decode(errors="replace").splitlines():
            try:
                item = json.loads(line)
                found.setdefault(item["series_uid"], {
                    "series_uid": item["series_uid"], "modality": item.get("modality", ""),
                    "description": item.get("description", ""),
                    "viewer": study_path(item["study_uid"], item["series_uid"])})
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a killed job
    return list(found.values())


class JobsWidget(anywidget.AnyWidget):
    """Your jobs with live status, and a form to run a workflow (see the
    module's docstring). ``jobs`` is the kernel's client (default: the
    preloaded ``jobs``); ``workflow`` the one the form shows first;
    ``cohort`` a cohort to fill in (reference, ``Cohort`` or UIDs)."""

    _esm = esm("jobs.js")
    _css = Path(__file__).with_name("jobs.css")

    workflows = t.List().tag(sync=True)  # [{name, title, description, per_series}]
    workflow = t.Unicode("").tag(sync=True)  # the form's workflow (the browser sets it)
    fields = t.List().tag(sync=True)  # the form's inputs for it (see form_fields)
    cohort = t.Dict().tag(sync=True)  # {"ref", "project", "series"} to fill in
    rows = t.List().tag(sync=True)  # the jobs (see job_rows)
    me = t.Unicode("").tag(sync=True)
    message = t.Unicode("").tag(sync=True)
    error = t.Bool(False).tag(sync=True)  # whether the message is an error
    busy = t.Bool(False).tag(sync=True)  # submitting
    log_id = t.Unicode("").tag(sync=True)  # the job whose log is shown ("" none)
    log_text = t.Unicode("").tag(sync=True)
    links = t.Dict().tag(sync=True)  # job id: the output notebook's path from the root
    stored = t.List().tag(sync=True)  # the shown job's stored series (see stored_series)
    lab = t.Dict().tag(sync=True)  # {"base", "root"} of the JupyterLab page (browser)
    refreshed = t.Unicode("").tag(sync=True)  # time of the last refresh (ISO)

    def __init__(self, jobs=None, *, workflow: str | None = None, cohort=None, series=None,
                 poll_seconds: float = POLL_SECONDS, limit: int = LIMIT, **kwargs):
        if jobs is None:
            from ..kernels.preload import jobs as default_jobs

            jobs = default_jobs
        self.jobs = jobs
        self.poll_seconds = poll_seconds
        self.limit = limit
        self._lock = threading.RLock()
        self._specs: dict[str, dict] = {}
        self._thread: threading.Thread | None = None
        self._closed = False
        self._last_refresh = 0.0
        super().__init__(**kwargs)
        self.me = os.environ.get("JUPYTERHUB_USER", "")
        self.cohort = as_cohort(cohort, series)
        self.observe(self._on_workflow, names=["workflow"])
        self.on_msg(self._on_browser)
        self._load_workflows(workflow)
        self.refresh()

    # -- the form ---------------------------------------------------------------------
    def _load_workflows(self, preferred: str | None) -> None:
        try:
            frame = self.jobs.workflows()
        except Exception as e:  # shown where the user acts
            self._say(f"could not list the workflows: {e}", error=True)
            return
        records = frame.to_dict("records") if hasattr(frame, "to_dict") else list(frame)
        self.workflows = [{"name": str(r["name"]), "title": str(r.get("title") or r["name"]),
                           "description": str(r.get("description") or ""),
                           "per_series": bool(r.get("per_series"))} for r in records]
        names = [w["name"] for w in self.workflows]
        if preferred and preferred not in names:
            self._say(f"no workflow called {preferred!r}; the workflows are "
                      f"{', '.join(names) or '(none)'}", error=True)
            preferred = None
        if preferred is None and self.cohort and names:
            # a cohort was given: the first workflow that reads one
            preferred = next((n for n in names if self._takes_cohort(n)), names[0])
        chosen = preferred or (names[0] if names else "")
        if chosen == self.workflow:
            self._show_form(chosen)
        else:
            self.workflow = chosen

    def _spec(self, name: str) -> dict:
        if name not in self._specs:
            self._specs[name] = self.jobs.workflow(name)
        return self._specs[name]

    def _takes_cohort(self, name: str) -> bool:
        try:
            params = self._spec(name).get("parameters") or {}
        except Exception:
            return False
        return "cohort" in params or "series" in params

    def _on_workflow(self, change) -> None:
        with self._lock:
            self._show_form(change["new"])

    def _show_form(self, name: str) -> None:
        if not name:
            self.fields = []
            return
        try:
            self.fields = form_fields(self._spec(name), self.cohort)
        except Exception as e:
            self.fields = []
            self._say(f"could not read workflow {name}: {e}", error=True)

    def set_cohort(self, cohort=None, series=None) -> None:
        """Fill the form with another cohort (as for the constructor), and
        show the first workflow that reads one if the current one does not."""
        self.cohort = as_cohort(cohort, series)
        if self.cohort and self.workflow and not self._takes_cohort(self.workflow):
            names = [w["name"] for w in self.workflows]
            better = next((n for n in names if self._takes_cohort(n)), None)
            if better:
                self.workflow = better
                return
        self._show_form(self.workflow)

    def submit(self, values: dict | None = None, *, shared: bool = False):
        """Queue the form's workflow with ``values`` (name: form text or bool;
        missing ones keep the form's current values). Returns the job, or
        None when the service refused it (its reason is the message)."""
        name = self.workflow
        if not name:
            self._say("choose a workflow first", error=True)
            return None
        given = {f["name"]: f["value"] for f in self.fields}
        given.update(values or {})
        params = changed_parameters(self.fields, given)
        clash = sorted(set(params) & set(RESERVED))
        if clash:
            self._say(f"workflow {name} has a parameter called {', '.join(clash)}, which the "
                      "jobs client keeps for itself: submit it with the REST API", error=True)
            return None
        self.busy = True
        try:
            job = self.jobs.submit(name, shared=shared, **params)
        except ValueError as e:  # the service's 400: its words, nothing queued
            self._say(str(e), error=True)
            return None
        except Exception as e:
            self._say(f"submitting {name} failed: {e}", error=True)
            return None
        finally:
            self.busy = False
        self._say(f"job {job.id} queued: {name}" + (f" on {params['cohort']}"
                                                   if params.get("cohort") else ""))
        self.refresh()
        return job

    # -- the list ---------------------------------------------------------------------
    def refresh(self) -> bool:
        """Read the jobs (and the shown log) again; whether any is active.
        Starts the background poller when one is."""
        with self._lock:
            active = self._refresh_locked()
            self._ensure_polling(active)
            return active

    def _refresh_locked(self) -> bool:
        self._last_refresh = time.monotonic()
        try:
            rows = job_rows(self.jobs.list(limit=self.limit), self.me)
        except Exception as e:
            self._say(f"could not list the jobs: {e}", error=True)
            return any(r["status"] in ACTIVE for r in self.rows)
        was_active = {r["id"] for r in self.rows if r["status"] in ACTIVE}
        with self.hold_sync():
            self.rows = rows
            self.refreshed = time.strftime("%H:%M:%S")
        shown = next((r for r in rows if r["id"] == self.log_id), None)
        if shown is not None and (shown["status"] in ACTIVE or shown["id"] in was_active):
            self._load_log(shown["id"])
        return any(r["status"] in ACTIVE for r in rows)

    def _ensure_polling(self, active: bool) -> None:
        if active and self._thread is None and not self._closed:
            self._thread = threading.Thread(target=self._poll, name="jobs-widget-poll",
                                            daemon=True)
            self._thread.start()

    def _poll(self) -> None:
        """The background poller: once a second while a job is active."""
        failures = 0
        while True:
            time.sleep(min(10.0, self.poll_seconds * (1 + failures)))
            with self._lock:
                if self._closed:
                    self._thread = None
                    return
                try:
                    active = self._refresh_locked()
                    failures = 0
                except Exception:  # never let the thread die with the lock state unknown
                    log.exception("refreshing the jobs widget failed")
                    active, failures = True, min(failures + 1, 9)
                if not active:
                    self._thread = None
                    return

    def close(self) -> None:
        """Stop polling and close the widget."""
        with self._lock:
            self._closed = True
        super().close()

    # -- per job ----------------------------------------------------------------------
    def _load_log(self, job_id: str) -> None:
        job = self.jobs.get(job_id)
        text = job.logs()
        if len(text) > LOG_CHARS:
            text = "… (the start is left out)\n" + text[-LOG_CHARS:]
        self.log_text = text
        self.stored = stored_series(job)

    def show_log(self, job_id: str) -> None:
        """Show ``job_id``'s log in the panel (refreshed while it runs)."""
        with self._lock:
            self.log_id = job_id
            self._load_log(job_id)

    def cancel(self, job_id: str) -> None:
        """Cancel a queued or running job (the service stops its process)."""
        job = self.jobs.get(job_id).cancel()
        self._say(f"job {job_id} cancelled" if job.status == "cancelled"
                  else f"job {job_id} is being stopped (it was {job.status})")
        self.refresh()

    def rerun(self, job_id: str):
        """A new job with exactly the recorded inputs of ``job_id``."""
        new = self.jobs.get(job_id).rerun()
        self._say(f"job {new.id} queued: a rerun of {job_id} with the same inputs")
        self.refresh()
        return new

    def root(self) -> Path:
        """The folder that JupyterLab's paths start from: the server's root
        as the browser reports it, else the kernel's working folder."""
        root = (self.lab or {}).get("root") or ""
        if root:
            p = Path(os.path.expanduser(root))
            if p.is_dir():
                return p
        return Path.cwd()

    def save_notebook(self, job_id: str) -> str:
        """Save the job's executed notebook as ``jobs/<id>-<workflow>.ipynb``
        under :meth:`root`; returns that path (from the root, with /)."""
        job = self.jobs.get(job_id)
        rel = f"{JOBS_FOLDER}/{job.id}-{job.workflow}.ipynb"
        target = self.root() / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        from ..kernels.errors import NotFound

        try:
            job.output_notebook(target)
        except NotFound:
            raise NotFound(f"job {job_id} has no output notebook yet ({job.status}"
                           + (": a per-series job keeps one per series" if job.per_series
                              else "") + ")") from None
        self.links = {**self.links, job_id: rel}
        return rel

    def _on_browser(self, _, content, buffers) -> None:
        with self._lock:  # one thing at a time with the poller
            self._act(content)

    def _act(self, content: dict) -> None:
        action = content.get("action")
        job_id = str(content.get("id") or "")
        try:
            if action == "submit":
                self.submit(content.get("values") or {}, shared=bool(content.get("shared")))
            elif action == "refresh":
                if time.monotonic() - self._last_refresh > 0.8 * self.poll_seconds:
                    self.refresh()
            elif action == "log":
                self.show_log(job_id)
            elif action == "hide_log":
                self.log_id, self.log_text, self.stored = "", "", []
            elif action == "cancel":
                self.cancel(job_id)
            elif action == "rerun":
                self.rerun(job_id)
            elif action == "open":
                try:
                    path = self.save_notebook(job_id)
                except Exception:
                    self.send({"event": "open_failed", "id": job_id})
                    raise
                self.send({"event": "opened", "id": job_id, "path": path})
                self._say(f"saved {path}")
        except Exception as e:  # shown in the widget, where the user acts
            what = {"log": "showing the log", "open": "opening the notebook"}.get(action, action)
            self._say(f"{what} of job {job_id} failed: {e}" if job_id else f"{what} failed: {e}",
                      error=True)

    def _say(self, text: str, error: bool = False) -> None:
        with self._lock, self.hold_sync():
            self.message = text
            self.error = error


def jobs_widget(jobs=None, *, workflow: str | None = None, cohort=None, series=None,
                **kwargs) -> JobsWidget:
    """Your jobs with live status, logs, cancel, rerun and the output
    notebooks, and a form to run a workflow (see :class:`JobsWidget`).

    >>> jobs_widget()                                  # everything
    >>> jobs_widget(workflow="cohort-qc", cohort="lung-ct@3")
    """
    return JobsWidget(jobs, workflow=workflow, cohort=cohort, series=series, **kwargs)
