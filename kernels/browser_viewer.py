"""Links to the hub's browser viewer (OHIF at ``/services/viewer/``) from a
notebook: ``view_in_browser(series_or_study)``.

Light at import: it needs the data service only to find a series' study.
The link shown in JupyterLab is relative to the hub (``/services/viewer/...``),
so it opens on whatever address the browser reached JupyterLab by; the
printed text is a whole address where the hub set ``IMAGINGHUB_VIEWER_URL``
in the server's environment.
"""

from __future__ import annotations

import html
import os
from urllib.parse import quote, urlencode

VIEWER_PATH = "/services/viewer"
ENV_VIEWER_URL = "IMAGINGHUB_VIEWER_URL"


class BrowserLink:
    """A link to the browser viewer: shown as a link in JupyterLab (opens a
    new tab), printed as its address."""

    def __init__(self, path: str, label: str):
        self.path = path
        self.label = label

    @property
    def url(self) -> str:
        """The address: whole where the site set IMAGINGHUB_VIEWER_URL, else
        relative to the hub."""
        base = os.environ.get(ENV_VIEWER_URL, "").rstrip("/")
        if base.endswith(VIEWER_PATH):
            return base + self.path[len(VIEWER_PATH):]
        return self.path

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"{self.label}: {self.url}"

    def _repr_html_(self) -> str:
        return (f'<a href="{html.escape(self.path)}" target="_blank" rel="noopener">'
                f'{html.escape(self.label)} &#8599;</a>')


def study_path(study: str, series: str | None = None) -> str:
    """The viewer's address of a study, opened on ``series`` if given."""
    args = {"StudyInstanceUIDs": study}
    if series:
        args["initialSeriesInstanceUID"] = series
    return f"{VIEWER_PATH}/viewer?{urlencode(args)}"


def cohort_path(project: str, ref: str) -> str:
    """The viewer's study list of a saved cohort (``name@version``)."""
    return f"{VIEWER_PATH}/cohorts/{quote(project)}/{quote(ref, safe='@')}/"


def view_in_browser(what, *, pacs=None) -> BrowserLink:
    """A link that opens ``what`` in the hub's browser viewer (OHIF): a
    series or study UID, a loaded ``Volume`` or ``Images``, a catalog row
    or search result (its first row), or a saved ``Cohort`` (its studies
    as the study list).

    >>> view_in_browser("1.2.826.0.1.3680043.8.498.1...")  # doctest: +SKIP
    """
    from .catalog import Cohort

    if isinstance(what, Cohort):
        if not what.version:
            raise ValueError(f"cohort {what.project}/{what.name} is not saved: save it first "
                             "(cohort.save()), the viewer shows saved cohorts")
        return BrowserLink(cohort_path(what.project, what.ref),
                           f"cohort {what.project}/{what.ref} in the viewer")
    metadata = getattr(what, "metadata", None)
    if isinstance(metadata, dict) and metadata.get("StudyInstanceUID"):
        series = metadata.get("SeriesInstanceUID")
        return BrowserLink(study_path(metadata["StudyInstanceUID"], series),
                           _label(metadata.get("SeriesDescription") or series))
    row = _first_row(what)
    if row is not None:
        return BrowserLink(study_path(row["study_uid"], row.get("series_uid")),
                           _label(row.get("series_description") or row.get("series_uid")))
    if not isinstance(what, str) or not what.strip():
        raise TypeError("view_in_browser takes a series or study UID, a Volume or Images "
                        "from pacs, a catalog row, or a saved Cohort; got "
                        f"{type(what).__name__}")
    return _from_uid(what.strip(), pacs)


def _label(what) -> str:
    return f"{what} in the viewer" if what else "open in the viewer"


def _first_row(what) -> dict | None:
    """A catalog row (a dict or pandas Series) or a search's first row."""
    if hasattr(what, "iloc") and hasattr(what, "columns"):  # a DataFrame
        if what.empty:
            raise ValueError("the search found no series: nothing to open")
        what = what.iloc[0]
    if hasattr(what, "to_dict"):
        what = what.to_dict()
    if isinstance(what, dict) and what.get("study_uid"):
        return what
    return None


def _from_uid(uid: str, pacs) -> BrowserLink:
    from .errors import NotFound

    if pacs is None:
        from .dicomweb import PACS

        pacs = PACS.from_env()
    try:
        record = pacs.find_series(uid)
    except NotFound:
        record = None
    if record is not None:
        from .query import first_value

        return BrowserLink(study_path(first_value(record, "0020000D"), uid),
                           _label(first_value(record, "0008103E") or uid))
    if pacs.search_for_studies(search_filters={"StudyInstanceUID": uid}):
        return BrowserLink(study_path(uid), f"study {uid} in the viewer")
    raise ValueError(f"{uid} is no series or study of your projects: check the UID "
                     "(catalog.search() lists what you may see)")


def launcher_entry() -> dict:
    """JupyterLab's launcher card "Imaging viewer" (a jupyter-server-proxy
    entry point): it opens the hub's viewer in a new tab. The card's address
    is the server's base URL and ``path_info``, so ``../../services/viewer/``
    (from ``/user/NAME/``) is the viewer; nothing runs for it. The proxy
    route jupyter-server-proxy makes at ``/user/NAME/imaging-viewer/`` leads
    to a socket that cannot exist, so it only ever answers an error."""
    from pathlib import Path

    return {
        "unix_socket": "/dev/null/imaginghub-viewer",  # never a socket: see above
        "new_browser_tab": True,
        "launcher_entry": {
            "title": "Imaging viewer",
            "path_info": "../.." + VIEWER_PATH + "/",
            "icon_path": str(Path(__file__).with_name("viewer-icon.svg")),
            "category": "Notebook",  # where JupyterLab shows an entry's icon
        },
    }
