"""The workflow notebooks run with papermill in the imaging kernel against the
demo stack, as the job service runs them: through the gateway with a user's
token, parameters injected, an output folder of their own."""

from __future__ import annotations

import ast
import hashlib
import json

import nbformat
import nibabel as nib
import numpy as np
import pandas as pd
import papermill
import pytest
from tests_support import WORKFLOWS, kernels_as, run_workflow as run

from imaginghub.hub import demo
from imaginghub.kernels.catalog import Catalog
from imaginghub.kernels.dicomweb import PACS
from imaginghub.kernels.workflow import NOTHING_SELECTED, resolve_series

# small series of project oncology, one of them not a volume
KEYS = ["ct-head-reversed", "ct-slice", "ct-small", "sc-jpeg-baseline"]
UIDS = {demo.series(k).series_uid: k for k in KEYS}
COMMON = {"cohort": ("str", ""), "project": ("str", ""), "series": ("list[str]", [])}




def printed(nb) -> str:
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.outputs)


@pytest.fixture(scope="module")
def alice(stack):
    """alice's token, set for the kernels (they inherit this process's environment)."""
    with kernels_as(stack, "alice") as token:
        yield token


@pytest.fixture(scope="module")
def pacs(stack, alice):
    return PACS(stack.run["gateway_url"], token=alice)


@pytest.fixture(scope="module")
def cohort(stack, alice):
    api = stack.run["gateway_url"].rsplit("/dicom-web", 1)[0] + "/api"
    return Catalog(api, alice).new_cohort("qc-test", "oncology", series=list(UIDS)).save()


@pytest.fixture(scope="module")
def qc_run(alice, tmp_path_factory):
    """cohort-qc over the series given as a list: (folder, executed notebook)."""
    where = tmp_path_factory.mktemp("qc")
    return where, run("cohort-qc.ipynb", where, series=list(UIDS))


@pytest.mark.parametrize("name, own", [
    ("cohort-qc.ipynb", {"output_dir": ("str", "qc-output"),
                         "missing_slice_tolerance": ("float", 1.5)}),
    ("export-nifti.ipynb", {"output_dir": ("str", "nifti-output"), "compress": ("bool", True)}),
])
def test_parameters_and_metadata(name, own):
    params = papermill.inspect_notebook(WORKFLOWS / name)
    assert {p: (v["inferred_type_name"], ast.literal_eval(v["default"]))
            for p, v in params.items()} == COMMON | own
    assert all(v["help"] for v in params.values())
    meta = nbformat.read(WORKFLOWS / name, as_version=4).metadata
    assert meta.kernelspec.name == "imaging"
    block = meta.imaginghub
    assert block.per_series is False
    assert set(block) == {"title", "description", "reads", "writes", "per_series"}
    assert all(isinstance(block[k], str) and block[k] for k in set(block) - {"per_series"})


def test_parameters_select_series():
    assert resolve_series(series=["1.2", " 1.3 ", "1.2", ""]) == (["1.2", "1.3"], None)
    assert resolve_series(series="1.2, 1.3 1.4") == (["1.2", "1.3", "1.4"], None)
    with pytest.raises(ValueError, match="set the parameter cohort"):
        resolve_series("", "", [])
    with pytest.raises(ValueError, match="not both"):
        resolve_series("lung-ct@2", "", ["1.2"])


