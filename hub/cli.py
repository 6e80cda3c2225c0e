"""The ``imaginghub`` command."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from .errors import ImagingHubError
from .state import Home

log = logging.getLogger("imaginghub")


def _home(args) -> Home:
    """The state directory, its older settings.json moved to the
    configuration file once (see :func:`.config.migrate`)."""
    from . import config

    home = Home(args.home)
    if args.command != "up" and os.access(home.path, os.W_OK):  # up says it itself
        moved = config.migrate(home)
        if moved:
            print(moved, file=sys.stderr)
    return home


def cmd_config(args) -> int:
    """The reference of every setting; with --check, the site's file checked."""
    from . import config

    if args.check:
        home = _home(args)
        cfg = home.config()
        ours = {c.__name__ for c in config.classes()}
        mine = sum(len(v) for k, v in cfg.items() if k in ours)
        theirs = sorted(k for k in config.foreign(cfg))
        print(f"{home.config_file}: {mine} imaginghub setting{'s' * (mine != 1)}, all known "
              "and of the right type"
              + (f"; passed to their programs: {', '.join(theirs)}" if theirs else ""))
        return 0
    print(config.commented() if args.file else config.reference(), end="")
    return 0


def cmd_up(args) -> int:
    from .stack import Stack, run_foreground

    from . import demo

    series = demo.check_keys(args.demo_series) if args.demo_series else None
    stack = Stack(_home(args), port=args.port, dicom_port=args.dicom_port,
                  demo=args.demo or bool(series), demo_series=series)
    return run_foreground(stack)


def _site_accounts(home: Home):
    """The site's accounts mapping in multi-user mode (None in single-user
    mode); managing accounts needs root."""
    if not home.multi_user:
        return None
    if os.geteuid() != 0:
        raise ImagingHubError("this is a multi-user site: users and their Unix accounts are "
                              "managed as root (sudo imaginghub users ...)")
    return home.accounts()


def cmd_users_add(args) -> int:
    from .hubapi import HubAPI
    from .users import Registry, group_name, validate_name

    home = _home(args)
    home.create()
    accounts = _site_accounts(home)
    registry = Registry(home.users_file)
    validate_name(args.name)
    if accounts is not None and registry.get(args.name) is None:
        accounts.name(args.name)  # refused before anything is written
    user, password = registry.add(args.name, admin=args.admin, projects=args.project or [],
                                  exist_ok=True)
    account = accounts.ensure(user.name) if accounts is not None else None
    if home.read_run():
        api = HubAPI(home)
        api.ensure_user(user.name, user.admin)
        for p in user.projects:
            api.add_to_group(group_name(p), user.name)
    if password:
        print(f"added {user.name}{' (admin)' if user.admin else ''}; password: {password}")
    else:
        print(f"updated {user.name}")
    if account is not None:
        print(f"Unix account: {account.name} (home {account.home})")
    print(f"projects: {', '.join(user.projects) or '(none)'}")
    return 0


def cmd_users_remove(args) -> int:
    from .hubapi import HubAPI
    from .users import Registry

    home = _home(args)
    accounts = _site_accounts(home)
    registry = Registry(home.users_file)
    if registry.get(args.name) is None:
        raise ImagingHubError(f"no user {args.name!r} (see 'imaginghub users list')")
    if home.read_run():
        HubAPI(home).remove_user(args.name)  # stops their server first
    registry.remove(args.name)
    print(f"removed {args.name} from the hub")
    if accounts is not None:
        account = accounts.lock(args.name)
        if account is not None:
            print(f"locked the Unix account {account.name}; its home {account.home} is kept")
    return 0


def cmd_users_list(args) -> int:
    from .users import Registry

    users = Registry(_home(args).users_file).load()
    if not users:
        print("no users yet: 'imaginghub up' creates the admin")
        return 0
    width = max(len(n) for n in users)
    for name in sorted(users):
        u = users[name]
        print(f"{name:<{width}}  {'admin' if u.admin else 'user ':5}  "
              f"{', '.join(u.projects) or '-'}")
    return 0


