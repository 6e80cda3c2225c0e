"""The job starter: ``python -m imaginghub.hub.services.jobs.starter ...``.

The one part of the job machinery that may switch users. ``imaginghub up``
runs it (as root in multi-user mode, with nothing secret in its
environment); the job service, which runs as the service account, asks it
over a Unix socket (``HOME/jobs/starter.sock``, 0600, the service
account's; the peer's uid is checked too) to start, stop and clean up jobs.
It keeps papermill imported, so a job is a fork of a warm process (about a
second less per job than a fresh interpreter).

A job's folder ``RUNS/ID`` belongs to the job's user (in multi-user mode
with the service account's group, mode 2750, so the service can read what
the job leaves and nobody else can): ``spec.json``, ``notebook.ipynb`` (the
kept notebook), ``log.txt``, ``output.ipynb`` and ``work/``. The forked job
becomes the user's account (groups, gid, uid, umask 077) in a session of its
own before it runs anything, and goes on if the starter ends.

Protocol: one JSON object per line each way.

- ``{"op": "start", "id", "user", "spec", "notebook", "env"}`` -> ``{"pid", "started"}``
- ``{"op": "exits"}`` -> ``{"exits": {pid: code}}`` (codes of jobs that ended
  since the last ask; negative: the signal)
- ``{"op": "stop", "pid", "started", "grace"}``: SIGTERM to the job's
  process tree, SIGKILL to what is left after ``grace`` seconds
- ``{"op": "clean_up", "id"}``: kill what still carries the job's id
- ``{"op": "remove", "id"}``: delete the job's folder

Any other answer is ``{"error": reason}``. The loop stays single threaded (a
fork copies only the forking thread, and no lock may be held by another).
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import signal
import socket
import struct
import sys
import time
import traceback
from pathlib import Path

JOB_FILES = ("spec.json", "notebook.ipynb", "log.txt", "output.ipynb")


class Starter:
    def __init__(self, socket_path: Path, runs: Path, runtime_root: Path, *, site_home: Path,
                 multi_user: bool, service_uid: int, service_gid: int):
        self.socket_path = Path(socket_path)
        self.runs = Path(runs)
        self.runtime_root = Path(runtime_root)
        self.site_home = Path(site_home)
        self.multi_user = multi_user
        self.service_uid, self.service_gid = service_uid, service_gid
        self.allowed = {0, os.geteuid(), service_uid}
        self.exits: dict[int, int] = {}
        self.kill_at: list[tuple[float, list[int]]] = []
        self.clients: dict[socket.socket, bytes] = {}

    # -- the loop -------------------------------------------------------------
    def serve(self) -> None:
        self.socket_path.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            listener.bind(str(self.socket_path))
        finally:
            os.umask(old)
        if os.geteuid() == 0:
            os.chown(self.socket_path, self.service_uid, self.service_gid)
        os.chmod(self.socket_path, 0o600)
        listener.listen(8)
        stop = []
        signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
        signal.signal(signal.SIGINT, lambda *_: stop.append(1))
        while not stop:
            try:
                ready, _, _ = select.select([listener, *self.clients], [], [], 0.1)
            except InterruptedError:
                continue
            self._reap()
            self._kill_due()
            for s in ready:
                if s is listener:
                    self._accept(listener)
                else:
                    self._read(s)
        listener.close()
        self.socket_path.unlink(missing_ok=True)

    def _accept(self, listener: socket.socket) -> None:
        conn, _ = listener.accept()
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _, uid, _ = struct.unpack("3i", creds)
        if uid not in self.allowed:
            conn.close()
            return
        self.clients[conn] = b""

    def _read(self, conn: socket.socket) -> None:
        try:
            chunk = conn.recv(1 << 20)
        except OSError:
            chunk = b""
        if not chunk:
            self.clients.pop(conn, None)
            conn.close()
            return
        pending = self.clients[conn] + chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            try:
                answer = self.handle(json.loads(line))
            except Exception as e:  # a bad request: say so, keep serving
                answer = {"error": f"{type(e).__name__}: {e}"}
            try:
                conn.sendall(json.dumps(answer).encode() + b"\n")
            except OSError:
                break
        self.clients[conn] = pending

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.exits[pid] = (-os.WTERMSIG(status) if os.WIFSIGNALED(status)
                               else os.WEXITSTATUS(status))

    def _kill_due(self) -> None:
        now = time.monotonic()
        due = [pids for t, pids in self.kill_at if t <= now]
        self.kill_at = [(t, pids) for t, pids in self.kill_at if t > now]
        for pids in due:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    # -- requests -------------------------------------------------------------------
    def handle(self, ask: dict) -> dict:
        op = ask.get("op")
        if op == "start":
            return self.start(ask)
        if op == "exits":
            exits, self.exits = self.exits, {}
            return {"exits": {str(k): v for k, v in exits.items()}}
        if op == "stop":
            return self.stop(int(ask["pid"]), float(ask.get("started", 0)),
                             float(ask.get("grace", 5)))
        if op == "clean_up":
            return {"killed": self.clean_up(self._id(ask))}
        if op == "remove":
            shutil.rmtree(self.runs / self._id(ask), ignore_errors=True)
            return {"ok": True}
        return {"error": f"unknown request {op!r}"}

    @staticmethod
    def _id(ask: dict) -> str:
        job_id = str(ask["id"])
        if not (len(job_id) == 16 and all(c in "0123456789abcdef" for c in job_id)):
            raise ValueError(f"not a job id: {job_id!r}")
        return job_id

    def account(self, user: str):
        from ...accounts import Account

        if self.multi_user:
            from ...state import Home

            return Home(self.site_home).accounts().ensure(user)
        import pwd

        return Account.of(pwd.getpwuid(os.geteuid()))

    def start(self, ask: dict) -> dict:
        from ...accounts import runtime_dir

        job_id = self._id(ask)
        account = self.account(str(ask["user"]))
        job_dir = self.runs / job_id
        self._make_dir(job_dir, account)
        self._make_dir(job_dir / "work", account)
        spec = dict(ask["spec"], notebook=str(job_dir / "notebook.ipynb"))
        self._write(job_dir / "spec.json", json.dumps(spec, indent=2).encode() + b"\n", account)
        self._write(job_dir / "notebook.ipynb", Path(ask["notebook"]).read_bytes(), account)
        for name in ("log.txt", "output.ipynb"):
            self._write(job_dir / name, b"", account)
        env = dict(ask["env"])
        env["JUPYTER_RUNTIME_DIR"] = str(runtime_dir(self.runtime_root, account))
        if self.multi_user:
            env.update(HOME=account.home, USER=account.name, LOGNAME=account.name)
        os.makedirs(env["HOME"], exist_ok=True)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _job(job_dir, env, account if self.multi_user else None)
        import psutil

        try:
            started = psutil.Process(pid).create_time()
        except psutil.Error:
            started = 0.0
        return {"pid": pid, "started": started}

    def _make_dir(self, path: Path, account) -> None:
        path.mkdir(exist_ok=True)
        if self.multi_user:
            os.chown(path, account.uid, self.service_gid)
            os.chmod(path, 0o2750)  # the service reads (its group), nobody else
        else:
            os.chmod(path, 0o700)

    def _write(self, path: Path, data: bytes, account) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            if self.multi_user:
                os.fchown(fd, account.uid, self.service_gid)
                os.fchmod(fd, 0o640)
            os.write(fd, data)
        finally:
            os.close(fd)

    def _tree(self, pid: int, started: float):
        import psutil

        try:
            root = psutil.Process(pid)
            if started and abs(root.create_time() - started) > 1:
                return []  # the pid was reused
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    def stop(self, pid: int, started: float, grace: float) -> dict:
        procs = self._tree(pid, started)
        for p in procs:
            try:
                p.terminate()
            except Exception:
                pass
        if procs:
            self.kill_at.append((time.monotonic() + grace, [p.pid for p in procs]))
        return {"stopping": [p.pid for p in procs]}

    def clean_up(self, job_id: str) -> list[int]:
        """Kill processes of the job that outlived it: a kernel whose
        papermill was killed keeps running in its own session. They are
        found by the job's id in their environment."""
        import psutil

        killed = []
        for p in psutil.process_iter(["environ"]):
            try:
                if (p.info["environ"] or {}).get("IMAGINGHUB_JOB_ID") == job_id:
                    p.kill()
                    killed.append(p.pid)
            except (psutil.Error, TypeError):
                continue
        return killed


