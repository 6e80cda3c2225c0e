"""``imaginghub federation ...``: the admin's commands at a coordinator and
at a site. Everything lives below the state directory's ``federation/``
folder: ``coordinator.json`` and ``coordinator/`` at a coordinator,
``site.json`` and ``site/`` (node key, policy, audit, pending requests) at
a site. One installation can be either, or both."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from ...errors import ConfigError, ImagingHubError

FOLDER = "federation"
API_TOKEN = "federation_service_token"  # the researchers' API's, as a hub service


def _dir(home) -> Path:
    return home.path / FOLDER


def _read(path: Path, what: str, hint: str) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ImagingHubError(f"this installation is not {what} yet: {hint}") from None


def _write(path: Path, data: dict) -> None:
    from ...state import write_private

    write_private(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def role_config(state_dir: Path, role: str) -> dict:
    """``coordinator.json`` or ``site.json`` (``role``) of the state
    directory ``state_dir``; {} when this installation has not that role."""
    try:
        return json.loads((state_dir / FOLDER / f"{role}.json").read_text())
    except FileNotFoundError:
        return {}


def roles(home) -> list[str]:
    """A line for each federation role of this installation, with the
    command that runs it (``up`` shows them: the hub only lists their APIs)."""
    coord, site = role_config(home.path, "coordinator"), role_config(home.path, "site")
    return [*([f"coordinator {coord['name']}: 'imaginghub federation coordinator start' "
               "opens it to the sites and serves the researchers' API"] if coord else []),
            *([f"site {site['name']} of {site['superlink']}: 'imaginghub federation site "
               "start' connects it and serves its admins' API"] if site else [])]


def _pairs(pairs: list[str], what: str) -> dict:
    out = {}
    for p in pairs or []:
        name, sep, value = p.partition("=")
        if not sep or not name:
            raise ConfigError(f"{what} {p!r} is not NAME=VALUE")
        try:
            out[name] = json.loads(value)
        except ValueError:
            out[name] = value
    return out


def _stop_on_sigterm() -> None:
    """SIGTERM (a service manager's stop) ends a foreground command as
    Ctrl-C does: its children stopped, its firewall table removed."""
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))


# -- the coordinator ------------------------------------------------------------------
def coordinator(home):
    from .coordinator import Coordinator

    cfg = _read(_dir(home) / "coordinator.json", "a coordinator",
                "run 'imaginghub federation coordinator init --name NAME'")
    return Coordinator(_dir(home) / "coordinator", cfg["name"], link_port=cfg["link_port"],
                       fleet_port=cfg["fleet_port"], fleet_host=cfg["fleet_host"],
                       server_names=cfg["server_names"])


def init_coordinator(home, name: str, *, fleet_host: str = "127.0.0.1", fleet_port: int = 9092,
                     link_port: int | None = None, api_port: int | None = None,
                     server_names: list[str] | None = None):
    """This installation as a coordinator (once): the federation's CA and
    server certificate, the ports, and the token of the researchers' API,
    which the hub routes to at /services/federation/ once the workspace is
    (re)started."""
    from ...state import free_port
    from .coordinator import Coordinator

    cfg = {"name": name, "fleet_host": fleet_host, "fleet_port": fleet_port,
           "link_port": link_port or free_port(), "api_port": api_port or free_port(),
           "server_names": server_names or ["localhost", "127.0.0.1"]}
    coord = Coordinator(_dir(home) / "coordinator", name, link_port=cfg["link_port"],
                        fleet_port=fleet_port, fleet_host=fleet_host,
                        server_names=cfg["server_names"])
    coord.init()
    home.secret(API_TOKEN)
    _write(_dir(home) / "coordinator.json", cfg)
    return coord


def _researchers(home, args) -> int:
    """Who may submit and watch studies through the hub: the hub group
    ``federation``, kept in coordinator.json too (the hub loads it at every
    start)."""
    from ...hubapi import HubAPI
    from .api import RESEARCHERS

    path = _dir(home) / "coordinator.json"
    cfg = _read(path, "a coordinator", "run 'imaginghub federation coordinator init --name "
                                       "NAME'")
    names = set(cfg.get("researchers", []))
    if args.action in ("add", "remove"):
        if not args.name:
            raise ConfigError(f"say whom to {args.action}: researchers {args.action} NAME")
        if args.action == "add":
            names.add(args.name)
        else:
            names.discard(args.name)
        cfg["researchers"] = sorted(names)
        _write(path, cfg)
        if home.read_run():
            api = HubAPI(home)
            if args.action == "add":
                api.ensure_user(args.name, admin=False)
                api.add_to_group(RESEARCHERS, args.name)
            else:
                api.request("DELETE", f"/groups/{RESEARCHERS}/users",
                            json={"users": [args.name]})
    print(f"researchers (hub group {RESEARCHERS}): " + (", ".join(sorted(names)) or "(none)"))
    return 0


def cmd_coordinator(args, home) -> int:
    c = args.coordinator_command
    if c == "init":
        coord = init_coordinator(home, args.name, fleet_host=args.fleet_host,
                                 fleet_port=args.fleet_port, link_port=args.link_port,
                                 api_port=args.api_port, server_names=args.server_name)
        print(f"coordinator {args.name}: sites connect to {args.fleet_host}:{args.fleet_port}"
              f" and trust the federation's CA, {coord.pki / 'ca.crt'} (give it to each "
              "site's admin).")
        return 0
    coord = coordinator(home)
    if c == "start":
        from .api import ResearchersAPI

        _stop_on_sigterm()
        coord.start()
        api = None
        try:
            api = ResearchersAPI.for_home(home, coord)
            print(f"coordinator {coord.name}: the Fleet API for sites on "
                  f"{coord.fleet_host}:{coord.fleet_port}"
                  + (f", researchers' studies at {api.public_url}" if api else
                     " (researchers' API: start the workspace first)")
                  + " (Ctrl-C stops it)", flush=True)
            while all(p.alive() for p in coord.procs):
                time.sleep(1)
            dead = [p for p in coord.procs if not p.alive()]
            raise ImagingHubError(f"{dead[0].name} stopped:\n{dead[0].tail()}")
        finally:
            if api is not None:
                api.stop()
            coord.stop()
    if c == "researchers":
        return _researchers(home, args)
    if c == "register":
        node = coord.register(args.site, Path(args.public_key))
        print(f"site {args.site} registered (node {node})")
        return 0
    if c == "unregister":
        node = coord.unregister(args.site)
        print(f"site {args.site} unregistered (node {node}): it can no longer connect")
        return 0
    if c == "sites":
        for s in coord.status():
            print(f"{s['site']:<20} node {s['node']:<22} {s['status']}")
        return 0
    return 2


def cmd_study(args, home) -> int:
    from ..jobs.workflows import load, project_workflows
    from .coordinator import StudySpec

    coord = coordinator(home)
    if args.study_command == "submit":
        notebook = Path(args.notebook) if args.notebook else \
            project_workflows() / f"{args.workflow}.ipynb"
        if not notebook.is_file():
            raise ConfigError(f"no workflow {args.workflow} here: give its notebook with "
                              "--notebook PATH")
        wf = load(notebook)
        if not wf.federated:
            raise ConfigError(f"{notebook} is not a federated workflow (its metadata has no "
                              "imaginghub.federated block)")
        spec = StudySpec(args.study, args.workflow, notebook, args.cohort_alias,
                         _pairs(args.parameter, "parameter"), rounds=args.rounds,
                         min_sites=args.min_sites, round_timeout=args.round_timeout)
        out = coord.submit(spec)
        print(f"study {args.study}: run {out['run_id']} started (notebook "
              f"{out['notebook_sha256']}); sites approve that SHA-256")
        if not args.wait:
            return 0
        rec = coord.wait(args.study, args.rounds * (args.round_timeout + 150))
    elif args.study_command == "rerun":
        first = coord.record(args.study)
        out = coord.rerun(args.study)
        print(f"study {args.study}: rerun {out['rerun']} started from its record")
        rec = coord.wait(args.study, 3600 * 6, rerun=out["rerun"])
        show_record(rec)
        same = coord.same_aggregate(first, rec)
        print("the aggregate is " + ("bitwise identical to the study's" if same else
                                     "NOT the study's"))
        return 0 if same else 1
    else:
        rec = coord.record(args.study)
        if rec is None:
            raise ImagingHubError(f"no study {args.study} at this coordinator")
    show_record(rec)
    return 0 if rec.get("status") != "failed" else 1


def show_record(rec: dict, out=sys.stdout) -> None:
    """The rounds, what each site sent, the aggregate."""
    print(f"study {rec['study']} ({rec['workflow']}): {rec['status']}"
          + (f": {rec['reason']}" if rec.get("reason") else ""), file=out)
    for r in rec["rounds"]:
        print(f"  round {r['round']}: {r['status']} in {r['seconds']} s", file=out)
        for site, s in r["sites"].items():
            sent = sum(v["bytes"] for v in s["received"].values())
            what = f"{s['status']}" + (f" ({s['reason']})" if s["reason"] else "")
            print(f"    {site:<16} {what}; left the site: {len(s['received'])} outputs, "
                  f"{sent} bytes", file=out)
            for name, v in s["received"].items():
                print(f"      {name:<16} {v['bytes']:>8} bytes  sha256 {v['sha256'][:16]}",
                      file=out)
    if "aggregate" in rec:
        print("  aggregate: " + json.dumps(rec["aggregate"], sort_keys=True), file=out)


# -- the site ------------------------------------------------------------------------
def init_site(home, name: str, *, coordinator: str, ca: Path, runtime_port: int | None = None,
              pin: str | None = None) -> Path:
    """This installation as a site of ``coordinator`` (``HOST:PORT`` of its
    Fleet API, trusted by the federation's ``ca``): the node key (made
    once; its public half is returned), the ports, and the token of the
    site admins' API (the hub service ``federation-site``, registered at
    the workspace's next start). Run again, it points the site at another
    coordinator and keeps its key and the API's port."""
    from ...state import free_port
    from .agent import SiteAgent
    from .bridge import bridge_hash
    from .siteapi import TOKEN

    folder = _dir(home) / "site"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ca, folder / "federation-ca.crt")
    old = role_config(home.path, "site")
    cfg = {"name": name, "superlink": coordinator,
           "runtime_port": runtime_port or old.get("runtime_port") or free_port(),
           "api_port": old.get("api_port") or free_port(), "pinned": pin or bridge_hash()}
    agent = SiteAgent(folder, name, superlink=coordinator, ca=folder / "federation-ca.crt",
                      runtime_port=cfg["runtime_port"], pinned=cfg["pinned"],
                      handle=lambda req: None)
    pub = agent.init()
    home.secret(TOKEN)
    _write(_dir(home) / "site.json", cfg)
    return pub


