"""A federated study's cost, in one run on one stack:

1. the shipped federated-stats workflow run locally at one site, as a job of
   the job service on the four oncology series (the baseline);
2. the same workflow as a federated study of three sites over real Flower
   (TLS, node keys, the Fleet-only proxy): the time per round, and the bytes
   that left each site per round (what its egress gate released).

The three sites share this stack's hub, archive and job service (each with
its own node key, policy and audit), so their jobs compete for the same two
cores: the round's time is the slowest of three jobs run at once, plus
Flower's polling.

    .venv/bin/python bench/federation.py [--repeat 3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _stack import running_stack

from imaginghub.hub import demo
from imaginghub.hub.hubapi import HubAPI
from imaginghub.hub.services.federation.agent import SiteAgent, site_round_handler
from imaginghub.hub.services.federation.audit import Audit
from imaginghub.hub.services.federation.bridge import bridge_hash
from imaginghub.hub.services.federation.coordinator import Coordinator, StudySpec
from imaginghub.hub.services.federation.policy import Policy, Study
from imaginghub.hub.services.federation.site import SiteRound
from imaginghub.hub.services.jobs.workflows import load, project_workflows
from imaginghub.hub.state import Home, free_port
from imaginghub.kernels.catalog import Catalog
from imaginghub.kernels.jobs import Jobs

KEYS = ["ct-head-reversed", "ct-slice", "ct-small", "sc-jpeg-baseline"]  # oncology's
NOTEBOOK = project_workflows() / "federated-stats.ipynb"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with running_stack() as (_, _, run), tempfile.TemporaryDirectory() as d:
        home, root = Home(run["home"]), Path(d)
        api = run["gateway_url"].rsplit("/dicom-web", 1)[0] + "/api"
        cohort = Catalog(api, run["token"]).new_cohort(
            "bench-fed", "oncology", series=[demo.series(k).series_uid for k in KEYS]).save()
        admin = Jobs(run["jobs_url"], home.secret("admin_service_token"))

        def local() -> float:
            t = time.perf_counter()
            job = admin.get(admin._json("POST", "jobs", {
                "workflow": "federated-stats", "user": "alice",
                "parameters": {"cohort": cohort.ref, "project": "oncology"}})["id"])
            while not job.refresh().done:
                time.sleep(0.05)
            assert job.status == "succeeded", job.reason
            return time.perf_counter() - t

        local()  # warm
        alone = [local() for _ in range(args.repeat)]

        coord = Coordinator(root / "coordinator", "bench", link_port=free_port(),
                            fleet_port=free_port())
        coord.start()
        agents = []
        try:
            sha = load(NOTEBOOK).sha256
            for name in ("site-a", "site-b", "site-c"):
                policy = Policy([Study("bench", "stats", notebooks=[sha],
                                       cohorts={"onc": f"oncology/{cohort.ref}"}, min_cell=1,
                                       auto=True)])
                site = SiteRound(policy, Audit(f"sqlite:///{root / f'{name}.sqlite'}"),
                                 Jobs(run["jobs_url"], home.secret("admin_service_token")),
                                 HubAPI(home), timeout=600)
                agent = SiteAgent(root / name, name,
                                  superlink=f"127.0.0.1:{coord.fleet_port}",
                                  ca=coord.pki / "ca.crt", runtime_port=free_port(),
                                  pinned=bridge_hash(), handle=site_round_handler(site))
                coord.register(name, agent.init())
                agent.start()
                agents.append(agent)
            print(f"federated-stats: {args.rounds} rounds at three sites ...", file=sys.stderr)
            t = time.perf_counter()
            coord.submit(StudySpec("stats", "federated-stats", NOTEBOOK, "onc",
                                   rounds=args.rounds, min_sites=3, round_timeout=600))
            rec = coord.wait("stats", args.rounds * 700)
            whole = time.perf_counter() - t
        finally:
            for agent in agents:
                agent.stop()
            coord.stop()
        assert rec["status"] == "finished", rec
        rounds = [r["seconds"] for r in rec["rounds"]]
        print(f"federated-stats on {len(KEYS)} series, median of {args.repeat} / "
              f"{args.rounds}:")
        print(f"  locally at one site (a job):    {statistics.median(alone):.2f} s")
        print(f"  a round at three sites:         {statistics.median(rounds):.2f} s "
              f"({statistics.median(rounds) / statistics.median(alone):.1f}x; rounds "
              f"{', '.join(f'{s:.1f}' for s in rounds)} s; the whole study {whole:.1f} s "
              "with its start)")
        print("  bytes that left each site per round:")
        for site in sorted(rec["rounds"][0]["sites"]):
            sent = [sum(v["bytes"] for v in r["sites"][site]["received"].values())
                    for r in rec["rounds"]]
            names = ", ".join(f"{k} {v['bytes']}"
                              for k, v in rec["rounds"][0]["sites"][site]["received"].items())
            print(f"    {site}: {', '.join(map(str, sent))} ({names})")


if __name__ == "__main__":
    main()
