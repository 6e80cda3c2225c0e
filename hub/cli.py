"""The ``imaginghub`` command."""

from __future__ import annotations

import argparse
import logging
import sys

from .errors import ImagingHubError
from .state import Home

log = logging.getLogger("imaginghub")


def _home(args) -> Home:
    return Home(args.home)


def cmd_up(args) -> int:
    from .stack import Stack, run_foreground

    stack = Stack(_home(args), port=args.port, dicom_port=args.dicom_port, demo=args.demo)
    return run_foreground(stack)


def cmd_users_add(args) -> int:
    from .hubapi import HubAPI
    from .users import Registry, group_name

    home = _home(args)
    home.create()
    registry = Registry(home.users_file)
    user, password = registry.add(args.name, admin=args.admin, projects=args.project or [],
                                  exist_ok=True)
    if home.read_run():
        api = HubAPI(home)
        api.ensure_user(user.name, user.admin)
        for p in user.projects:
            api.add_to_group(group_name(p), user.name)
    if password:
        print(f"added {user.name}{' (admin)' if user.admin else ''}; password: {password}")
    else:
        print(f"updated {user.name}")
    print(f"projects: {', '.join(user.projects) or '(none)'}")
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
    if Registry(home.users_file).get(args.name) is None:
        raise ImagingHubError(f"no user {args.name!r}; add one with 'imaginghub users add {args.name}'")
    api = HubAPI(home)
    api.ensure_user(args.name, admin=False)
    print(api.new_token(args.name, note=args.note))
    return 0


def cmd_demo_data(args) -> int:
    from . import demo, orthanc

    home = _home(args)
    run = home.read_run()
    if run is None:
        raise ImagingHubError(
            f"the workspace in {home.path} is not running: start it with 'imaginghub up' "
            "(with --demo it loads the demo data itself)")
    from .services.data.__main__ import db_url
    from .services.data.db import Store

    n = demo.load(run["dicomweb_url"], (orthanc.ARCHIVE_USER, home.secret("archive_password")))
    demo.assign_projects(Store(db_url(home)))
    print(f"stored {n} demo instances")
    return 0


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
    p.add_argument("--home", help="state directory (default: $IMAGINGHUB_HOME or "
                                  "~/.local/share/imaginghub)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start the workspace (archive and hub) until Ctrl-C")
    up.add_argument("--demo", action="store_true",
                    help="add demo users alice and bob and, if the archive is empty, demo data")
    up.add_argument("--port", type=int, help="the hub's port on 127.0.0.1 (default 8000)")
    up.add_argument("--dicom-port", type=int, help="the archive's DICOM port (default 4242)")
    up.set_defaults(fn=cmd_up)

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
    pw = us.add_parser("passwd", help="set a new generated password and print it")
    pw.add_argument("name")
    pw.set_defaults(fn=cmd_users_passwd)

    tok = sub.add_parser("token", help="print a new API token for a user (needs the running hub)")
    tok.add_argument("name")
    tok.add_argument("--note", default="imaginghub token", help="what the token is for")
    tok.set_defaults(fn=cmd_token)

    dd = sub.add_parser("demo-data", help="load the demo data set into the running archive")
    dd.set_defaults(fn=cmd_demo_data)

    ks = sub.add_parser("kernelspec", help="install the 'Imaging (Python 3)' kernelspec")
    ks.add_argument("--prefix", help="install prefix (default: this Python's)")
    ks.set_defaults(fn=cmd_kernelspec)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
    )
    # httpx logs every request at INFO: too chatty for a terminal.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        return args.fn(args) or 0
    except ImagingHubError as e:
        print(f"imaginghub: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
