"""``cohort_builder()``: explore the catalog and make cohorts, in a notebook.

Facet panels show the counts as bars over the current filter (click a bar
to filter on that value, click again to drop it; values of one field are
ORed, fields ANDed), filter chips, a search box, date and number ranges, the
total, a page of results with thumbnails, selection, and actions: save the
selection (or the whole query) as a cohort or a new version of one, open
a selected series in the viewer, and "run workflow": the jobs widget below
the builder with the cohort filled in (see :meth:`CohortBuilder.run_workflow`).
A "cohorts" tab lists the project's shared cohorts with versions, authors and
sizes, each with its own "run workflow".

Every change is one catalog query (the kernel asks the data service; on the
IDC index that is tens of milliseconds); only a page of rows and its
thumbnails travel to the browser.
"""

from __future__ import annotations

from pathlib import Path

import anywidget
import traitlets as t

from ..kernels.browser_viewer import cohort_path, study_path

from ._assets import esm

FACETS = ["collection", "modality", "body_part", "manufacturer", "patient_sex"]
RANGES = {"study_date": "date", "patient_age": "number", "instances": "number"}
PAGE = 24


class CohortBuilder(anywidget.AnyWidget):
    _esm = esm("cohort_builder.js")
    _css = Path(__file__).with_name("cohort_builder.css")

    facet_fields = t.List(FACETS).tag(sync=True)
    range_fields = t.Dict(RANGES).tag(sync=True)
    query = t.Dict().tag(sync=True)  # {"filters", "ranges", "text"}, set by the browser
    offset = t.Int(0).tag(sync=True)
    page_size = t.Int(PAGE).tag(sync=True)
    total = t.Int(0).tag(sync=True)
    facets = t.Dict().tag(sync=True)
    rows = t.List().tag(sync=True)
    thumbs = t.List().tag(sync=True)  # PNG bytes per row ("" when there is none)
    selected = t.List().tag(sync=True)
    projects = t.List().tag(sync=True)
    cohorts = t.List().tag(sync=True)
    message = t.Unicode().tag(sync=True)
    busy = t.Bool(False).tag(sync=True)
    took_ms = t.Float(0).tag(sync=True)

    def __init__(self, catalog=None, pacs=None, projects=None, jobs=None, **kwargs):
        from ..kernels.preload import catalog as default_catalog, pacs as default_pacs

        self.catalog = catalog or default_catalog
        self.pacs = pacs or default_pacs
        self.jobs_client = jobs  # for "run workflow" (None: the kernel's jobs)
        self.jobs_widget = None  # the jobs widget, once "run workflow" opened it
        self._saved: dict | None = None  # the cohort saved last: {ref, project}
        self._saved_selection: set[str] = set()  # the selection when it was saved
        super().__init__(**kwargs)
        import ipywidgets

        self.output = ipywidgets.Output()  # where "open in viewer" shows the series
        self.jobs_output = ipywidgets.Output()  # where "run workflow" shows the jobs widget
        self.projects = sorted(projects) if projects else self._my_projects()
        self.observe(self._refresh, names=["query", "offset"])
        self.on_msg(self._on_browser)
        self._refresh()
        self._load_cohorts()

    def _ipython_display_(self):
        from IPython.display import display
        from ipywidgets import VBox

        display(VBox([self, self.jobs_output, self.output]))

    # -- queries ------------------------------------------------------------
    def _body(self) -> dict:
        q = self.query or {}
        return {"filters": q.get("filters") or {}, "ranges": q.get("ranges") or {},
                "text": q.get("text") or ""}

    def _refresh(self, change=None) -> None:
        self.busy = True
        try:
            answer = self.catalog.query(**self._body(), facets=self.facet_fields,
                                        limit=self.page_size, offset=self.offset)
        except Exception as e:  # shown in the widget, where the user acts
            self.message = f"the query failed: {e}"
            self.busy = False
            return
        with self.hold_sync():
            self.total = answer["total"]
            self.facets = answer["facets"]
            self.rows = [{**r, "viewer": study_path(r["study_uid"], r["series_uid"])}
                         if r.get("study_uid") else r for r in answer["rows"]]
            self.took_ms = float(answer.get("took_ms") or 0)
            self.thumbs = [self._thumbnail(r["series_uid"]) for r in answer["rows"]]
            self.busy = False
            if change is not None and change["name"] == "query":
                self.message = ""

    def _thumbnail(self, series_uid: str) -> bytes:
        try:
            return self.catalog.thumbnail(series_uid) or b""
        except Exception:  # a missing picture must not break the page
            return b""

    def _my_projects(self) -> list[str]:
        try:
            return self.catalog.projects()
        except Exception:
            return []

    def _load_cohorts(self) -> None:
        try:
            frame = self.catalog.cohorts()
            self.cohorts = [{**c, "viewer": cohort_path(c["project"], c["ref"])}
                            for c in frame.astype(str).to_dict("records")]
        except Exception as e:
            self.message = f"could not list the cohorts: {e}"

    # -- actions --------------------------------------------------------------
    def _on_browser(self, _, content, buffers) -> None:
        action = content.get("action")
        try:
            if action == "save":
                self._save(content["name"], content["project"], content.get("what", "selection"))
            elif action == "add":
                self._add(content["name"], content["project"])
            elif action == "view":
                self._view(content["series_uid"])
            elif action == "cohorts":
                self._load_cohorts()
            elif action == "run":
                self.run_workflow(content.get("cohort") or None, content.get("project") or None)
        except Exception as e:
            self.message = f"{action} failed: {e}"

    def _save(self, name: str, project: str, what: str) -> None:
        if what == "selection":
            if not self.selected:
                self.message = "select series first (click their rows), or save the query"
                return
            cohort = self.catalog.new_cohort(name, project, series=list(self.selected))
        else:
            from ..kernels.catalog import _as_kwargs

            cohort = self.catalog.new_cohort(name, project, **_as_kwargs(self._body()))
        cohort.save(note=f"from the cohort builder ({what})")
        self._remember(cohort)
        self.message = f"saved {cohort.project}/{cohort.ref}: {len(cohort)} series"
        self._load_cohorts()

    def _add(self, name: str, project: str) -> None:
        """The selection added to the latest version of a cohort: a new version."""
        if not self.selected:
            self.message = "select series first (click their rows)"
            return
        try:
            current = self.catalog.cohort(name, project=project)
        except Exception:
            self.message = f"no cohort {name!r} in {project}: save it first"
            return
        union = sorted(set(current.series) | set(self.selected))
        cohort = self.catalog.new_cohort(name, project, series=union)
        cohort.save(note=f"added {len(union) - len(current.series)} series to "
                         f"{current.ref} in the cohort builder")
        self._remember(cohort)
        self.message = f"saved {cohort.project}/{cohort.ref}: {len(cohort)} series"
        self._load_cohorts()

    def _remember(self, cohort) -> None:
        """The cohort just saved is what "run workflow" runs on, as long as the
        selection stays as it was."""
        self._saved = {"ref": cohort.ref, "project": cohort.project}
        self._saved_selection = set(self.selected)

    # -- run workflow -------------------------------------------------------------------
    def run_workflow(self, cohort: str | None = None, project: str | None = None):
        """Open the jobs widget below the builder with a cohort filled in:
        ``cohort`` (a reference such as ``"two-cts@2"``, with its ``project``)
        when given, else the cohort saved last while the selection is still
        the one saved, else the selected series by their UIDs (not a saved
        cohort: the message says so), else the cohort saved last. Returns the
        jobs widget (None when there is nothing to run on)."""
        selected = list(self.selected)
        if cohort:
            target = {"ref": cohort, "project": project or ""}
            note = f"cohort {project + '/' if project else ''}{cohort}"
        elif self._saved and (not selected or set(selected) == self._saved_selection):
            target = dict(self._saved)
            note = f"cohort {target['project']}/{target['ref']}"
        elif selected:
            target = {"series": selected}
            note = (f"the {len(selected)} selected series by their UIDs (the selection is not "
                    "saved as a cohort: save it to record a cohort version with the run)")
        else:
            self.message = ("nothing to run a workflow on: select series, or save a cohort, "
                            "or pick one in the cohorts tab")
            return None
        if self.jobs_widget is None:
            from IPython.display import display

            from .jobs import JobsWidget

            self.jobs_widget = JobsWidget(self.jobs_client, cohort=target)
            self.jobs_output.clear_output()
            with self.jobs_output:
                display(self.jobs_widget)
        else:
            self.jobs_widget.set_cohort(target)
        self.message = f"the form below runs a workflow on {note}"
        return self.jobs_widget

    def _view(self, series_uid: str) -> None:
        """The series in the viewer below: a volume's planes, or the frames
        of anything that is not one (radiographs, colour, cine)."""
        from ..kernels.errors import NotAVolume
        from .viewer import view

        self.message = f"loading {series_uid[-16:]} ..."
        try:
            shown = self.pacs.load_series(series_uid, progress=False)
        except NotAVolume:
            shown = self.pacs.load_images(series_uid, progress=False)
        self.output.clear_output()
        with self.output:
            from IPython.display import display

            display(view(shown))
        self.message = f"opened {shown.metadata.get('SeriesDescription') or series_uid}"


def cohort_builder(**kwargs) -> CohortBuilder:
    """The cohort builder on the site's catalog (see :class:`CohortBuilder`)."""
    return CohortBuilder(**kwargs)
