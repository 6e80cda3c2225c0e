"""The bridge: imaginghub's one Flower app, between a coordinator's study and
each site's job service.

A study's logic travels as data, never as code: the workflow's name, its
notebook's SHA-256, the parameters and a cohort alias go to every site in
each round's message. What a site sends back is the round's outcome
(released, pending, refused or failed, with a reason) and the bytes its
egress gate released, and nothing else.

- The **ServerApp** (:data:`serverapp`) runs at the coordinator, under its
  SuperLink: each round it asks every connected site, waits for their
  answers up to the round's time limit, aggregates what was released
  (:mod:`.aggregate`) in the order of the sites' names, and writes the
  study's record (``study.json`` in the run's ``out`` folder) after every
  round.
- The **ClientApp** side is never loaded from a FAB at a site: the site's
  agent (:mod:`.agent`) checks the run's FAB hash against the site's pin
  and then calls :func:`answer`, this installed module's code. The
  :data:`clientapp` object exists because Flower's app format requires one;
  run by a plain SuperNode it refuses every message.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from ...errors import ConfigError
from ...state import write_private
from .aggregate import AggregationError, decode_json, sum_counts
from .egress import NAME, parse_shares

APP_DIR = Path(__file__).with_name("bridge_app")
QUERY = "query"
ROUND_KEYS = ("coordinator", "study", "workflow", "notebook_sha256", "parameters",
              "cohort_alias", "round_number")
OUTCOMES = ("released", "pending", "refused", "failed")


def fab_bytes() -> bytes:
    """The bridge app's FAB, as ``flwr build`` makes it (deterministic)."""
    from flwr.cli.build import build_fab_from_disk

    return build_fab_from_disk(APP_DIR)


def bridge_hash() -> str:
    """The SHA-256 of this installation's bridge app: what a site pins and
    what the coordinator's runs are made from."""
    return hashlib.sha256(fab_bytes()).hexdigest()


# -- the messages -------------------------------------------------------------------
def round_content(req: dict) -> RecordDict:
    """A round's request as a message's content (strings and an int)."""
    rec = ConfigRecord({k: req[k] for k in ROUND_KEYS if k not in ("parameters",)})
    rec["parameters"] = json.dumps(req["parameters"], sort_keys=True)
    return RecordDict({"round": rec})


def read_round(message: Message) -> dict:
    """The request in a round's message, checked; a ValueError says what is
    wrong with it (a coordinator's message is not trusted either)."""
    try:
        rec = message.content["round"]
        req = {k: rec[k] for k in ROUND_KEYS}
        req["parameters"] = json.loads(req["parameters"])
    except (KeyError, TypeError, ValueError):
        raise ValueError("the round's message is not an imaginghub study round") from None
    if not isinstance(req["parameters"], dict) or not isinstance(req["round_number"], int) \
            or not all(isinstance(req[k], str) for k in ROUND_KEYS
                       if k not in ("parameters", "round_number")):
        raise ValueError("the round's message has a field of the wrong type")
    return req


def reply_content(site: str, status: str, reason: str = "", released: dict | None = None,
                  provenance: dict | None = None) -> RecordDict:
    """A site's answer: the outcome, the released bytes by share name, and
    the round's provenance at the site (cohort series hash, sample count,
    package versions)."""
    outcome = ConfigRecord({"site": site, "status": status, "reason": reason,
                            "provenance": json.dumps(provenance or {}, sort_keys=True)})
    out = RecordDict({"outcome": outcome})
    if released:
        out["released"] = ConfigRecord({name: bytes(data) for name, data in released.items()})
    return out


def read_reply(message: Message) -> dict:
    """A site's answer, checked."""
    if message.has_error():
        return {"site": "", "status": "failed",
                "reason": f"the site could not answer ({message.error.reason[:300]})",
                "released": {}, "provenance": {}}
    try:
        rec = message.content["outcome"]
        reply = {"site": str(rec["site"]), "status": str(rec["status"]),
                 "reason": str(rec["reason"])[:500],
                 "provenance": json.loads(rec["provenance"])}
        released = message.content["released"] if "released" in message.content else {}
        reply["released"] = {str(k): bytes(v) for k, v in dict(released).items()}
    except (KeyError, TypeError, ValueError):
        raise ValueError("a site's answer is not an imaginghub round outcome") from None
    if reply["status"] not in OUTCOMES:
        raise ValueError(f"a site answered the unknown outcome {reply['status']!r:.40}")
    return reply


# -- the coordinator: the ServerApp -----------------------------------------------
serverapp = ServerApp()


@serverapp.main()
def _serverapp_main(grid: Grid, context: Context) -> None:
    run_study(grid, dict(context.run_config))


def _federated_block(path: str, sha256: str) -> dict:
    data = Path(path).read_bytes()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ConfigError(f"the coordinator's notebook {path} is not the study's "
                          f"(SHA-256 {sha256[:12]}...)")
    meta = json.loads(data)["metadata"].get("imaginghub", {})
    if "federated" not in meta:
        raise ConfigError(f"{path} is not a federated workflow")
    return meta["federated"]