def cmd_users_passwd(args) -> int:
    from .users import Registry

    password = Registry(_home(args).users_file).set_password(args.name)
    print(f"new password for {args.name}: {password}")
    return 0


def cmd_token(args) -> int:
    from .hubapi import HubAPI
    from .users import Registry

    home = _home(args)
    api = HubAPI(home)
    if Registry(home.users_file).get(args.name) is not None:
        api.ensure_user(args.name, admin=False)
    elif not api.has_user(args.name):  # nor one who logged in with the site's provider
        raise ImagingHubError(f"no user {args.name!r}: add one with 'imaginghub users add "
                              f"{args.name}' (with the site's identity provider, a user "
                              "exists once they have logged in)")
    print(api.new_token(args.name, note=args.note))
    return 0


def cmd_demo_data(args) -> int:
    from . import demo

    home = _home(args)
    run = home.read_run()
    if run is None:
        raise ImagingHubError(
            f"the workspace in {home.path} is not running: start it with 'imaginghub up' "
            "(with --demo it loads the demo data itself)")
    from .services.data.__main__ import db_url
    from .services.data.config import archive_endpoint
    from .services.data.db import Store

    archive = archive_endpoint(home)
    n = demo.load(archive.dicomweb, archive.auth, verify=archive.tls())
    demo.assign_projects(Store(db_url(home)))
    print(f"stored {n} demo instances")
    return 0


def _gateway(home: Home) -> tuple[str, str]:
    """The running gateway's DICOMweb URL and the CLI's token."""
    run = home.read_run()
    if run is None:
        raise ImagingHubError(
            f"the workspace in {home.path} is not running: start it with 'imaginghub up'")
    return run["gateway_url"], home.secret("admin_service_token")


def cmd_ingest(args) -> int:
    from pathlib import Path

    from .ingest import Ingest, Interrupted
    from .users import validate_project

    home = _home(args)
    url, token = _gateway(home)
    project = validate_project(args.project)
    try:
        report = Ingest(url, token, project).run([Path(p) for p in args.paths])
    except Interrupted as e:
        for line in e.report.lines()[1:]:  # what was refused or warned of so far
            print(line)
        raise
    for line in report.lines():
        print(line)
    return 1 if report.refused else 0


def cmd_projects(args) -> int:
    import httpx

    home = _home(args)
    api, headers = _data_api(home)
    if args.projects_command == "list":
        r = httpx.get(f"{api}/projects", headers=headers, timeout=60)
        r.raise_for_status()
        for p in r.json()["projects"]:
            print(f"{p['name']:<24} {p['studies']:>6} studies {p['series']:>7} series")
        return 0
    from .users import validate_project

    project = validate_project(args.project)
    body = {"series": args.series or [], "studies": args.study or []}
    if not body["series"] and not body["studies"]:
        raise ImagingHubError("name what to change with --series UID or --study UID")
    path = f"{api}/projects/{project}/series" + ("/remove" if args.projects_command == "remove"
                                                 else "")
    r = httpx.post(path, json=body, headers=headers, timeout=120)
    if r.status_code != 200:
        raise ImagingHubError(f"the data service refused: HTTP {r.status_code} {r.reason_phrase}")
    result = r.json()
    if "removed" in result:
        print(f"removed {result['removed']} series from {project}")
    else:
        print(f"added {result['added']} series to {project} ({result['already']} there already)")
        for uid in result["unknown"]:
            print(f"  not in the archive: {uid}")
    return 1 if result.get("unknown") else 0


def _data_api(home: Home) -> tuple[str, dict]:
    """The running data service's API URL and the CLI's headers (admin, all projects)."""
    url, token = _gateway(home)
    return (url.rsplit("/dicom-web", 1)[0] + "/api",
            {"Authorization": f"token {token}", "X-Imaginghub-Scope": "all"})


