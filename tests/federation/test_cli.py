"""``imaginghub federation`` as the two admins use it, from the README: a
coordinator in a state directory of its own, the test session's workspace
as a site. The site's admin sees the coordinator's request wait as pending,
previews it on a cohort (what would leave, the suppressed cells; nothing
sent, nothing audited), approves it, and the next run is aggregated; the
site's audit holds what the coordinator shows as received. The site's
admin does part of it over the site admins' API through the hub (which
``site start`` serves), part with the commands: both change and show the
same policy."""

from __future__ import annotations

import re
import subprocess

import httpx
import pytest
from conftest import IMAGINGHUB, as_account
from tests_support import WORKFLOWS, server_token, wait_for

from imaginghub.hub import demo
from imaginghub.hub.services.jobs.workflows import load
from imaginghub.hub.state import free_port, port_in_use
from imaginghub.kernels.catalog import Catalog

pytestmark = pytest.mark.stack

KEYS = ["ct-head-reversed", "ct-slice", "ct-small", "sc-jpeg-baseline"]


def _cli(home, *args, check=True):
    r = subprocess.run([IMAGINGHUB, "--home", str(home), "federation", *args],
                       capture_output=True, text=True, timeout=600)
    if check and r.returncode != 0:
        raise AssertionError(f"federation {' '.join(args)}: {r.stdout}\n{r.stderr}")
    return r


