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
from .aggregate import (AggregationError, decode_json, decode_state_dict, encode_weights, fedavg,
                        initial_weights, reference_of, sum_counts)
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
def round_content(req: dict, weights: bytes | None = None) -> RecordDict:
    """A round's request as a message's content (strings and an int), and
    for a training round the weights it starts from (safetensors)."""
    rec = ConfigRecord({k: req[k] for k in ROUND_KEYS if k not in ("parameters",)})
    rec["parameters"] = json.dumps(req["parameters"], sort_keys=True)
    out = RecordDict({"round": rec})
    if weights is not None:
        out["model"] = ConfigRecord({"weights": weights})
    return out


def read_round(message: Message) -> dict:
    """The request in a round's message, checked; a ValueError says what is
    wrong with it (a coordinator's message is not trusted either)."""
    try:
        rec = message.content["round"]
        req = {k: rec[k] for k in ROUND_KEYS}
        req["parameters"] = json.loads(req["parameters"])
    except (KeyError, TypeError, ValueError):
        raise ValueError("the round's message is not an imaginghub study round") from None
    if "model" in message.content:
        try:
            req["weights"] = bytes(message.content["model"]["weights"])
        except (KeyError, TypeError, ValueError):
            raise ValueError("the round's starting weights are not bytes") from None
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
    cfg = dict(context.run_config)
    try:
        run_study(grid, cfg)
    except Exception as e:  # the record says the study ended, and why
        path = Path(cfg["out"]) / "study.json"
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            record = {"study": cfg.get("study"), "rounds": []}
        record.update(status="failed", reason=f"the study stopped at the coordinator: "
                                              f"{type(e).__name__}: {e}"[:500])
        _write_json(path, record)
        raise


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
    """Every round of one study: ask the sites, aggregate, record. A
    training study starts from the workflow's model built with the study's
    seed, sends each round the weights the last one averaged, and ends with
    a model version in ``models/`` (the format of ``kernels.models``)."""
    out = Path(cfg["out"])
    federated = _federated_block(cfg["notebook"], cfg["notebook-sha256"])
    shares = parse_shares(federated["shares"])
    record = {"study": cfg["study"], "coordinator": cfg["coordinator"],
              "workflow": cfg["workflow"], "notebook_sha256": cfg["notebook-sha256"],
              "bridge_sha256": grid.run.fab_hash if hasattr(grid, "run") else "",
              "parameters": json.loads(cfg["parameters"]),
              "cohort_alias": cfg["cohort-alias"], "aggregator": federated.get("aggregator"),
              "min_sites": int(cfg["min-sites"]), "rounds": [], "status": "running"}
    weights, params = None, {}
    if federated.get("aggregator") == "fedavg":
        params = study_parameters(cfg["notebook"], record["parameters"])
        weights = initial_weights(federated["model"], int(params.get("seed", 0)))
        record["initial_weights"] = _keep_weights(out / "global" / "round-0.safetensors",
                                                  weights)
    _write_json(out / "study.json", record)
    for number in range(1, int(cfg["rounds"]) + 1):
        result = _one_round(grid, cfg, number, shares, weights)
        if weights is not None and result["status"] == "aggregated":
            weights = result.pop("weights")
            result["aggregate"]["weights"] = _keep_weights(
                out / "global" / f"round-{number}.safetensors", weights)
        record["rounds"].append(result)
        if result["status"] != "aggregated":
            record["status"] = "failed"
            record["reason"] = result["reason"]
            break
        _write_json(out / "study.json", record)
    else:
        record["status"] = "finished"
        record["aggregate"] = record["rounds"][-1]["aggregate"]
        if weights is not None:
            record["model"] = str(save_study_model(out / "models", record, federated, weights,
                                                   params))
    _write_json(out / "study.json", record)
    return record


def study_parameters(notebook: str, given: dict) -> dict:
    """The study's parameters over the workflow's defaults."""
    import ast

    from ..jobs.workflows import load

    defaults = {}
    for name, p in load(Path(notebook)).parameters.items():
        try:
            defaults[name] = ast.literal_eval(p["default"])
        except (ValueError, SyntaxError):
            continue
    return {**defaults, **given}


def _keep_weights(path: Path, weights: dict) -> dict:
    """A round's global weights kept as safetensors; their hash and size."""
    data = encode_weights(weights)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private(path, data)
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
            "tensors": len(weights), "file": str(path.relative_to(path.parents[1]))}


