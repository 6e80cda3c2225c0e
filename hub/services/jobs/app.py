"""The job service's REST API (under ``/services/jobs/api``).

Every request is authenticated by JupyterHub. A user sees their own jobs and
the jobs that others shared with one of their projects; only the job's
user (or an admin) cancels it or changes its sharing. Anything else answers
404, exactly as an unknown job does. The CLI's admin service sees every job
and submits as a named user.

- ``GET workflows``, ``GET workflows/NAME``: the workflows and their parameters.
- ``POST jobs``: ``{"workflow", "parameters", "shared", "time_limit", "resources",
  "inputs"}`` (the admin service adds ``"user"``; ``inputs``: ``{file name:
  base64}``, files the run finds in ``inputs/`` of its work folder); 201
  with the job, 400 for parameters the workflow does not take, nothing
  queued.
- ``GET jobs[?status=&limit=&offset=&mine=1]``: newest first.
- ``GET jobs/ID``, ``GET jobs/ID/children``, ``GET jobs/ID/log[?offset=N]``,
  ``GET jobs/ID/notebook``, ``GET jobs/ID/artifacts``,
  ``GET jobs/ID/artifacts/PATH``.
- ``POST jobs/ID/cancel``, ``POST jobs/ID/rerun``, ``PATCH jobs/ID``
  (``{"shared": true}``).
- ``PUT jobs/ID/files/NAME``: a running job sends what it wrote (its
  progress, result, executed notebook, ``work/...``), with the job's own
  token and no other, to a runner whose runs have no shared disk with the
  service (the Kubernetes runner); 404 for anyone else, as for an unknown
  job.
"""

from __future__ import annotations

import logging
import mimetypes

from tornado import web

from ..identity import Caller, Users, identify, request_token
from ..web import ServiceHandler
from .db import RUNNING, Job
from .scheduler import Scheduler

log = logging.getLogger("imaginghub.jobs")

JOB_ID = r"[0-9a-f]{16}"
MAX_LIMIT = 500


class Context:
    def __init__(self, scheduler: Scheduler, users: Users, max_upload_bytes: int = 256 * 1024**2):
        self.scheduler = scheduler
        self.users = users
        self.max_upload_bytes = max_upload_bytes


class BaseHandler(ServiceHandler):
    def initialize(self, ctx: Context):
        self.ctx = ctx
        self.caller: Caller | None = None

    async def prepare(self):
        self.caller = await identify(self, self.ctx.users, "jobs")

    # -- who may do what ------------------------------------------------------------
    @property
    def sees_all(self) -> bool:
        return self.caller.all_projects

    def may_see(self, job: Job) -> bool:
        c = self.caller
        return (self.sees_all or job.user == c.name
                or (job.shared and bool(job.project) and job.project in c.projects))

    def may_change(self, job: Job) -> bool:
        return self.sees_all or self.caller.admin or job.user == self.caller.name

    def job(self, job_id: str, *, change: bool = False) -> Job:
        job = self.ctx.scheduler.store.get(job_id)
        if job is None or not self.may_see(job):
            raise web.HTTPError(404)
        if change and not self.may_change(job):
            raise web.HTTPError(403, reason=f"job {job_id} is {job.user}'s: only they (or an "
                                            "admin) may change it")
        return job

    def model(self, job: Job) -> dict:
        store = self.ctx.scheduler.store
        kids = store.children(job.id) if job.per_series and job.parent_id is None else None
        return job.model(kids)


class WorkflowsHandler(BaseHandler):
    def get(self, name: str | None = None):
        flows = self.ctx.scheduler.registry.all()
        if name is None:
            return self.send({"workflows": [w.model() for w in flows.values()]})
        if name not in flows:
            raise web.HTTPError(404)
        self.send(flows[name].model())