def cmd_site(args, home) -> int:
    from .policy import Study
    from .siteapi import SiteAdmin

    c = args.site_command
    if c == "init":
        pub = init_site(home, args.name, coordinator=args.coordinator, ca=Path(args.ca),
                        runtime_port=args.runtime_port, pin=args.pin)
        cfg = json.loads((_dir(home) / "site.json").read_text())
        print(f"site {args.name}: send this public key to the coordinator's admin "
              f"({pub}):\n{pub.read_text().strip()}\nThe site runs only the bridge app "
              f"{cfg['pinned']}. Restart the workspace for the site admins' API "
              "(/services/federation-site/api/).")
        return 0
    admin = SiteAdmin(home)
    if c == "start":
        return _site_start(home, admin)
    if c == "policy":
        print(json.dumps(json.loads(admin.policy_path.read_text())
                         if admin.policy_path.exists() else {"studies": []}, indent=1))
        return 0
    if c == "approve":
        params = {}
        for rule in args.param or []:
            name, _, spec = rule.partition("=")
            if ":" in spec:
                low, _, high = spec.partition(":")
                params[name] = {k: float(v) for k, v in (("min", low), ("max", high)) if v}
            else:
                params[name] = {"values": [json.loads(v) if v[:1].isdigit() else v
                                           for v in spec.split(",")]}
        admin.approve(Study(args.coordinator, args.study, notebooks=args.notebook,
                            cohorts=_pairs(args.cohort, "cohort"), parameters=params,
                            min_cell=args.min_cell, auto=args.auto))
    elif c == "approve-round":
        admin.approve_round(args.coordinator, args.study, args.round)
    elif c == "revoke":
        if not admin.revoke(args.coordinator, args.study):
            raise ImagingHubError(f"study {args.coordinator}/{args.study} is not approved "
                                  "here")
    if c in ("approve", "approve-round", "revoke"):
        print(f"{c}: {args.coordinator}/{args.study} saved in {admin.policy_path}")
        return 0
    if c == "pending":
        for key, req in sorted(admin.pending().items()):
            print(f"{key}: workflow {req['workflow']} notebook {req['notebook_sha256']} "
                  f"cohort alias {req['cohort_alias']} parameters "
                  f"{json.dumps(req['parameters'], sort_keys=True)}")
        return 0
    if c == "audit":
        for row in admin.audit.rows(study=args.study):
            print(json.dumps(row, sort_keys=True, default=str))
        return 0
    if c == "preview":
        return _site_preview(admin, args)
    return 2


