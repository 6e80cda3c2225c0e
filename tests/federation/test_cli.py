"""``imaginghub federation`` as the two admins use it, from the README: a
coordinator in a state directory of its own, the test session's workspace
as a site. The site's admin sees the coordinator's request wait as pending,
previews it on a cohort (what would leave, the suppressed cells; nothing
sent, nothing audited), approves it, and the next run is aggregated; the
site's audit holds what the coordinator shows as received."""

from __future__ import annotations

import re
import subprocess

import pytest
from conftest import IMAGINGHUB, as_account
from tests_support import WORKFLOWS, wait_for

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

        # the admin looks before approving: a cohort of the four series
        alice = stack.token("alice")
        api = stack.run["gateway_url"].rsplit("/dicom-web", 1)[0] + "/api"
        cohort = Catalog(api, alice).new_cohort(
            "fed-cli", "oncology", series=[demo.series(k).series_uid for k in KEYS]).save()
        look = stack.cli("federation", "site", "preview", "consortium/stats-cli/1",
                         "--cohort", f"oncology/{cohort.ref}", "--min-cell", "1").stdout
        assert "released" in look and "num_series" in look and "modalities" in look
        assert re.search(r"modalities\s+counts\s+\d+ bytes\s+suppressed cells: [1-9]", look)
        assert stack.cli("federation", "site", "audit").stdout == ""  # nothing left

        sha = load(WORKFLOWS / "federated-stats.ipynb").sha256
        stack.cli("federation", "site", "approve", "consortium", "stats-cli", "--notebook", sha,
                  "--cohort", f"onc=oncology/{cohort.ref}", "--min-cell", "1", "--auto")
        shown = _cli(coord_home, *submit).stdout
        assert "study stats-cli (federated-stats): finished" in shown
        assert "hospital-a       released; left the site: 4 outputs" in shown
        assert '"num_series": 4' in shown
        audit = stack.cli("federation", "site", "audit", "--study", "stats-cli").stdout
        for line in audit.splitlines():
            assert re.search(r'"sha256": "([0-9a-f]{16})', line).group(1) in shown
        assert len(audit.splitlines()) == 4
        again = _cli(coord_home, "study", "rerun", "stats-cli").stdout
        assert "the aggregate is bitwise identical to the study's" in again
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


def _tables() -> str:
    return subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
