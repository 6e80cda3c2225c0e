"""Links to the browser viewer from a notebook (``view_in_browser``), the
launcher card's entry, and the record of what a job stored (which the jobs
widget links): no service needed."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import pandas as pd
import pytest
from pydicom.dataset import Dataset

from imaginghub.kernels import dicomweb
from imaginghub.kernels.browser_viewer import launcher_entry, view_in_browser
from imaginghub.kernels.catalog import Cohort
from imaginghub.kernels.errors import NotFound
from imaginghub.widgets.jobs import stored_series

STUDY, SERIES = "1.2.3.4", "1.2.3.4.5"


class Archive:
    """What view_in_browser asks of ``pacs``: one series in one study."""

    def find_series(self, uid):
        if uid != SERIES:
            raise NotFound(f"series {uid}: not found")
        return {"0020000D": {"vr": "UI", "Value": [STUDY]},
                "0008103E": {"vr": "LO", "Value": ["CT chest"]}}

    def search_for_studies(self, search_filters):
        return [{}] if search_filters["StudyInstanceUID"] == STUDY else []


def _args(link) -> dict:
    parts = urlsplit(link.path)
    assert parts.path == "/services/viewer/viewer"
    return {k: v[0] for k, v in parse_qs(parts.query).items()}


def test_a_series_opens_its_study_on_it():
    link = view_in_browser(SERIES, pacs=Archive())
    assert _args(link) == {"StudyInstanceUIDs": STUDY, "initialSeriesInstanceUID": SERIES}
    assert "CT chest" in repr(link)
    assert f'href="{link.path.replace("&", "&amp;")}"' in link._repr_html_()
    assert 'target="_blank"' in link._repr_html_()


def test_a_study_a_volume_and_a_catalog_row():
    assert _args(view_in_browser(STUDY, pacs=Archive())) == {"StudyInstanceUIDs": STUDY}

    class Loaded:
        metadata = {"StudyInstanceUID": STUDY, "SeriesInstanceUID": SERIES,
                    "SeriesDescription": "CT chest"}

    assert _args(view_in_browser(Loaded()))["initialSeriesInstanceUID"] == SERIES
    rows = pd.DataFrame([{"series_uid": SERIES, "study_uid": STUDY,
                          "series_description": "CT chest"}])
    assert _args(view_in_browser(rows))["StudyInstanceUIDs"] == STUDY
    assert _args(view_in_browser(rows.iloc[0]))["StudyInstanceUIDs"] == STUDY
    with pytest.raises(ValueError, match="no series"):
        view_in_browser(rows.iloc[0:0])


def test_a_saved_cohort_is_a_study_list_and_an_unsaved_one_is_refused():
    saved = Cohort(None, "oncology", "lung-ct", [SERIES], {}, {"version": 3, "size": 1})
    assert view_in_browser(saved).path == "/services/viewer/cohorts/oncology/lung-ct@3/"
    with pytest.raises(ValueError, match="save it first"):
        view_in_browser(Cohort(None, "oncology", "draft", [SERIES], {}, {}))


def test_what_cannot_be_opened_says_why():
    with pytest.raises(ValueError, match="no series or study of your projects"):
        view_in_browser("1.2.3.999", pacs=Archive())
    with pytest.raises(TypeError, match="series or study UID"):
        view_in_browser(42)


def test_the_printed_address_is_whole_where_the_hub_says_where_the_viewer_is(monkeypatch):
    monkeypatch.setenv("IMAGINGHUB_VIEWER_URL", "https://hub.example.org/services/viewer")
    link = view_in_browser(STUDY, pacs=Archive())
    assert str(link).startswith("https://hub.example.org/services/viewer/viewer?")
    assert 'href="/services/viewer/viewer?' in link._repr_html_()  # the page's own origin


def test_the_launcher_card_goes_to_the_hubs_viewer():
    entry = launcher_entry()
    card = entry["launcher_entry"]
    assert card["title"] == "Imaging viewer" and entry["new_browser_tab"]
    # JupyterLab opens the server's base URL (/user/NAME/) and path_info
    from urllib.parse import urljoin

    assert urljoin("https://hub/user/alice/", card["path_info"]) == "https://hub/services/viewer/"
    assert open(card["icon_path"]).read().startswith("<svg")


def _answer(*instances: str) -> Dataset:
    answer = Dataset()
    items = []
    for uid in instances:
        item = Dataset()
        item.ReferencedSOPInstanceUID = uid
        items.append(item)
    answer.ReferencedSOPSequence = items
    return answer


def test_a_job_records_the_series_it_stored_and_the_widget_links_them(tmp_path, monkeypatch):
    record = tmp_path / dicomweb.STORED_FILE
    monkeypatch.setenv(dicomweb.ENV_JOB_STORED, str(record))
    sent = {"9.1": {"study_uid": STUDY, "modality": "SEG", "description": "liver",
                    "instances": {"9.1.1"}},
            "9.2": {"study_uid": STUDY, "modality": "SEG", "description": "refused",
                    "instances": {"9.2.1"}}}
    dicomweb._record_stored(_answer("9.1.1"), sent)  # 9.2's instance failed
    dicomweb._record_stored(_answer(), sent)  # nothing stored: nothing recorded
    lines = [json.loads(x) for x in record.read_text().splitlines()]
    assert lines == [{"series_uid": "9.1", "study_uid": STUDY, "modality": "SEG",
                      "description": "liver"}]

    class Job:  # what stored_series reads: the job's artefacts (a per-series parent)
        def artifacts(self):
            return [{"path": "child-1/out.csv"}, {"path": f"child-1/{dicomweb.STORED_FILE}"},
                    {"path": f"child-2/{dicomweb.STORED_FILE}"}]

        def read(self, path):
            if path.startswith("child-1"):
                return record.read_bytes()
            return record.read_bytes() + b'{"series_uid": "9.3", "study_u'  # cut short

    shown = stored_series(Job())
    assert [s["series_uid"] for s in shown] == ["9.1"]
    assert shown[0]["viewer"] == ("/services/viewer/viewer?StudyInstanceUIDs=1.2.3.4"
                                  "&initialSeriesInstanceUID=9.1")


def test_outside_a_job_nothing_is_recorded(tmp_path, monkeypatch):
    monkeypatch.delenv(dicomweb.ENV_JOB_STORED, raising=False)
    monkeypatch.chdir(tmp_path)
    dicomweb._record_stored(_answer("9.1.1"), {"9.1": {"study_uid": STUDY, "modality": "SEG",
                                                       "description": "", "instances": {"9.1.1"}}})
    assert list(tmp_path.iterdir()) == []