class JobsHandler(BaseHandler):
    def get(self):
        limit = _int(self.get_argument("limit", "50"), "limit")
        offset = _int(self.get_argument("offset", "0"), "offset")
        if not 1 <= limit <= MAX_LIMIT:
            raise web.HTTPError(400, reason=f"limit must be 1 to {MAX_LIMIT}")
        mine = self.get_argument("mine", "") in ("1", "true")
        user = None if self.sees_all and not mine else self.caller.name
        jobs = self.ctx.scheduler.store.visible(
            user, self.caller.projects, limit=limit, offset=offset,
            status=self.get_argument("status", None), mine_only=mine)
        self.send({"jobs": [self.model(j) for j in jobs]})

    async def post(self):
        body = self.body()
        unknown = set(body) - {"workflow", "parameters", "shared", "time_limit", "user",
                               "resources", "inputs"}
        if unknown:
            raise web.HTTPError(400, reason=f"unknown field(s) {', '.join(sorted(unknown))}: "
                                "a job takes workflow, parameters, shared, time_limit, "
                                "resources and inputs")
        workflow = body.get("workflow")
        params = body.get("parameters") or {}
        if not isinstance(workflow, str) or not workflow:
            raise web.HTTPError(400, reason="say which workflow to run: {\"workflow\": NAME}")
        if not isinstance(params, dict):
            raise web.HTTPError(400, reason="parameters must be a JSON object")
        user, token, projects = self.caller.name, request_token(self), self.caller.projects
        if self.caller.kind == "service":
            if not self.sees_all or not body.get("user"):
                raise web.HTTPError(400, reason="a service submits for a user: add \"user\"")
            user, token = str(body["user"]), None
            if not await self.ctx.users.model(user):
                raise web.HTTPError(400, reason=f"no user called {user!r}")
            projects = await self.ctx.users.projects(user)
        elif body.get("user") not in (None, user):
            raise web.HTTPError(403, reason="you can submit jobs only as yourself")
        job = await self.ctx.scheduler.submit(
            user, workflow, params, token=token, projects=projects,
            shared=bool(body.get("shared", False)), time_limit=body.get("time_limit"),
            resources=body.get("resources"), inputs=_inputs(body.get("inputs")))
        self.send(self.model(self.ctx.scheduler.store.get(job.id)), 201)


class JobHandler(BaseHandler):
    def get(self, job_id: str):
        self.send(self.model(self.job(job_id)))

    def patch(self, job_id: str):
        job = self.job(job_id, change=True)
        body = self.body()
        if set(body) - {"shared"} or not isinstance(body.get("shared"), bool):
            raise web.HTTPError(400, reason='only sharing can change: {"shared": true|false}')
        if body["shared"] and not job.project:
            raise web.HTTPError(400, reason=f"job {job_id} has no project to share it with")
        self.ctx.scheduler.store.update(job_id, shared=body["shared"])
        for kid in self.ctx.scheduler.store.children(job_id):
            self.ctx.scheduler.store.update(kid.id, shared=body["shared"])
        self.send(self.model(self.ctx.scheduler.store.get(job_id)))


class ChildrenHandler(BaseHandler):
    def get(self, job_id: str):
        self.job(job_id)
        self.send({"jobs": [k.model() for k in self.ctx.scheduler.store.children(job_id)]})


class ActionHandler(BaseHandler):
    async def post(self, job_id: str, action: str):
        sched = self.ctx.scheduler
        if action == "cancel":
            job = self.job(job_id, change=True)
            await sched.cancel(job)
            return self.send(self.model(sched.store.get(job_id)))
        job = self.job(job_id)  # rerun: whoever may see it, as themselves
        user, token, projects = self.caller.name, request_token(self), self.caller.projects
        if self.caller.kind == "service":
            user, token = job.user, None
            projects = await self.ctx.users.projects(user)
        new = await sched.submit(user, job.workflow, {}, token=token, projects=projects,
                                 shared=job.shared, time_limit=job.time_limit, rerun_of=job)
        self.send(self.model(sched.store.get(new.id)), 201)


class LogHandler(BaseHandler):
    async def get(self, job_id: str):
        job = self.job(job_id)
        offset = _int(self.get_argument("offset", "0"), "offset")
        if offset < 0:
            raise web.HTTPError(400, reason="offset must be 0 or more")
        data = await self.ctx.scheduler.log(job, offset, 8 * 1024**2)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.set_header("X-Log-Offset", str(offset + len(data)))
        self.finish(data)


