"""A federated study's cost, in one run on one stack:

1. the shipped federated-stats workflow run locally at one site, as a job of
   the job service on four oncology series (the baseline), against a round
   of the same workflow as a federated study of three sites over real Flower
   (TLS, node keys, the Fleet-only proxy);
2. one round of federated-train (the demo's training settings) run locally
   as a job from the study's initial weights (the baseline), against a
   FedAvg round at three sites;
and the bytes that left each site per round (what its egress gate released).

The three sites are the demo's federation (federation/demo.py) over this
one stack's hub, archive and job service (each with its own node key,
policy, audit and cohorts), so their jobs compete for the same two cores: a
round's time is the slowest of three jobs run at once, plus Flower's
polling.

    .venv/bin/python bench/federation.py [--repeat 3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _stack import running_stack

from imaginghub.hub import demo
from imaginghub.hub.services.federation import demo as federation
from imaginghub.hub.services.federation.aggregate import encode_weights, initial_weights
from imaginghub.hub.services.jobs.workflows import load, project_workflows
from imaginghub.hub.state import Home
from imaginghub.kernels.catalog import Catalog
from imaginghub.kernels.jobs import Jobs


def local_job(admin, workflow: str, user: str, parameters: dict, inputs=None) -> float:
    """Seconds from submitting one job to its end."""
    t = time.perf_counter()
    job = admin.submit_as(user, workflow, parameters, inputs=inputs)
    while not job.refresh().done:
        time.sleep(0.05)
    assert job.status == "succeeded", job.reason
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    stats, unet = federation.STUDIES
    stats = dataclasses.replace(stats, rounds=args.rounds)
    unet = dataclasses.replace(unet, rounds=1)
    with running_stack() as (_, _, run), tempfile.TemporaryDirectory() as d:
        home = Home(run["home"])
        admin = Jobs(run["jobs_url"], home.secret("admin_service_token"))
        api = run["gateway_url"].rsplit("/dicom-web", 1)[0] + "/api"
        ct = Catalog(api, run["token"]).new_cohort("bench-fed", "oncology", series=[
            demo.series(k).series_uid for k in federation.CT]).save()
        alone = [local_job(admin, "federated-stats", "alice",
                           {"cohort": ct.ref, "project": "oncology"})
                 for _ in range(args.repeat + 1)][1:]  # the first warms the kernel
        model = load(project_workflows() / "federated-train.ipynb").federated["model"]
        inputs = {"global.safetensors": encode_weights(initial_weights(model, 0)),
                  "global.json": json.dumps({"architecture": model, "study": "bench",
                                             "coordinator": "bench", "round": 1}).encode()}
        head = [demo.series("mr-head").series_uid]
        trained = [local_job(admin, "federated-train", "bob",
                             {**unet.parameters, "series": head}, inputs)
                   for _ in range(args.repeat)]

        sites = {name: home for name in federation.SITES}
        print("federation: three sites on this stack ...", file=sys.stderr)
        with federation.Federation(Path(d), sites, studies=[stats, unet],
                                   log=lambda _: None) as fed:
            t = time.perf_counter()
            records = federation.run_studies(fed, io.StringIO(), timeout=args.rounds * 700)
            whole = time.perf_counter() - t
        assert all(r["status"] == "finished" for r in records.values()), records

        def show(title, rec, baseline):
            rounds = [r["seconds"] for r in rec["rounds"]]
            print(f"{title}, median of {args.repeat} / {len(rounds)}:")
            print(f"  locally at one site (a job):    {statistics.median(baseline):.2f} s")
            print(f"  a round at three sites:         {statistics.median(rounds):.2f} s "
                  f"({statistics.median(rounds) / statistics.median(baseline):.1f}x; rounds "
                  f"{', '.join(f'{s:.1f}' for s in rounds)} s)")
            print("  bytes that left each site per round:")
            for site in sorted(rec["rounds"][0]["sites"]):
                sent = [sum(v["bytes"] for v in r["sites"][site]["received"].values())
                        for r in rec["rounds"]]
                names = ", ".join(f"{k} {v['bytes']}" for k, v in
                                  rec["rounds"][0]["sites"][site]["received"].items())
                print(f"    {site}: {', '.join(map(str, sent))} ({names})")

        show(f"federated-stats on {len(federation.CT)} series at one site, 4 / 3 / 2 at the "
             "three", records["stats"], alone)
        show(f"federated-train ({unet.parameters['epochs']} epochs a round) on 1 series at one "
             "site, 1 / 1 / 2 at the three", records["unet"], trained)
        print(f"both studies with their starts: {whole:.1f} s")


if __name__ == "__main__":
    main()