def _job(job_dir: Path, env: dict, account) -> None:
    """In the forked child: become the job's process, run it, never return."""
    code = 1
    try:
        # Nothing of the starter's stays open in the job: not its socket, and
        # not the job service's connection, which could ask for more.
        os.closerange(3, 1 << 16)
        os.setsid()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        if account is not None:
            from ...accounts import become

            become(account)
        else:
            os.umask(0o077)
        log = os.open(job_dir / "log.txt", os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        os.close(null)
        os.chdir(job_dir / "work")
        os.environ.clear()
        os.environ.update(env)
        from .child import run

        code = run(job_dir)
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m imaginghub.hub.services.jobs.starter")
    ap.add_argument("--socket", required=True)
    ap.add_argument("--runs", required=True)
    ap.add_argument("--runtime", required=True)
    ap.add_argument("--home", required=True, help="the site's state directory")
    ap.add_argument("--multi-user", action="store_true")
    ap.add_argument("--service-uid", type=int, default=os.geteuid())
    ap.add_argument("--service-gid", type=int, default=os.getegid())
    args = ap.parse_args(argv)
    sys.modules.setdefault("rfc3987_syntax", None)  # see child.run
    import papermill  # noqa: F401  (the point of this process)
    import psutil  # noqa: F401

    from . import child  # noqa: F401

    Starter(Path(args.socket), Path(args.runs), Path(args.runtime), site_home=Path(args.home),
            multi_user=args.multi_user, service_uid=args.service_uid,
            service_gid=args.service_gid).serve()


if __name__ == "__main__":
    main()