def cmd_catalog(args) -> int:
    import httpx

    home = _home(args)
    api, headers = _data_api(home)
    if args.catalog_command == "import-idc":
        print("importing IDC's series index (about a million series, metadata only)...")
        r = httpx.post(f"{api}/catalog/import-idc", json={"project": args.project},
                       headers=headers, timeout=600)
        if r.status_code != 200:
            raise ImagingHubError(f"the data service refused: HTTP {r.status_code} "
                                  f"{r.reason_phrase}")
        print(f"imported {r.json()['imported']} series into project {r.json()['project']}")
        return 0
    if args.catalog_command == "sync":
        print("re-reading every series of the archive (QIDO-RS)...")
        r = httpx.post(f"{api}/catalog/sync", json={}, headers=headers, timeout=3600)
        if r.status_code != 200:
            raise ImagingHubError(f"the data service refused: HTTP {r.status_code} "
                                  f"{r.reason_phrase}")
        c = r.json()
        print(f"{c['seen']} series seen, {c['updated']} updated, {c['deleted']} removed, "
              f"{c.get('failed', 0)} could not be read")
        return 1 if c.get("failed") else 0
    r = httpx.post(f"{api}/catalog/query", headers=headers, timeout=60,
                   json={"facets": ["collection", "modality"], "limit": 0})
    r.raise_for_status()
    answer = r.json()
    print(f"{answer['total']} series in the catalog")
    for name, counts in answer["facets"].items():
        print(f"  {name}: " + ", ".join(f"{v} {n}" for v, n in counts[:8]))
    return 0


def _jobs(home: Home):
    """The job service's client, as the CLI's admin service (sees every job)."""
    from ..kernels.jobs import Jobs

    run = home.read_run()
    if run is None or "jobs_url" not in run:
        raise ImagingHubError(f"the workspace in {home.path} is not running: start it with "
                              f"'imaginghub up --home {home.path}'")
    return Jobs(run["jobs_url"], home.secret("admin_service_token"))


def _parameter_values(jobs, workflow: str, pairs: list[str]) -> dict:
    """``-p name=value`` pairs: a value is taken as text for a str parameter
    and as JSON (numbers, true/false, lists) for the others."""
    import json

    kinds = {n: p["type"] for n, p in jobs.workflow(workflow)["parameters"].items()}
    out = {}
    for pair in pairs or []:
        name, eq, value = pair.partition("=")
        if not eq:
            raise ImagingHubError(f"-p {pair!r}: write -p NAME=VALUE")
        if kinds.get(name, "").lower() == "str":
            out[name] = value
        else:
            try:
                out[name] = json.loads(value)
            except ValueError:
                out[name] = value
    return out


def cmd_jobs(args) -> int:
    import time

    from ..kernels.errors import PACSError

    jobs = _jobs(_home(args))
    try:
        c = args.jobs_command
        if c == "workflows":
            for w in jobs._json("GET", "workflows")["workflows"]:
                params = ", ".join(f"{n}: {p['type']}" for n, p in w["parameters"].items())
                each = " (once per series)" if w["per_series"] else ""
                print(f"{w['name']:<22} {w['title']}{each}\n{'':<22} {params}")
            return 0
        if c == "list":
            rows = jobs._json("GET", "jobs?limit=%d" % args.limit +
                              (f"&status={args.status}" if args.status else ""))["jobs"]
            for j in rows:
                if args.user and j["user"] != args.user:
                    continue
                print(f"{j['id']}  {j['status']:<11} {100 * j['progress']:3.0f}%  "
                      f"{j['user']:<12} {j['workflow']:<20} {j['submitted'][:19]}  "
                      f"{j['reason'][:60]}")
            return 0
        if c == "submit":
            params = _parameter_values(jobs, args.workflow, args.parameter)
            if args.cohort:
                params["cohort"] = args.cohort
            body = {"workflow": args.workflow, "parameters": params, "user": args.user,
                    "shared": args.shared}
            if args.time_limit:
                body["time_limit"] = args.time_limit
            job = jobs.get(jobs._json("POST", "jobs", body)["id"])
            print(f"job {job.id} queued: {job.workflow} for {job.user}")
        else:
            job = jobs.get(args.id)
        if c == "logs":
            offset = 0
            while True:
                r = jobs._send("GET", f"jobs/{job.id}/log?offset={offset}")
                sys.stdout.write(r.text)
                sys.stdout.flush()
                offset = int(r.headers.get("X-Log-Offset", offset))
                if not args.follow or job.refresh().done:
                    break
                time.sleep(1)
            return 0
        if c == "cancel":
            job.cancel()
            print(f"job {job.id}: {job.status}")
            return 0
        if c == "rerun":
            job = job.rerun()
            print(f"job {job.id} queued: a rerun of {args.id}")
        if c == "show":
            import json

            print(json.dumps({k: v for k, v in job.model.items()}, indent=2))
            return 0
        if getattr(args, "wait", False):
            job.wait(progress=False)
            print(f"job {job.id} {job.status}" + (f": {job.reason}" if job.reason else ""))
            return 0 if job.status == "succeeded" else 1
        return 0
    except (PACSError, ValueError) as e:
        raise ImagingHubError(str(e)) from None


