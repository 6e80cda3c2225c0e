"""Time from a server's start request to its readiness, in both modes, and
20 users starting their servers at once.

- multi-user (``up`` as root): each user's server runs as their own Unix
  account, made at ``users add``;
- single-user (``up`` as an ordinary account, made for this run): every
  server runs as that account.

Baseline printed in the same run: the single-user figures (the mode that
existed before accounts), beside the multi-user ones. Needs root (it makes
accounts).

    /opt/imaginghub/venv/bin/python bench/spawn.py [--users 20] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import pwd
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from _stack import IMAGINGHUB, at_once, site_folder, start_up, write_site_config  # noqa: E402



def as_account(name: str | None) -> list[str]:
    if name is None:
        return []
    e = pwd.getpwnam(name)
    return ["setpriv", f"--reuid={e.pw_uid}", f"--regid={e.pw_gid}", "--init-groups", "--",
            "env", f"HOME={e.pw_dir}", f"USER={name}"]


def measure(label: str, d: Path, account: str | None, users: int, repeat: int) -> dict:
    home = d / "home"
    home.mkdir(exist_ok=True)
    write_site_config(d)
    if account:
        e = pwd.getpwnam(account)
        for p in [home, *home.rglob("*")]:
            os.chown(p, e.pw_uid, e.pw_gid)
    log_path = d / f"{label}.log"

    def cli(*args):
        return subprocess.run([*as_account(account), IMAGINGHUB, "--home", str(home), *args],
                              capture_output=True, text=True, check=True).stdout

    up, run = start_up(home, log_path, before=as_account(account))
    try:
        names = [f"u{i:02d}" for i in range(users)]
        t = time.perf_counter()
        for n in names:
            cli("users", "add", n)
        add_s = (time.perf_counter() - t) / users
        admin = httpx.Client(base_url=run["url"] + "/hub/api", timeout=120, headers={
            "Authorization": f"token {cli('token', 'admin').strip()}"})

        def state(n: str) -> str:
            """ready, starting, or failed (no server and none pending)."""
            model = admin.get(f"/users/{n}").json()
            s = model.get("servers", {}).get("")
            if s and s.get("ready"):
                return "ready"
            return "starting" if s or model.get("pending") else "failed"

        def stop(n: str) -> None:
            admin.delete(f"/users/{n}/server")
            while admin.get(f"/users/{n}").json().get("servers"):
                time.sleep(0.2)

        failed: list[str] = []

        def spawn(n: str, out: list) -> None:
            t = time.perf_counter()
            r = admin.post(f"/users/{n}/server")
            if r.status_code not in (201, 202):
                failed.append(n)
                return
            while (now := state(n)) == "starting" and time.perf_counter() - t < 600:
                time.sleep(0.2)
            if now == "ready":
                out.append(time.perf_counter() - t)
            else:
                failed.append(n)

        one: list[float] = []
        for _ in range(repeat):  # one user alone: the first has its tutorials copied
            spawn(names[0], one)
            stop(names[0])
        together: list[float] = []
        wall = at_once([lambda n=n: spawn(n, together) for n in names], timeout=600)
        for n in names:
            admin.delete(f"/users/{n}/server")
        if len(together) < 2:
            sys.exit(f"{label}: only {len(together)} of {users} servers started ({failed})")
        q = statistics.quantiles(together, n=20)
        return {"label": label, "one": statistics.median(one), "first": one[0],
                "p50": statistics.median(together), "p95": q[18], "max": max(together),
                "ok": len(together), "users": users, "wall": wall, "add": add_s}
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(120)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/spawn.py makes accounts: run it as root")
    results = []
    with site_folder() as d:
        results.append(measure("multi-user", d, None, args.users, args.repeat))
    with site_folder() as d:
        solo = "ihbsolo"
        subprocess.run(["useradd", "--create-home", "--home-dir", str(d / "solo"), solo],
                       check=True)
        try:
            results.append(measure("single-user", d, solo, args.users, args.repeat))
        finally:
            subprocess.run(["pkill", "-KILL", "-u", solo])
            subprocess.run(["userdel", "--remove", "--force", solo], capture_output=True)
    print(f"\nserver start to ready ({os.cpu_count()} cores); {args.users} users at once:")
    print(f"  {'mode':12} {'one user':>9} {'(first)':>8} {'users add':>10}  "
          f"{'all at once: p50':>17} {'p95':>6} {'max':>6} {'ready':>6}")
    for r in results:
        print(f"  {r['label']:12} {r['one']:8.2f}s {r['first']:7.2f}s {r['add']:9.2f}s  "
              f"{r['p50']:16.1f}s {r['p95']:5.1f}s {r['max']:5.1f}s {r['ok']:3d}/{r['users']}")
    print("  (baseline: single-user, the mode that existed before accounts; its earlier "
          "figure on this machine kind: p50 28 s, p95 34 s, all 20 ready)")


if __name__ == "__main__":
    main()