def test_cohort_qc(qc_run, pacs):
    where, nb = qc_run
    qc = pd.read_csv(where / "qc-output" / "qc.csv", dtype={"series_uid": str})
    assert list(qc["series_uid"]) == sorted(UIDS)
    by = qc.set_index(qc["series_uid"].map(UIDS))
    assert dict(by["status"]) == {"ct-head-reversed": "pass", "ct-slice": "warn",
                                  "ct-small": "warn", "sc-jpeg-baseline": "fail"}
    assert by.loc["ct-small", "reasons"] == "a single slice: a 2D image, not a 3D volume"
    bad = by.loc["sc-jpeg-baseline"]
    assert bad["reasons"].startswith("not a volume: ") and "no image position" in bad["reasons"]
    assert bad[["modality", "description"]].tolist() == ["OT", "Secondary capture JPEG baseline"]
    assert bad[["slices", "spacing_k", "min", "p99", "nan_count"]].isna().all()

    # the values are the volume's
    vol = pacs.load_series(demo.series("ct-head-reversed").series_uid, progress=False)
    row = by.loc["ct-head-reversed"]
    assert (row["slices"], row["rows"], row["columns"]) == vol.shape
    assert row[["spacing_i", "spacing_j", "spacing_k"]].tolist() == pytest.approx(vol.spacing)
    a = vol.array.astype(np.float64)
    expect = {"min": a.min(), "max": a.max(), "mean": a.mean(), "std": a.std(),
              "p1": np.percentile(a, 1), "p99": np.percentile(a, 99)}
    assert row[list(expect)].to_dict() == pytest.approx(expect, abs=1e-5)
    assert (row["nan_count"], row["determinant"], row["obliquity_deg"]) == (0, 1.0, 0.0)

    assert (where / "qc-output" / "qc.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert "4 series: 1 pass, 2 warn, 1 fail" in printed(nb)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert any("image/png" in o.get("data", {}) for o in outputs), "the figure was not shown"


def test_a_cohort_gives_the_same_qc_file(qc_run, cohort, tmp_path):
    nb = run("cohort-qc.ipynb", tmp_path, cohort=cohort.ref)  # project left out: looked up
    assert f"4 series of cohort oncology/{cohort.ref}" in printed(nb)
    # a second run gives the same bytes: sorted, rounded, no timestamps
    assert ((tmp_path / "qc-output" / "qc.csv").read_bytes()
            == (qc_run[0] / "qc-output" / "qc.csv").read_bytes())


def test_export_nifti(cohort, pacs, tmp_path):
    run("export-nifti.ipynb", tmp_path, cohort=cohort.ref, project="oncology", output_dir="out")
    out = tmp_path / "out"
    manifest = pd.read_csv(out / "manifest.csv", dtype=str)
    assert list(manifest["series_uid"]) == sorted(UIDS)
    info = json.loads((out / "manifest.json").read_text())
    assert info["cohort"] == {"project": "oncology", "ref": cohort.ref,
                              "series_hash": cohort.info["series_hash"]}
    assert [r["series_uid"] for r in info["series"]] == list(manifest["series_uid"])
    for row in manifest.itertuples():
        s = demo.series(UIDS[row.series_uid])
        assert (row.study_uid, row.modality, row.description) == (s.study_uid, s.modality,
                                                                  s.description)
        if s.key == "sc-jpeg-baseline":
            assert row.status == "failed" and row.reason.startswith("NotAVolume: ")
            assert pd.isna(row.file) and not list(out.glob(f"{row.series_uid}*"))
            continue
        assert row.status == "ok" and row.file == f"{row.series_uid}.nii.gz"
        assert row.sha256 == hashlib.sha256((out / row.file).read_bytes()).hexdigest()
        img = nib.load(out / row.file)
        expect = pacs.load_series(row.series_uid, progress=False).to_nifti()
        assert img.shape == expect.shape and row.shape == "x".join(map(str, expect.shape))
        np.testing.assert_allclose(img.affine, expect.affine, atol=1e-4)
        assert img.header.get_zooms() == pytest.approx(expect.header.get_zooms())
        assert np.array_equal(np.asanyarray(img.dataobj), np.asanyarray(expect.dataobj))


def test_export_uncompressed_without_a_cohort(alice, tmp_path):
    uid = demo.series("ct-small").series_uid
    run("export-nifti.ipynb", tmp_path, series=[uid, "1.2.3.4.5"], compress=False)
    out = tmp_path / "nifti-output"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{uid}.nii", "manifest.csv", "manifest.json"])
    assert nib.load(out / f"{uid}.nii").shape == (128, 128, 1)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["cohort"] is None
    missing = next(r for r in manifest["series"] if r["series_uid"] == "1.2.3.4.5")
    assert missing["status"] == "failed" and missing["reason"].startswith("NotFound: ")


@pytest.mark.parametrize("name", ["cohort-qc.ipynb", "export-nifti.ipynb",
                                  "federated-stats.ipynb"])
def test_no_selection_fails_clearly(alice, tmp_path, name):
    with pytest.raises(papermill.PapermillExecutionError) as e:
        run(name, tmp_path)
    assert e.value.ename == "ValueError" and e.value.evalue == NOTHING_SELECTED
    nb = nbformat.read(tmp_path / name, as_version=4)  # saved, with the error in it
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert [o.evalue for o in errors] == [NOTHING_SELECTED]
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # nothing else written