def cmd_modalities(args) -> int:
    """DICOM peers of the archive (kept in modalities.json, applied to the
    running archive at once). A modality may C-ECHO and C-STORE; C-FIND,
    C-MOVE and C-GET only when the admin allows each for it."""
    import httpx

    from . import orthanc

    home = _home(args)
    from .services.data.config import DataService

    site_archive = DataService(config=home.config()).archive_url
    if site_archive:
        raise ImagingHubError(
            f"the archive is the site's own ({site_archive}, c.DataService.archive_url): its "
            "DICOM peers are configured there, not in imaginghub")
    modalities = home.load_modalities()
    if args.modalities_command == "list":
        for name, spec in sorted(modalities.items()):
            m = orthanc.modality_entry(name, spec)
            may = ["echo", "store"] + [f.removeprefix("Allow").lower()
                                       for f in orthanc.MODALITY_FLAGS if m[f]]
            print(f"{name:<16} {m['AET']:<16} {m['Host']}:{m['Port']:<6} may: {', '.join(may)}")
        if not modalities:
            print("no modalities: only known peers may store (imaginghub modalities add ...)")
        return 0
    name = args.name
    run = home.read_run()
    client = (httpx.Client(base_url=run["archive_url"], timeout=30,
                           auth=(orthanc.ARCHIVE_USER, home.secret("archive_password")))
              if run else None)
    if args.modalities_command == "add":
        aet = (args.aet or name).upper()
        if not (1 <= len(aet) <= 16) or not aet.isascii():
            raise ImagingHubError(f"invalid AE title {aet!r}: 1 to 16 ASCII characters")
        spec = {"AET": aet, "Host": args.host, "Port": args.port,
                "AllowFind": args.allow_find, "AllowMove": args.allow_move,
                "AllowGet": args.allow_get}
        modalities[name] = spec
        if client:
            client.put(f"/modalities/{name}",
                       json=orthanc.modality_entry(name, spec)).raise_for_status()
        extra = [w for w, on in (("C-FIND", args.allow_find), ("C-MOVE", args.allow_move),
                                 ("C-GET", args.allow_get)) if on]
        print(f"{name} ({aet} at {args.host}:{args.port}) may now store into the archive"
              + (f" and use {', '.join(extra)}" if extra else " (not query or retrieve)")
              + "; the called AE title names the project (e.g. ONCOLOGY)")
    else:
        if modalities.pop(name, None) is None:
            raise ImagingHubError(f"no modality {name!r}")
        if client:
            client.delete(f"/modalities/{name}")
        print(f"removed {name}")
    home.save_modalities(modalities)
    return 0


def cmd_federation(args) -> int:
    from .services.federation import commands

    return commands.run(args, _home(args))