def _site_start(home, admin) -> int:
    from .agent import SiteAgent, site_round_handler
    from .siteapi import SiteAPI

    cfg = admin.cfg
    agent = SiteAgent(admin.folder, cfg["name"], superlink=cfg["superlink"],
                      ca=admin.folder / "federation-ca.crt", runtime_port=cfg["runtime_port"],
                      pinned=cfg["pinned"], handle=site_round_handler(admin.site_round(
                          admin.policy)))
    _stop_on_sigterm()
    agent.start()
    api = None
    try:
        api, why = SiteAPI.for_home(home, admin)
        print(f"site {cfg['name']}: connected out to {cfg['superlink']}; rounds run as the "
              "site's policy says; "
              + (f"the site admins' API at {api.public_url}" if api else
                 f"(the site admins' API is off: {why})") + " (Ctrl-C stops it)", flush=True)
        while agent.node.alive():
            time.sleep(1)
        raise ImagingHubError(f"the SuperNode stopped:\n{agent.node.tail()}")
    finally:
        if api is not None:
            api.stop()
        agent.stop()


def _site_preview(admin, args) -> int:
    """Run a pending round here as approved for this look only, and show
    what would leave: nothing is sent, nothing is audited."""
    from .siteapi import released_view

    outcome = admin.preview(args.request, args.cohort, args.min_cell)
    print(f"preview of {args.request} on {args.cohort}: {outcome.status}"
          + (f" ({outcome.reason})" if outcome.reason else ""))
    for name, r in outcome.released.items():
        print(f"  {name:<16} {r.kind:<10} {r.size:>8} bytes  suppressed cells: "
              f"{len(r.suppressed)} {r.suppressed[:10]}")
        content = json.dumps(released_view(r)["content"], sort_keys=True)
        print(f"    {content[:400]}")
    return 0 if outcome.status == "released" else 1