def test_two_admins_run_a_study_from_the_command_line(stack, tmp_path):
    coord_home, port = tmp_path / "coordinator", free_port()
    out = _cli(coord_home, "coordinator", "init", "--name", "consortium", "--fleet-port",
               str(port)).stdout
    ca = coord_home / "federation/coordinator/pki/ca.crt"
    assert str(ca) in out and ca.exists()
    procs = [subprocess.Popen([IMAGINGHUB, "--home", str(coord_home), "federation",
                               "coordinator", "start"], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)]
    try:
        wait_for(lambda: port_in_use(port), 60, "the coordinator's Fleet API")
        out = stack.cli("federation", "site", "init", "--name", "hospital-a", "--coordinator",
                        f"127.0.0.1:{port}", "--ca", str(ca)).stdout
        pub = stack.home.path / "federation/site/node.pub"
        assert pub.read_text().strip() in out  # the key to send to the coordinator
        assert re.search(r"node \d+", _cli(coord_home, "coordinator", "register",
                                           "hospital-a", str(pub)).stdout)
        procs.append(subprocess.Popen(
            [*as_account(stack.account), IMAGINGHUB, "--home", str(stack.home.path),
             "federation", "site", "start"], stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True))
        wait_for(lambda: "online" in _cli(coord_home, "coordinator", "sites").stdout, 60,
                 "the site online at the coordinator")

        submit = ("study", "submit", "stats-cli", "--workflow", "federated-stats",
                  "--cohort-alias", "onc", "--round-timeout", "120", "--wait")
        r = _cli(coord_home, *submit, check=False)
        assert r.returncode == 1, r.stdout + r.stderr
        assert "hospital-a       pending (this site has not approved the study yet)" in r.stdout
        assert "consortium/stats-cli/1" in stack.cli("federation", "site", "pending").stdout

        # the site admins' API, through the hub: admins only, never a server's token
        site, admin = _site_api(stack)
        (waiting,) = admin.get(site + "pending").json()["pending"]
        assert waiting["key"] == "consortium/stats-cli/1"
        assert waiting["workflow"] == "federated-stats" and waiting["cohort_alias"] == "onc"
        for token in (stack.token("alice"), server_token(stack, "admin")):
            r = httpx.get(site + "pending", headers={"Authorization": f"token {token}"})
            assert r.status_code == 403, r.text

        # the admin looks before approving: a cohort of the four series
        alice = stack.token("alice")
        api = stack.run["gateway_url"].rsplit("/dicom-web", 1)[0] + "/api"
        cohort = Catalog(api, alice).new_cohort(
            "fed-cli", "oncology", series=[demo.series(k).series_uid for k in KEYS]).save()
        r = admin.post(site + "pending/consortium/stats-cli/1/preview",
                       json={"cohort": f"oncology/{cohort.ref}", "min_cell": 1})
        assert r.status_code == 200, r.text
        look = r.json()
        assert look["status"] == "released" and look["outputs"]["num_series"]["content"] == 4
        modalities = look["outputs"]["modalities"]
        assert modalities["kind"] == "counts" and modalities["bytes"] > 0
        assert modalities["suppressed"] and len(modalities["sha256"]) == 64
        assert admin.get(site + "audit").json() == {"rows": []}  # nothing left
        assert "no pending request consortium/other/1" in stack.cli(
            "federation", "site", "preview", "consortium/other/1", "--cohort",
            f"oncology/{cohort.ref}", check=False).stderr
        r = admin.post(site + "pending/consortium/other/1/preview",
                       json={"cohort": f"oncology/{cohort.ref}"})
        assert r.status_code == 404 and "no pending request" in r.json()["message"]

        # approved with the command, each round over the API
        sha = load(WORKFLOWS / "federated-stats.ipynb").sha256
        stack.cli("federation", "site", "approve", "consortium", "stats-cli", "--notebook", sha,
                  "--cohort", f"onc=oncology/{cohort.ref}", "--min-cell", "1")
        assert admin.put(site + "policy/studies/consortium/stats-cli/rounds/1",
                         content=b"").status_code == 200
        (approval,) = admin.get(site + "policy").json()["studies"]
        assert approval["notebooks"] == [sha] and approval["approved_rounds"] == [1]
        r = admin.put(site + "policy/studies/consortium/other",
                      json={"notebooks": ["not-a-hash"], "cohorts": {"onc": "x/y@1"}})
        assert r.status_code == 400 and "SHA-256" in r.json()["message"]
        shown = _cli(coord_home, *submit).stdout
        assert "study stats-cli (federated-stats): finished" in shown
        assert "hospital-a       released; left the site: 4 outputs" in shown
        assert '"num_series": 4' in shown
        assert admin.get(site + "pending").json() == {"pending": []}  # it waits no longer
        audit = stack.cli("federation", "site", "audit", "--study", "stats-cli").stdout
        for line in audit.splitlines():
            assert re.search(r'"sha256": "([0-9a-f]{16})', line).group(1) in shown
        assert len(audit.splitlines()) == 4
        rows = admin.get(site + "audit", params={"study": "stats-cli"}).json()["rows"]
        assert [r["sha256"][:16] for r in rows] == re.findall(r'"sha256": "([0-9a-f]{16})',
                                                              audit)
        again = _cli(coord_home, "study", "rerun", "stats-cli").stdout
        assert "the aggregate is bitwise identical to the study's" in again
        # revoked over the API: the command shows the same, empty policy
        assert admin.delete(site + "policy/studies/consortium/stats-cli").status_code == 200
        assert admin.delete(site + "policy/studies/consortium/stats-cli").status_code == 404
        assert '"studies": []' in stack.cli("federation", "site", "policy").stdout
        # the SuperLink's port is guarded while the coordinator runs (as root)
        assert "imaginghubfed_" in _tables()
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
    assert procs[0].returncode == 0 and "imaginghubfed_" not in _tables()


def _site_api(stack) -> tuple[str, httpx.Client]:
    """The site admins' API's address through the hub, and the admin's
    client (once the site's agent serves it)."""
    url = stack.url.rstrip("/") + "/services/federation-site/api/"
    admin = httpx.Client(headers={"Authorization": f"token {stack.token('admin')}"},
                         timeout=120)
    wait_for(lambda: admin.get(url + "site").status_code == 200, 60, "the site admins' API")
    assert admin.get(url + "site").json()["site"] == "hospital-a"
    return url, admin


def _tables() -> str:
    return subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