def cmd_kernelspec(args) -> int:
    from pathlib import Path

    from ..kernels import kernelspec

    if args.prefix:
        target = Path(args.prefix) / "share" / "jupyter"
    else:
        target = Path(sys.prefix) / "share" / "jupyter"
    print(kernelspec.install(target))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="imaginghub", description=__doc__)
    p.add_argument("--home", help="state directory (default: $IMAGINGHUB_HOME, else "
                                  "/var/lib/imaginghub for root, ~/.local/share/imaginghub "
                                  "for anyone else)")
    p.add_argument("-v", "--verbose", action="store_true", help="every library's INFO lines, and imaginghub's debug lines")
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start the workspace (archive and hub) until Ctrl-C")
    up.add_argument("--demo", action="store_true",
                    help="add demo users alice and bob and, if the archive is empty, demo data")
    up.add_argument("--demo-series", metavar="KEY,KEY...",
                    help="with --demo: only these series of the demo set (its keys, such as "
                         "mr-head,mr-head-seg)")
    up.add_argument("--port", type=int, help="the hub's port on 127.0.0.1 for this start "
                                         "(default c.Stack.port, 8000)")
    up.add_argument("--dicom-port", type=int, help="the archive's DICOM port for this start "
                                               "(default c.Archive.dicom_port, 4242)")
    up.set_defaults(fn=cmd_up)

    cfg = sub.add_parser("config", help="every setting of imaginghub_config.py, with its help "
                                        "and default")
    cfg.add_argument("--check", action="store_true",
                     help="check this site's imaginghub_config.py instead")
    cfg.add_argument("--file", action="store_true",
                     help="print a configuration file with every setting commented out")
    cfg.set_defaults(fn=cmd_config)

    users = sub.add_parser("users", help="manage users and their projects")
    us = users.add_subparsers(dest="users_command", required=True)
    add = us.add_parser("add", help="add a user or add projects to one")
    add.add_argument("name")
    add.add_argument("--admin", action="store_true")
    add.add_argument("--project", action="append", metavar="P",
                     help="a project the user belongs to (repeat for several)")
    add.set_defaults(fn=cmd_users_add)
    ls = us.add_parser("list", help="list users, their role and projects")
    ls.set_defaults(fn=cmd_users_list)
    rm = us.add_parser("remove", help="remove a user from the hub and lock their Unix account "
                                      "(their home is kept)")
    rm.add_argument("name")
    rm.set_defaults(fn=cmd_users_remove)
    pw = us.add_parser("passwd", help="set a new generated password and print it")
    pw.add_argument("name")
    pw.set_defaults(fn=cmd_users_passwd)

    tok = sub.add_parser("token", help="print a new API token for a user (needs the running hub)")
    tok.add_argument("name")
    tok.add_argument("--note", default="imaginghub token", help="what the token is for")
    tok.set_defaults(fn=cmd_token)

    dd = sub.add_parser("demo-data", help="load the demo data set into the running archive")
    dd.set_defaults(fn=cmd_demo_data)

    ing = sub.add_parser("ingest", help="store DICOM files, folders or zip files into a project")
    ing.add_argument("paths", nargs="+", metavar="PATH")
    ing.add_argument("--project", required=True, help="the project the data goes into")
    ing.set_defaults(fn=cmd_ingest)

    prj = sub.add_parser("projects", help="what belongs to which project (needs the running hub)")
    ps = prj.add_subparsers(dest="projects_command", required=True)
    ps.add_parser("list", help="projects with their sizes").set_defaults(fn=cmd_projects)
    for verb, text in (("add", "put series or whole studies into a project"),
                       ("remove", "take series or whole studies out of a project")):
        sp = ps.add_parser(verb, help=text)
        sp.add_argument("project")
        sp.add_argument("--series", action="append", metavar="UID")
        sp.add_argument("--study", action="append", metavar="UID")
        sp.set_defaults(fn=cmd_projects)

    cat = sub.add_parser("catalog", help="the series catalog (needs the running hub)")
    cs = cat.add_subparsers(dest="catalog_command", required=True)
    cs.add_parser("status", help="how many series, by collection and modality").set_defaults(
        fn=cmd_catalog)
    cs.add_parser("sync", help="re-read every series of the archive now (the catalog also "
                               "follows the archive's changes while up runs)").set_defaults(
        fn=cmd_catalog)
    ci = cs.add_parser("import-idc", help="load IDC's index of about a million series "
                                          "(metadata only, from the idc-index-data package)")
    ci.add_argument("--project", default="idc", help="the project that sees it (default: idc)")
    ci.set_defaults(fn=cmd_catalog)

    jb = sub.add_parser("jobs", help="workflow runs: submit, list, logs, cancel, rerun "
                                     "(needs the running hub)")
    js = jb.add_subparsers(dest="jobs_command", required=True)
    js.add_parser("workflows", help="the workflows and their parameters").set_defaults(
        fn=cmd_jobs)
    jl = js.add_parser("list", help="jobs, newest first")
    jl.add_argument("--status", choices=["queued", "running", "succeeded", "failed",
                                         "cancelled", "timed_out", "interrupted"])
    jl.add_argument("--user")
    jl.add_argument("--limit", type=int, default=50)
    jl.set_defaults(fn=cmd_jobs)
    jsub = js.add_parser("submit", help="run a workflow as a user")
    jsub.add_argument("workflow")
    jsub.add_argument("--user", required=True, help="the job runs as this user, with their "
                                                    "access")
    jsub.add_argument("--cohort", help='a cohort reference, such as "lung-ct@2"')
    jsub.add_argument("-p", "--parameter", action="append", metavar="NAME=VALUE",
                      help="a parameter (text for str parameters, JSON for the others)")
    jsub.add_argument("--shared", action="store_true", help="visible to the project's members")
    jsub.add_argument("--time-limit", type=int, metavar="SECONDS")
    jsub.add_argument("--wait", action="store_true", help="wait until it ends")
    jsub.set_defaults(fn=cmd_jobs)
    for name, text in (("logs", "a job's log"), ("cancel", "stop a job"),
                       ("rerun", "run a job again with exactly its inputs"),
                       ("show", "a job's record: provenance, status, times")):
        jp = js.add_parser(name, help=text)
        jp.add_argument("id")
        if name == "logs":
            jp.add_argument("-f", "--follow", action="store_true", help="until the job ends")
        if name == "rerun":
            jp.add_argument("--wait", action="store_true", help="wait until it ends")
        jp.set_defaults(fn=cmd_jobs)

    mod = sub.add_parser("modalities", help="DICOM peers allowed to C-STORE into the archive "
                                            "(and, when allowed, to query or retrieve)")
    ms = mod.add_subparsers(dest="modalities_command", required=True)
    ms.add_parser("list").set_defaults(fn=cmd_modalities)
    ma = ms.add_parser("add", help="allow a peer (its calling AE title, host and port)")
    ma.add_argument("name")
    ma.add_argument("--aet", help="its AE title (default: NAME in capitals)")
    ma.add_argument("--host", default="127.0.0.1")
    ma.add_argument("--port", type=int, default=104)
    for flag, what in (("find", "C-FIND (query the archive: every series, patient names "
                                "included, whatever the project)"),
                       ("move", "C-MOVE (ask the archive to send series to a known peer)"),
                       ("get", "C-GET (retrieve series over this association)")):
        ma.add_argument(f"--allow-{flag}", action="store_true", help=f"allow {what}")
    ma.set_defaults(fn=cmd_modalities)
    mr = ms.add_parser("remove")
    mr.add_argument("name")
    mr.set_defaults(fn=cmd_modalities)

    from .services.federation import commands as federation

    federation.add_parser(sub)
    sub.choices["federation"].set_defaults(fn=cmd_federation)

    ks = sub.add_parser("kernelspec", help="install the 'Imaging (Python 3)' kernelspec")
    ks.add_argument("--prefix", help="install prefix (default: this Python's)")
    ks.set_defaults(fn=cmd_kernelspec)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    # Only imaginghub's own messages reach the terminal: libraries' INFO
    # lines (highdicom, alembic, httpx's line per request) would bury them.
    logging.basicConfig(  # -v: the libraries' INFO lines too
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
    )
    logging.getLogger("imaginghub").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return args.fn(args) or 0
    except ImagingHubError as e:
        print(f"imaginghub: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