# -- the parser ----------------------------------------------------------------------
def add_parser(sub) -> None:
    fed = sub.add_parser("federation", help="federated studies: a coordinator and sites")
    fs = fed.add_subparsers(dest="federation_command", required=True)
    fs.add_parser("bridge-hash", help="the SHA-256 of this installation's bridge app (what "
                                      "a site pins)")
    de = fs.add_parser("demo", help="a coordinator and three sites on loopback, each its own "
                                    "workspace with the demo data: both shipped federated "
                                    "workflows run, then everything stops")
    de.add_argument("--folder", help="where the demo's workspaces live (default: a new "
                                     "temporary folder, removed at the end)")
    de.add_argument("--keep", action="store_true", help="keep the folder (the studies' "
                                                         "records and the trained model)")

    co = fs.add_parser("coordinator", help="this installation as a study's coordinator")
    cs = co.add_subparsers(dest="coordinator_command", required=True)
    ci = cs.add_parser("init", help="its CA, server certificate and ports (once)")
    ci.add_argument("--name", required=True)
    ci.add_argument("--fleet-host", default="127.0.0.1",
                    help="where sites connect (default: loopback only)")
    ci.add_argument("--fleet-port", type=int, default=9092)
    ci.add_argument("--link-port", type=int, help="the SuperLink's loopback port")
    ci.add_argument("--api-port", type=int, help="the researchers' API's loopback port (the "
                                                 "hub routes /services/federation/ to it)")
    ci.add_argument("--server-name", action="append",
                    help="a name or address sites use for it (repeat)")
    cs.add_parser("start", help="run the SuperLink and the sites' Fleet proxy until Ctrl-C")
    cr = cs.add_parser("register", help="register a site's node key by its name")
    cr.add_argument("site")
    cr.add_argument("public_key")
    cu = cs.add_parser("unregister", help="withdraw a site's node key (it can no longer "
                                          "connect)")
    cu.add_argument("site")
    cs.add_parser("sites", help="the registered sites and whether they are online")
    rs = cs.add_parser("researchers", help="who may submit and watch studies through the "
                                           "hub (its group 'federation'; admins may too)")
    rs.add_argument("action", choices=["list", "add", "remove"])
    rs.add_argument("name", nargs="?")

    st = fs.add_parser("study", help="submit and watch studies (at the coordinator)")
    ss = st.add_subparsers(dest="study_command", required=True)
    sm = ss.add_parser("submit", help="start a study's rounds at every site")
    sm.add_argument("study")
    sm.add_argument("--workflow", required=True)
    sm.add_argument("--notebook", help="its notebook (default: the shipped workflow)")
    sm.add_argument("--cohort-alias", required=True, help="the name sites map to a cohort")
    sm.add_argument("-p", "--parameter", action="append", metavar="NAME=VALUE")
    sm.add_argument("--rounds", type=int, default=1)
    sm.add_argument("--min-sites", type=int, default=1)
    sm.add_argument("--round-timeout", type=float, default=600)
    sm.add_argument("--wait", action="store_true", help="wait for the end and show it")
    sh = ss.add_parser("show", help="the rounds, what left each site, the aggregate")
    sh.add_argument("study")
    sr = ss.add_parser("rerun", help="run the study again from its record and compare the "
                                     "aggregates, byte for byte")
    sr.add_argument("study")

    si = fs.add_parser("site", help="this installation as a site of a federation")
    ss = si.add_subparsers(dest="site_command", required=True)
    sn = ss.add_parser("init", help="the site's node key (once); prints its public half")
    sn.add_argument("--name", required=True)
    sn.add_argument("--coordinator", required=True, help="HOST:PORT of its Fleet API")
    sn.add_argument("--ca", required=True, help="the federation's CA certificate")
    sn.add_argument("--runtime-port", type=int)
    sn.add_argument("--pin", help="the bridge app's SHA-256 (default: this installation's)")
    ss.add_parser("start", help="connect out and answer rounds until Ctrl-C (needs the "
                                "running workspace)")
    ss.add_parser("policy", help="what this site approves")
    sa = ss.add_parser("approve", help="approve a study of a coordinator")
    sa.add_argument("coordinator")
    sa.add_argument("study")
    sa.add_argument("--notebook", action="append", required=True, metavar="SHA256")
    sa.add_argument("--cohort", action="append", required=True,
                    metavar="ALIAS=PROJECT/NAME@VERSION")
    sa.add_argument("--param", action="append", metavar="NAME=MIN:MAX|NAME=V1,V2")
    sa.add_argument("--min-cell", type=int, default=5)
    sa.add_argument("--auto", action="store_true", help="run rounds at once (otherwise "
                                                        "each waits for approve-round)")
    for verb, text in (("approve-round", "let one round of an approved study run"),
                       ("revoke", "withdraw a study's approval")):
        sv = ss.add_parser(verb, help=text)
        sv.add_argument("coordinator")
        sv.add_argument("study")
        if verb == "approve-round":
            sv.add_argument("round", type=int)
    ss.add_parser("pending", help="rounds that wait for this site's admin")
    sp = ss.add_parser("preview", help="run a pending round here and show what would leave "
                                       "(nothing is sent)")
    sp.add_argument("request", help="COORDINATOR/STUDY/ROUND, as 'pending' lists it")
    sp.add_argument("--cohort", required=True, help="PROJECT/NAME@VERSION to run it on")
    sp.add_argument("--min-cell", type=int, default=5)
    sd = ss.add_parser("audit", help="what left this site: one row per output")
    sd.add_argument("--study")


def run(args, home) -> int:
    c = args.federation_command
    if c == "bridge-hash":
        from .bridge import bridge_hash

        print(bridge_hash())
        return 0
    if c == "demo":
        from . import demo

        _stop_on_sigterm()
        return demo.main(args.folder, keep=args.keep)
    return {"coordinator": cmd_coordinator, "study": cmd_study, "site": cmd_site}[c](args, home)