def save_study_model(models_dir: Path, record: dict, federated: dict, weights: dict,
                     params: dict) -> Path:
    """The study's final weights as a model version (``kernels.models``'
    format) named after the study, with a ``federation`` block: the study's
    provenance (bridge and notebook hashes, parameters, and per round and
    site the cohort's series hash, the sample count, the package versions
    and what was received)."""
    import torch

    from ....kernels import models

    network = models.build_network(federated["model"])
    network.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in weights.items()})
    names = dict(enumerate(params.get("labels") or [], start=1))
    spec = models.input_spec(params["spacing_mm"], params["grid_size"], params["patch_size"])
    info = models.model_info(architecture=federated["model"], labels=names, input_spec=spec,
                             training={"federated": True, "rounds": len(record["rounds"]),
                                       "seed": params.get("seed", 0),
                                       "epochs_per_round": params.get("epochs")})
    info["federation"] = {
        k: record[k] for k in ("study", "coordinator", "workflow", "notebook_sha256",
                               "bridge_sha256", "parameters", "cohort_alias")}
    info["federation"]["rounds"] = [
        {"round": r["round"], "weights": r["aggregate"]["weights"],
         "num_examples": r["aggregate"]["num_examples"],
         "sites": {name: {"status": s["status"], "provenance": s["provenance"],
                          "received": s["received"]} for name, s in r["sites"].items()}}
        for r in record["rounds"]]
    return models.save_model(models_dir, models.check_name(record["study"]), network, info)


def _wait_for_nodes(grid: Grid, want: int, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= want or time.monotonic() > deadline:
            return nodes
        time.sleep(1)


def _send_and_receive(grid: Grid, messages: list[Message], timeout: float,
                      poll: float = 0.5) -> list[Message]:
    """``grid.send_and_receive``, but asking for the replies every ``poll``
    seconds rather than Flower's fixed 3: a round ends when its last site
    answers, not up to 3 s later."""
    waiting = set(grid.push_messages(messages))
    deadline = time.monotonic() + timeout
    replies: list[Message] = []
    while waiting:
        got = list(grid.pull_messages(waiting))
        replies.extend(got)
        waiting -= {m.metadata.reply_to_message_id for m in got}
        if not waiting or time.monotonic() >= deadline:
            break
        time.sleep(poll)
    return replies


def _one_round(grid: Grid, cfg: dict, number: int, shares: dict,
               weights: dict | None = None) -> dict:
    timeout = float(cfg["round-timeout"])
    min_sites = int(cfg["min-sites"])
    nodes = _wait_for_nodes(grid, min_sites, min(timeout, 120))
    req = {"coordinator": cfg["coordinator"], "study": cfg["study"],
           "workflow": cfg["workflow"], "notebook_sha256": cfg["notebook-sha256"],
           "parameters": json.loads(cfg["parameters"]), "cohort_alias": cfg["cohort-alias"],
           "round_number": number}
    sites_file = Path(cfg["sites"]) if cfg.get("sites") else None
    registered = json.loads(sites_file.read_text()) \
        if sites_file is not None and sites_file.exists() else {}
    data = encode_weights(weights) if weights is not None else None
    messages = [Message(round_content(req, data), dst_node_id=n, message_type=QUERY)
                for n in nodes]
    asked = {m.object_id: m.metadata.dst_node_id for m in messages}  # a message's id
    started = time.monotonic()
    replies = _send_and_receive(grid, messages, timeout)
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
        if weights is None:
            result["aggregate"] = aggregate_round(contributions, shares)
        else:
            result["aggregate"], result["weights"] = aggregate_training(
                contributions, shares, reference_of(weights))
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


def aggregate_training(contributions: dict[str, dict], shares: dict,
                       reference: dict) -> tuple[dict, dict]:
    """A training round's weights averaged over the sites, weighted by
    their num_examples: (what the record says, the new weights)."""
    (weights_name,) = [n for n, s in shares.items() if s.kind == "state_dict"]
    parts, counts = {}, {}
    for site in sorted(contributions):
        released = contributions[site]["released"]
        if weights_name not in released or "num_examples" not in released:
            raise AggregationError(f"site {site} released no {weights_name} or num_examples")
        counts[site] = decode_json(site, released["num_examples"], "num_examples")
        parts[site] = (counts[site], decode_state_dict(site, released[weights_name],
                                                       shares[weights_name], reference))
    averaged = fedavg(parts)
    return {"num_examples": sum(counts.values()), "sites": len(parts)}, averaged


# -- a plain SuperNode's view: refuse --------------------------------------------------
clientapp = ClientApp()


@clientapp.query()
def _refuse(message: Message, context: Context) -> Message:
    raise RuntimeError("imaginghub's bridge answers only through a site's imaginghub agent "
                       "(imaginghub federation site), which runs its own installed code")