class NotebookHandler(BaseHandler):
    async def get(self, job_id: str):
        job = self.job(job_id)
        data = await self.ctx.scheduler.notebook(job)
        if not data:
            raise web.HTTPError(404)
        self.set_header("Content-Type", "application/x-ipynb+json")
        self.finish(data)


class ArtifactsHandler(BaseHandler):
    async def get(self, job_id: str, path: str | None = None):
        job = self.job(job_id)
        sched = self.ctx.scheduler
        if not path:
            return self.send({"artifacts": await sched.artifacts(job)})
        f = await sched.open_artifact(job, path)
        if f is None:
            raise web.HTTPError(404)
        kind, _ = mimetypes.guess_type(path.rsplit("/", 1)[-1])
        self.set_header("Content-Type", kind or "application/octet-stream")
        with f:
            while chunk := f.read(1 << 20):
                self.write(chunk)
                await self.flush()
        self.finish()


class FilesHandler(BaseHandler):
    """What a running job sends (see the module's text)."""

    async def put(self, job_id: str, path: str):
        job = self.ctx.scheduler.store.get(job_id)
        runner = self.ctx.scheduler.runner
        c = self.caller
        if (job is None or c.kind != "user" or job.user != c.name or not job.token_id
                or c.token_id != job.token_id or job.status != RUNNING):
            raise web.HTTPError(404)
        if not getattr(runner, "accepts_uploads", False):
            raise web.HTTPError(409, reason=f"the {runner.name} runner's jobs write their "
                                            "files themselves")
        limit = self.ctx.max_upload_bytes
        if len(self.request.body) > limit:
            raise web.HTTPError(413, reason=f"a job's file may have at most "
                                            f"{limit // 1024**2} MB")
        try:
            runner.store(job_id, path, self.request.body)
        except ValueError as e:
            raise web.HTTPError(400, reason=str(e)) from None
        self.set_status(204)
        self.finish()


class NotFoundHandler(BaseHandler):
    def get(self, *_):
        raise web.HTTPError(404)

    post = patch = delete = get


def _inputs(value) -> dict[str, bytes] | None:
    """A job's ``inputs`` ({name: base64}) as bytes; 400 when they are not."""
    import base64
    import binascii

    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise web.HTTPError(400, reason="inputs are an object of file names and their "
                                        "contents in base64")
    out = {}
    for name, text in value.items():
        try:
            out[name] = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise web.HTTPError(400, reason=f"input {str(name)[:40]!r} is not base64") from None
    return out


def _int(text: str, name: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise web.HTTPError(400, reason=f"{name} must be a whole number, not {text!r}") from None


def make_app(ctx: Context, prefix: str) -> web.Application:
    api = prefix.rstrip("/") + "/api"
    k = {"ctx": ctx}
    return web.Application([
        (rf"{api}/workflows", WorkflowsHandler, k),
        (rf"{api}/workflows/(?P<name>[A-Za-z0-9_.-]+)", WorkflowsHandler, k),
        (rf"{api}/jobs", JobsHandler, k),
        (rf"{api}/jobs/(?P<job_id>{JOB_ID})", JobHandler, k),
        (rf"{api}/jobs/(?P<job_id>{JOB_ID})/children", ChildrenHandler, k),
        (rf"{api}/jobs/(?P<job_id>{JOB_ID})/(?P<action>cancel|rerun)", ActionHandler, k),
        (rf"{api}/jobs/(?P<job_id>{JOB_ID})/log", LogHandler, k),
        (rf"{api}/jobs/(?P<job_id>{JOB_ID})/notebook", NotebookHandler, k),
        (rf"{api}/jobs/(?P<job_id>{JOB_ID})/artifacts", ArtifactsHandler, k),
        (rf"{api}/jobs/(?P<job_id>{JOB_ID})/artifacts/(?P<path>.+)", ArtifactsHandler, k),
        (rf"{api}/jobs/(?P<job_id>{JOB_ID})/files/(?P<path>.+)", FilesHandler, k),
        (r".*", NotFoundHandler, k),
    ])