def _write_json(path: Path, data: dict) -> None:
    write_private(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def run_study(grid: Grid, cfg: dict) -> dict:
    """Every round of one study: ask the sites, aggregate, record."""
    out = Path(cfg["out"])
    federated = _federated_block(cfg["notebook"], cfg["notebook-sha256"])
    shares = parse_shares(federated["shares"])
    record = {"study": cfg["study"], "coordinator": cfg["coordinator"],
              "workflow": cfg["workflow"], "notebook_sha256": cfg["notebook-sha256"],
              "bridge_sha256": grid.run.fab_hash if hasattr(grid, "run") else "",
              "parameters": json.loads(cfg["parameters"]),
              "cohort_alias": cfg["cohort-alias"], "aggregator": federated.get("aggregator"),
              "min_sites": int(cfg["min-sites"]), "rounds": [], "status": "running"}
    _write_json(out / "study.json", record)
    for number in range(1, int(cfg["rounds"]) + 1):
        result = _one_round(grid, cfg, number, shares)
        record["rounds"].append(result)
        if result["status"] != "aggregated":
            record["status"] = "failed"
            record["reason"] = result["reason"]
            break
        _write_json(out / "study.json", record)
    else:
        record["status"] = "finished"
        record["aggregate"] = record["rounds"][-1]["aggregate"]
    _write_json(out / "study.json", record)
    return record


def _wait_for_nodes(grid: Grid, want: int, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= want or time.monotonic() > deadline:
            return nodes
        time.sleep(1)


def _one_round(grid: Grid, cfg: dict, number: int, shares: dict) -> dict:
    timeout = float(cfg["round-timeout"])
    min_sites = int(cfg["min-sites"])
    nodes = _wait_for_nodes(grid, min_sites, min(timeout, 120))
    req = {"coordinator": cfg["coordinator"], "study": cfg["study"],
           "workflow": cfg["workflow"], "notebook_sha256": cfg["notebook-sha256"],
           "parameters": json.loads(cfg["parameters"]), "cohort_alias": cfg["cohort-alias"],
           "round_number": number}
    registered = json.loads(Path(cfg["sites"]).read_text()) if cfg.get("sites") else {}
    messages = [Message(round_content(req), dst_node_id=n, message_type=QUERY) for n in nodes]
    asked = {m.object_id: m.metadata.dst_node_id for m in messages}  # a message's id
    started = time.monotonic()
    replies = list(grid.send_and_receive(messages, timeout=timeout))
    sites: dict[str, dict] = {}
    answered = set()
    for message in replies:
        # the node asked, not what the answer says (an error the SuperLink
        # made for a node that went away comes from the SuperLink)
        node = asked.get(message.metadata.reply_to_message_id)
        if node is None:
            continue
        answered.add(node)
        try:
            reply = read_reply(message)
        except ValueError as e:
            reply = {"site": "", "status": "failed", "reason": str(e), "released": {},
                     "provenance": {}}
        name = registered.get(str(node), f"node-{node}")
        if not message.has_error() and message.metadata.src_node_id != node \
                or reply["site"] and reply["site"] != name:  # a node speaks for itself
            reply = {"status": "failed", "reason": "answered as another site",
                     "released": {}, "provenance": {}}
        sites[name] = reply
    for node in set(nodes) - answered:
        sites[registered.get(str(node), f"node-{node}")] = {
            "status": "failed", "reason": "no answer within the round's time limit",
            "released": {}, "provenance": {}}
    result = {"round": number, "seconds": round(time.monotonic() - started, 2),
              "nodes_asked": len(nodes), "nodes_silent": len(set(nodes) - answered),
              "sites": {}}
    contributions = {name: r for name, r in sites.items() if r["status"] == "released"}
    for name in sorted(sites):
        r = sites[name]
        _keep_received(Path(cfg["out"]) / "received" / f"round-{number}" / name, r["released"])
        result["sites"][name] = {
            "status": r["status"], "reason": r["reason"], "provenance": r["provenance"],
            "received": {k: {"sha256": hashlib.sha256(v).hexdigest(), "bytes": len(v)}
                         for k, v in sorted(r["released"].items())}}
    if len(contributions) < min_sites:
        result["status"] = "failed"
        result["reason"] = (f"round {number}: {len(contributions)} of the study's minimum "
                            f"{min_sites} sites released their results")
        return result
    try:
        result["aggregate"] = aggregate_round(contributions, shares)
    except AggregationError as e:
        result["status"], result["reason"] = "failed", f"round {number}: {e}"
        return result
    result["status"] = "aggregated"
    return result


def _keep_received(folder: Path, released: dict[str, bytes]) -> None:
    """What a site sent in a round, as received (the aggregate can be made
    again from it, and checked against the site's audit)."""
    if not released:
        return
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in released.items():
        if NAME.match(name):  # a share's name: never a path
            (folder / name).write_bytes(data)


def aggregate_round(contributions: dict[str, dict], shares: dict) -> dict:
    """The statistics of one round combined over the sites: counts summed,
    whole numbers summed; other kinds wait for their aggregator."""
    out = {}
    for name, share in shares.items():
        values = {}
        for site in sorted(contributions):
            data = contributions[site]["released"].get(name)
            if data is None:
                raise AggregationError(f"site {site} released no {name}")
            values[site] = decode_json(site, data, name)
        if share.kind == "counts":
            out[name] = sum_counts(values, share)
        elif share.kind == "int":
            out[name] = sum(int(v) for v in values.values())
        else:
            raise AggregationError(f"{name}: no aggregator for {share.kind} in a query round")
    return out


# -- a plain SuperNode's view: refuse --------------------------------------------------
clientapp = ClientApp()


@clientapp.query()
def _refuse(message: Message, context: Context) -> Message:
    raise RuntimeError("imaginghub's bridge answers only through a site's imaginghub agent "
                       "(imaginghub federation site), which runs its own installed code")
