"""The queue: submits, starts, watches and ends jobs.

Jobs start oldest first while fewer than ``max_running`` run in all and
fewer than ``max_per_user`` of the job's user. Each run gets a JupyterHub
token of its own, made for the job's user with the scopes of a user's
server (it reads what that user may read, nothing more), expiring with the
job's time limit and deleted when the job ends. All state is in the
database and the job folders, so a restarted service carries on: queued
jobs start, running ones whose process is still there are adopted, and the
others are marked interrupted with the reason.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import importlib.metadata
import json
import logging
import os
import re
import secrets
import time
from pathlib import Path

import httpx

from .db import (ACTIVE, CANCELLED, FAILED, FINISHED, INTERRUPTED, QUEUED, RUNNING, SUCCEEDED,
                 TIMED_OUT, Job, JobStore, now)
from .errors import ParameterError, RunnerUnavailable, SubmitError
from .runner import GONE, Runner, base_environment
from .workflows import Registry, Workflow, check_resources

log = logging.getLogger("imaginghub.jobs")

MAX_CHILDREN = 10_000  # series of one per-series run


def package_versions() -> dict[str, str]:
    """Every installed distribution and its version (the jobs' kernels run
    in this environment)."""
    out = {}
    for d in importlib.metadata.distributions():
        name = (d.metadata["Name"] or "").lower()
        if name:
            out[name] = d.version
    return dict(sorted(out.items()))


INPUT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
MAX_INPUTS = 16
MAX_INPUT_BYTES = 64 << 20  # all of a job's input files together


def check_inputs(inputs) -> dict[str, bytes]:
    """A job's input files ({name: bytes}) if they are few and small enough
    and their names are plain file names; else a SubmitError says what is
    wrong."""
    if not inputs:
        return {}
    if not isinstance(inputs, dict):
        raise SubmitError("inputs are an object of file names and their contents")
    if len(inputs) > MAX_INPUTS:
        raise SubmitError(f"a job takes at most {MAX_INPUTS} input files ({len(inputs)} given)")
    for name, data in inputs.items():
        if not isinstance(name, str) or not INPUT_NAME.match(name):
            raise SubmitError(f"input file name {str(name)[:40]!r}: use letters, digits, '.', "
                              "'_' and '-', starting with a letter or digit")
        if not isinstance(data, bytes):
            raise SubmitError(f"input {name}: the contents are bytes")
    total = sum(len(d) for d in inputs.values())
    if total > MAX_INPUT_BYTES:
        raise SubmitError(f"the input files have {total} bytes, over the limit of "
                          f"{MAX_INPUT_BYTES}")
    return dict(inputs)


def _utc(t: dt.datetime | None) -> dt.datetime | None:
    if t is not None and t.tzinfo is None:
        return t.replace(tzinfo=dt.timezone.utc)
    return t


class Scheduler:
    def __init__(self, store: JobStore, registry: Registry, runner: Runner, root: Path, *,
                 hub_api: str, service_token: str, data_api: str, users_dir: Path,
                 user_env: dict[str, str], token_scopes: list[str], max_running: int = 2,
                 max_per_user: int = 2, time_limit: int = 6 * 3600, tick: float = 0.5):
        self.store, self.registry, self.runner = store, registry, runner
        self.root = Path(root)
        self.notebooks = self.root / "notebooks"
        self.inputs = self.root / "inputs"
        for d in (self.root, self.notebooks, self.inputs):
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, 0o700)
        self.hub_api = hub_api.rstrip("/")
        self.hub = httpx.AsyncClient(timeout=30,
                                     headers={"Authorization": f"token {service_token}"})
        self.data_api = data_api.rstrip("/")
        self.users_dir = Path(users_dir)
        self.user_env = dict(user_env)
        self.token_scopes = list(token_scopes)
        self.max_running, self.max_per_user = max_running, max_per_user
        self.time_limit = time_limit
        self.tick = tick
        self.packages = package_versions()
        self._wake = asyncio.Event()
        self._stopping: dict[str, str] = {}  # job id: the status it ends with (cancel, limit)
        self._tokens: dict[str, str] = {}  # job id: token id (for deletion at the end)

    # -- paths ------------------------------------------------------------------
    def notebook_copy(self, sha256: str) -> Path:
        return self.notebooks / f"{sha256}.ipynb"

    # -- submitting -------------------------------------------------------------------
    async def submit(self, user: str, workflow: str, parameters: dict, *, token: str | None,
                     projects=frozenset(), shared: bool = False, time_limit: int | None = None,
                     rerun_of: Job | None = None, resources: dict | None = None,
                     inputs: dict[str, bytes] | None = None) -> Job:
        """Queue a run of ``workflow`` as ``user``. ``token`` is one of the
        user's (to look the cohort up as them); None: one is made for it.
        The job's project (whose members see it when it is shared) is the
        cohort's, else the parameter ``project``, else the user's only one.
        ``resources`` (checked: workflows.check_resources) go over the
        workflow's; a rerun asks for what the first run asked for.
        ``inputs`` ({name: bytes}, checked: :func:`check_inputs`) are files
        the run finds in ``inputs/`` of its work folder; a rerun gets the
        same."""
        if rerun_of is None:
            wf = self.registry.get(workflow)
            if wf is None:
                known = ", ".join(sorted(self.registry.all())) or "(none)"
                raise SubmitError(f"no workflow called {workflow!r}; the workflows are {known}",
                                  404)
            try:
                params = wf.check(parameters)
            except ParameterError as e:
                raise SubmitError(str(e)) from None
            notebook = self._keep_notebook(wf)
        else:
            wf = None
            params = json.loads(rerun_of.parameters)
            notebook = self.notebook_copy(rerun_of.notebook_sha256)
            if not notebook.exists():
                raise SubmitError(f"the notebook of job {rerun_of.id} is no longer kept", 410)
        limit = self._limit(time_limit)
        if rerun_of is not None:
            given = json.loads(rerun_of.inputs or "{}")
            if not all(self.input_copy(sha).exists() for sha in given.values()):
                raise SubmitError(f"the inputs of job {rerun_of.id} are no longer kept", 410)
        else:
            given = {name: self._keep_input(data)
                     for name, data in check_inputs(inputs).items()}
        try:
            asked = check_resources(resources, "the job's resources")
        except ParameterError as e:
            raise SubmitError(str(e)) from None
        if rerun_of is not None:
            needs = {**json.loads(rerun_of.resources or "{}"), **asked}
        else:
            needs = {**wf.resources, **asked}
        cohort, series_hash, series = "", "", None
        project = str(params.get("project") or "")
        if params.get("cohort"):
            found = await self._cohort(user, params["cohort"], project or None, token)
            cohort, project = f"{found['name']}@{found['version']}", found["project"]
            series_hash, series = found.get("series_hash", ""), list(found["series"])
            if rerun_of is not None and rerun_of.cohort_series_hash \
                    and series_hash != rerun_of.cohort_series_hash:
                raise SubmitError(f"cohort {project}/{cohort} no longer has the series job "
                                  f"{rerun_of.id} ran on", 409)
            params.update(cohort=cohort, project=project)  # pinned: a rerun reads the same
        elif params.get("series") is not None:
            series = params["series"]
            if isinstance(series, str):
                series = series.replace(",", " ").split()
        if not project and len(projects) == 1:
            project = next(iter(projects))
        if project and project not in projects:
            raise SubmitError(f"you are not a member of project {project!r}", 403)
        if shared and not project:
            raise SubmitError("a shared job needs a project: you are in several (or none); "
                              "give the parameter project or run it on a cohort")
        if rerun_of is None:
            per_series = wf.per_series
        else:  # a per-series run again, or one series' run again on its own
            per_series = rerun_of.per_series and rerun_of.parent_id is None
        if per_series and rerun_of is None and "series" not in wf.parameters:
            raise SubmitError(f"workflow {wf.name} says it runs once per series but has no "
                              "parameter series to receive it: fix its notebook")
        base = dict(user=user, project=project, shared=shared,
                    workflow=rerun_of.workflow if rerun_of else wf.name,
                    title=rerun_of.title if rerun_of else wf.title,
                    notebook_path=rerun_of.notebook_path if rerun_of else str(wf.path),
                    notebook_sha256=notebook.stem, cohort=cohort,
                    cohort_series_hash=series_hash, series_count=len(series or ()),
                    resources=json.dumps(needs), inputs=json.dumps(given, sort_keys=True),
                    packages=json.dumps(self.packages), time_limit=limit,
                    runner=self.runner.name, rerun_of=rerun_of.id if rerun_of else None)
        parent = Job(id=_new_id(), parameters=json.dumps(params), per_series=per_series,
                     **base)
        jobs = [parent]
        if per_series:
            if not series:
                raise SubmitError(f"workflow {parent.workflow} runs once per series: give a "
                                  "cohort or a list of series")
            if len(series) > MAX_CHILDREN:
                raise SubmitError(f"at most {MAX_CHILDREN} series in one run ({len(series)})")
            for uid in series:
                child = dict(params, series=[uid])
                child.pop("cohort", None)  # the child reads its one series
                jobs.append(Job(id=_new_id(), parent_id=parent.id, parameters=json.dumps(child),
                                per_series=True, **{**base, "series_count": 1}))
            parent.status = RUNNING
            parent.started_at = now()
        self.store.add(jobs)
        log.info("job %s queued: %s for %s (%d run%s)", parent.id, parent.workflow, user,
                 max(len(jobs) - 1, 1), "" if len(jobs) <= 2 else "s")
        self._wake.set()
        return parent

    def _keep_notebook(self, wf: Workflow) -> Path:
        """The workflow's notebook as it is now, kept by its SHA-256 (reruns
        run exactly this)."""
        data = wf.path.read_bytes()
        path = self.notebook_copy(hashlib.sha256(data).hexdigest())
        if not path.exists():
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return path

    def input_copy(self, sha256: str) -> Path:
        return self.inputs / sha256

    def _keep_input(self, data: bytes) -> str:
        """One of a job's input files, kept by its SHA-256; the hash."""
        sha = hashlib.sha256(data).hexdigest()
        path = self.input_copy(sha)
        if not path.exists():
            tmp = path.with_name(f".{sha}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return sha

    def _limit(self, asked: int | None) -> int:
        if asked is None:
            return self.time_limit
        if not isinstance(asked, int) or isinstance(asked, bool) or asked <= 0:
            raise SubmitError(f"time_limit is a number of seconds above 0, not {asked!r}")
        if asked > self.time_limit:
            raise SubmitError(f"time_limit {asked} s is above this site's limit of "
                              f"{self.time_limit} s")
        return asked

    async def _cohort(self, user: str, ref: str, project: str | None,
                      token: str | None) -> dict:
        """The cohort as ``user`` sees it (through the data service)."""
        minted = None
        if token is None:
            token, minted = await self._mint(user, "cohort lookup", 120)
        try:
            from ....kernels.catalog import Catalog

            catalog = Catalog(self.data_api, token)

            def look():
                c = catalog.cohort(ref, project=project)
                return dict(c.info, name=c.name, project=c.project, series=list(c.series))

            try:
                return await asyncio.get_running_loop().run_in_executor(None, look)
            except Exception as e:
                raise SubmitError(f"cohort {ref!r}: {e}") from None
        finally:
            if minted:
                await self._delete_token(user, minted)

    # -- tokens ---------------------------------------------------------------
    async def _mint(self, user: str, note: str, seconds: int) -> tuple[str, str]:
        r = await self.hub.post(f"{self.hub_api}/users/{user}/tokens", json={
            "note": f"imaginghub job: {note}", "scopes": self.token_scopes,
            "expires_in": int(seconds)})
        if r.status_code != 201:
            raise SubmitError(f"the hub refused a token for {user}: HTTP {r.status_code}", 502)
        body = r.json()
        return body["token"], body["id"]

    async def _delete_token(self, user: str, token_id: str) -> None:
        try:
            await self.hub.delete(f"{self.hub_api}/users/{user}/tokens/{token_id}")
        except httpx.HTTPError:
            log.warning("could not delete the token of a job of %s", user)

    # -- the loop ---------------------------------------------------------------
    async def run(self) -> None:
        await self.recover()
        while True:
            try:
                await self.step()
            except Exception:
                log.exception("job scheduler step failed")
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.tick)
            except asyncio.TimeoutError:
                pass

    async def recover(self) -> None:
        """After a restart: adopt running jobs whose process is still there;
        end the others from what they left."""
        for job in self.store.with_status(RUNNING, runnable_only=True):
            if job.handle and await self.runner.poll(job.handle) is None:
                log.info("job %s is still running: adopted", job.id)
                continue
            await self._finish(job, gone_reason=(
                "interrupted: the job service or the workspace stopped while it ran; "
                "rerun it to run it again"))

    async def step(self) -> None:
        running = self.store.with_status(RUNNING, runnable_only=True)
        still = []
        for job in running:
            code = await self.runner.poll(job.handle) if job.handle else GONE
            if code is not None:
                await self._finish(job, code=code)
                continue
            started = _utc(job.started_at)
            if job.time_limit and started and \
                    (now() - started).total_seconds() > job.time_limit:
                self._stopping[job.id] = TIMED_OUT
                await self.runner.stop(job.handle)
                continue
            await self._progress(job)
            still.append(job)
        await self._start_queued(still)
        self._update_parents()

    async def _progress(self, job: Job) -> None:
        value = await self.runner.progress(job.id)
        if value is not None and abs(value - job.progress) > 1e-6:
            self.store.update(job.id, progress=value)

    async def _start_queued(self, running: list[Job]) -> None:
        per_user: dict[str, int] = {}
        for job in running:
            per_user[job.user] = per_user.get(job.user, 0) + 1
        free = self.max_running - len(running)
        if free <= 0:
            return
        for job in self.store.with_status(QUEUED, runnable_only=True):
            if free <= 0:
                break
            if per_user.get(job.user, 0) >= self.max_per_user:
                continue
            try:
                started = await self._start(job)
            except RunnerUnavailable:
                return  # queued jobs wait for the runner
            if started:
                free -= 1
                per_user[job.user] = per_user.get(job.user, 0) + 1

    async def _start(self, job: Job) -> bool:
        notebook = self.notebook_copy(job.notebook_sha256)
        spec = {"parameters": json.loads(job.parameters), "kernel": "imaging",
                "resources": json.loads(job.resources or "{}"),
                "inputs": {name: base64.b64encode(self.input_copy(sha).read_bytes()).decode()
                           for name, sha in json.loads(job.inputs or "{}").items()}}
        try:
            token, token_id = await self._mint(job.user, f"job {job.id}", job.time_limit + 600)
        except (SubmitError, httpx.HTTPError) as e:
            self.store.update(job.id, only_if=[QUEUED], status=FAILED, ended_at=now(),
                              reason=f"could not start: {e}")
            return False
        env = base_environment({
            **self.user_env, "HOME": str(self.users_dir / job.user), "USER": job.user,
            "JUPYTERHUB_USER": job.user,
            "JUPYTERHUB_API_TOKEN": token, "IMAGINGHUB_DICOMWEB_TOKEN": token,
            "IMAGINGHUB_JOB_ID": job.id, "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"})
        try:
            handle = await self.runner.start(job.id, job.user, spec, notebook, env)
        except RunnerUnavailable as e:  # the job starter is back soon: the job waits
            log.warning("job %s waits: %s", job.id, e)
            await self._delete_token(job.user, token_id)
            raise
        except Exception as e:
            await self._delete_token(job.user, token_id)
            log.warning("job %s could not start: %s", job.id, e)
            self.store.update(job.id, only_if=[QUEUED], status=FAILED, ended_at=now(),
                              reason=f"could not start: {e}")
            return False
        if not self.store.update(job.id, only_if=[QUEUED], status=RUNNING, started_at=now(),
                                 handle=handle, token_id=token_id):
            # cancelled between the look at the queue and now
            await self.runner.stop(handle)
            await self._delete_token(job.user, token_id)
            return False
        log.info("job %s started (%s for %s)", job.id, job.workflow, job.user)
        return True

    async def _finish(self, job: Job, code: int | None = None, gone_reason: str = "") -> None:
        result = await self.runner.result(job.id)
        asked = self._stopping.pop(job.id, None)
        if asked == CANCELLED:
            status, reason = CANCELLED, "cancelled"
        elif asked == TIMED_OUT:
            status, reason = TIMED_OUT, f"stopped after its time limit of {job.time_limit} s"
        elif result is not None:
            status, reason = result["status"], result.get("reason", "")
        elif gone_reason:
            status, reason = INTERRUPTED, gone_reason
        else:
            how = ("" if code in (None, GONE) else
                   f" (signal {-code})" if code < 0 else f" (exit code {code})")
            status, reason = FAILED, (f"the job's process ended{how} before the notebook "
                                      "finished; its log and the notebook as far as it ran "
                                      "are kept")
        values = dict(status=status, reason=reason, ended_at=now(),
                      failed_cell=(result or {}).get("failed_cell"))
        if status == SUCCEEDED:
            values["progress"] = 1.0
        else:
            await self._progress(job)
        self.store.update(job.id, only_if=[RUNNING], **values)
        await self.runner.clean_up(job.id)
        if job.token_id:
            await self._delete_token(job.user, job.token_id)
        log.info("job %s %s%s", job.id, status, f": {reason}" if reason else "")

    def _update_parents(self) -> None:
        for parent in self.store.with_status(RUNNING):
            if not parent.per_series or parent.parent_id is not None:
                continue
            kids = self.store.children(parent.id)
            if not kids:
                continue
            progress = sum(1.0 if k.status in FINISHED else k.progress for k in kids) / len(kids)
            if any(k.status in ACTIVE for k in kids):
                if abs(progress - parent.progress) > 1e-6:
                    self.store.update(parent.id, progress=progress)
                continue
            bad = [k for k in kids if k.status != SUCCEEDED]
            if not bad:
                status, reason = SUCCEEDED, ""
            elif all(k.status == CANCELLED for k in bad):
                status, reason = CANCELLED, "cancelled"
            else:
                status = FAILED
                kinds = sorted({k.status for k in bad})
                reason = f"{len(bad)} of {len(kids)} series did not succeed ({', '.join(kinds)})"
            self.store.update(parent.id, only_if=[RUNNING], status=status, reason=reason,
                              progress=1.0 if status == SUCCEEDED else progress,
                              ended_at=max((_utc(k.ended_at) for k in kids if k.ended_at),
                                           default=now()))

    # -- cancel -----------------------------------------------------------------
    async def cancel(self, job: Job) -> None:
        targets = [job, *self.store.children(job.id)] if job.per_series else [job]
        for j in targets:
            if self.store.update(j.id, only_if=[QUEUED], status=CANCELLED, ended_at=now(),
                                 reason="cancelled before it started"):
                continue
            fresh = self.store.get(j.id)
            if fresh.status == RUNNING and fresh.handle:
                self._stopping[j.id] = CANCELLED
                await self.runner.stop(fresh.handle)
        if job.per_series and job.parent_id is None:
            self.store.update(job.id, only_if=[RUNNING], status=CANCELLED, reason="cancelled",
                              ended_at=now())
        self._wake.set()

    # -- what a job left ------------------------------------------------------------
    async def log(self, job: Job, offset: int = 0, limit: int | None = None) -> bytes:
        return await self.runner.log(job.id, offset, limit)

    async def notebook(self, job: Job) -> bytes | None:
        return await self.runner.notebook(job.id)

    async def artifacts(self, job: Job) -> list[dict]:
        """Files the run wrote in its folder, and for a per-series run those
        of every series' run under the run's id (links are left out)."""
        out = []
        jobs = self.store.children(job.id) if job.per_series and job.parent_id is None else [job]
        for j in jobs:
            prefix = f"{j.id}/" if j is not job else ""
            for path, size in await self.runner.artifacts(j.id):
                out.append({"path": prefix + path, "size": size})
        return out

    async def open_artifact(self, job: Job, path: str):
        """The file ``path`` of :meth:`artifacts` open for reading, or None
        (never anything outside the run's folder)."""
        job_id = job.id
        if job.per_series and job.parent_id is None:
            job_id, _, path = path.partition("/")
            if job_id not in {k.id for k in self.store.children(job.id)}:
                return None
        return await self.runner.open_artifact(job_id, path)

    async def remove(self, job: Job) -> None:
        await self.runner.remove(job.id)

    async def aclose(self) -> None:
        await self.runner.close()
        await self.hub.aclose()


def _new_id() -> str:
    return f"{int(time.time()):08x}{secrets.token_hex(4)}"


__all__ = ["Scheduler", "SubmitError"]
