"""The coordinator's REST API for researchers and its admin, behind the hub.

Flower's Control API (where runs are submitted) has no login, so
researchers never reach it: they submit and watch studies here, at
``/services/federation/api/``, where the hub has logged them in. The hub
routes the path to this API, which ``imaginghub federation coordinator
start`` serves on loopback next to the SuperLink (an external JupyterHub
service, registered when the workspace starts on a coordinator). Every
request is authenticated by the hub; members of the hub group
:data:`RESEARCHERS` and admins may use it, anyone else gets 403 with the
group's name.

- ``GET studies``: every study, newest first: id, workflow, status, rounds
  done, who submitted it and when;
- ``GET studies/ID``: its record (``study.json``: rounds, what each site
  released, the aggregate, the model) and who submitted it;
- ``POST studies``: ``{"study", "workflow", "cohort_alias", "parameters",
  "rounds", "min_sites", "round_timeout"}``: one of this installation's
  federated workflows, as data, to every site; 201. An id already used
  answers 409 (rerun it, or choose another);
- ``POST studies/ID/rerun``: the study again from its record; 202 with the
  rerun's number; ``GET studies/ID/reruns/N``: its record;
- ``GET sites``: the registered sites' names (to the hub's admins also
  each one's node and status at the SuperLink).

The coordinator's admin (a hub admin) also registers sites here:

- ``POST sites``: ``{"site", "public_key"}`` (the text of the site's
  ``node.pub``): 201 with its node; 409 for a name registered already;
- ``DELETE sites/NAME``: its key withdrawn, it can no longer connect.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import shutil
from pathlib import Path

from tornado import web

from ...errors import ConfigError
from ..identity import Users, identify
from ..web import ServiceHandler, ThreadedServer, api_routes

log = logging.getLogger("imaginghub.federation")

RESEARCHERS = "federation"  # the hub group whose members use the API
SERVICE = "federation"
STUDY_FIELDS = {"study", "workflow", "cohort_alias", "parameters", "rounds", "min_sites",
                "round_timeout"}


class HubContext:
    """What a federation API's handlers are given: the hub's users (who
    calls) and the service's name; closed when its server stops."""

    def __init__(self, users: Users, service: str):
        self.users, self.service = users, service

    async def aclose(self) -> None:
        await self.users.aclose()


class Context(HubContext):
    def __init__(self, coord, users: Users, workflow_dirs: list[Path]):
        super().__init__(users, SERVICE)
        self.coord, self.workflow_dirs = coord, workflow_dirs
        self.lock = asyncio.Lock()  # one submission at a time: ids are claimed in order


class Base(ServiceHandler):
    """A federation API's handler: the caller is a person the hub logged in
    (a service's token is refused): for the ``open_methods``, a member of
    :data:`RESEARCHERS` or an admin; for the others, an admin of the hub."""

    open_methods = frozenset({"GET", "POST", "PUT", "DELETE"})

    def initialize(self, ctx):
        self.ctx = ctx

    async def prepare(self):
        self.caller = await identify(self, self.ctx.users, self.ctx.service)
        if self.caller.kind == "service":
            raise web.HTTPError(403, reason="this API is for people the hub logged in, not "
                                            "for services")
        if self.request.method not in self.open_methods:
            if not self.caller.admin:
                raise web.HTTPError(403, reason="this is for the hub's admins")
            return
        groups = (await self.ctx.users.model(self.caller.name)).get("groups", [])
        if not self.caller.admin and RESEARCHERS not in groups:
            raise web.HTTPError(403, reason=f"studies are for the hub group {RESEARCHERS!r}: "
                                            "ask the coordinator's admin to add you")

    def folder(self, study: str) -> Path:
        folder = self.ctx.coord.study_dir(study)
        if not (folder / "run-config.toml").exists():
            raise web.HTTPError(404, reason=f"no study {study} at this coordinator")
        return folder


def _submitted(folder: Path) -> dict:
    try:
        return json.loads((folder / "submitted.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}


def _summary(folder: Path, rec: dict | None) -> dict:
    rec = rec or {}
    return {"study": folder.name, "workflow": rec.get("workflow"),
            "status": rec.get("status", "starting"), "rounds_done": len(rec.get("rounds", [])),
            **_submitted(folder)}


class StudiesHandler(Base):
    def get(self):
        root = self.ctx.coord.home / "studies"
        folders = [p for p in root.iterdir() if (p / "run-config.toml").exists()] \
            if root.is_dir() else []
        out = [_summary(p, self.ctx.coord.record(p.name)) for p in folders]
        self.send({"studies": sorted(out, key=lambda s: s.get("at", ""), reverse=True)})

    async def post(self):
        from ..jobs.workflows import load
        from .coordinator import StudySpec

        body = self.body()
        unknown = set(body) - STUDY_FIELDS
        if unknown:
            raise web.HTTPError(400, reason=f"unknown field(s) {', '.join(sorted(unknown))}: "
                                "a study takes " + ", ".join(sorted(STUDY_FIELDS)))
        for key in ("study", "workflow", "cohort_alias"):
            if not isinstance(body.get(key), str) or not body[key]:
                raise web.HTTPError(400, reason=f"say the study's {key} (a name)")
        notebook = self._workflow(body["workflow"])
        try:
            wf = load(notebook)
        except ValueError as e:
            raise web.HTTPError(400, reason=str(e)) from None
        if not wf.federated:
            raise web.HTTPError(400, reason=f"{body['workflow']} is not a federated workflow "
                                            "(its metadata has no imaginghub.federated block)")
        params = body.get("parameters") or {}
        if not isinstance(params, dict):
            raise web.HTTPError(400, reason="parameters must be a JSON object")
        try:
            params = wf.check(params)
        except ValueError as e:
            raise web.HTTPError(400, reason=str(e)) from None
        timeout = body.get("round_timeout", 600)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise web.HTTPError(400, reason="round_timeout is a number of seconds above 0")
        spec = StudySpec(body["study"], body["workflow"], notebook, body["cohort_alias"],
                         params, rounds=body.get("rounds", 1),
                         min_sites=body.get("min_sites", 1), round_timeout=float(timeout))
        coord = self.ctx.coord
        async with self.ctx.lock:
            try:
                spec.check()
            except ConfigError as e:
                raise web.HTTPError(400, reason=str(e)) from None
            folder = coord.study_dir(spec.study)
            if folder.exists():
                raise web.HTTPError(409, reason=f"study {spec.study} exists: rerun it, or "
                                                "choose another id")
            folder.mkdir(parents=True)
            (folder / "submitted.json").write_text(json.dumps({
                "by": self.caller.name,
                "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}))
            try:
                out = await asyncio.get_running_loop().run_in_executor(None, coord.submit,
                                                                       spec)
            except Exception as e:
                shutil.rmtree(folder, ignore_errors=True)  # the id is free again
                if isinstance(e, ConfigError):
                    raise web.HTTPError(400, reason=str(e)) from None
                raise
        log.info("study %s (%s) submitted by %s", spec.study, spec.workflow, self.caller.name)
        self.send({"study": spec.study, "notebook_sha256": out["notebook_sha256"],
                   "run_id": out["run_id"]}, 201)

    def _workflow(self, name: str) -> Path:
        for folder in self.ctx.workflow_dirs:
            path = Path(folder) / f"{name}.ipynb"
            if path.is_file():
                return path
        raise web.HTTPError(400, reason=f"no workflow called {name!r} at this coordinator")


class StudyHandler(Base):
    def get(self, study: str, rerun: str | None = None):
        folder = self.folder(study)
        rec = self.ctx.coord.record(study, int(rerun) if rerun else None)
        if rec is None:
            if rerun:
                raise web.HTTPError(404, reason=f"no rerun {rerun} of study {study}")
            rec = _summary(folder, None)
        self.send({**rec, **_submitted(folder)})


class RerunHandler(Base):
    async def post(self, study: str):
        self.folder(study)
        if (self.ctx.coord.record(study) or {}).get("status") not in ("finished", "failed"):
            raise web.HTTPError(409, reason=f"study {study} has not ended yet")
        try:
            out = await asyncio.get_running_loop().run_in_executor(
                None, self.ctx.coord.rerun, study)
        except ConfigError as e:
            raise web.HTTPError(400, reason=str(e)) from None
        log.info("study %s rerun %s by %s", study, out["rerun"], self.caller.name)
        self.send({"study": study, "rerun": out["rerun"]}, 202)


class SitesHandler(Base):
    """The registered sites. Researchers see their names; the hub's admins
    also each one's node and whether it is online, and register a site by
    the node key its admin sent (``POST``: ``{"site", "public_key"}``)."""

    open_methods = frozenset({"GET"})

    async def get(self):
        coord = self.ctx.coord
        out = {"sites": sorted(coord.sites().values())}
        if self.caller.admin:
            out["nodes"] = await asyncio.get_running_loop().run_in_executor(None, coord.status)
        self.send(out)

    async def post(self):
        body = self.body()
        site, key = body.get("site"), body.get("public_key")
        if set(body) != {"site", "public_key"} or not isinstance(site, str) \
                or not isinstance(key, str):
            raise web.HTTPError(400, reason='register a site with {"site": NAME, '
                                            '"public_key": its node.pub, as text}')
        if site in self.ctx.coord.sites().values():
            raise web.HTTPError(409, reason=f"site {site} is registered already: unregister "
                                            "it first (DELETE sites/NAME)")
        try:
            node = await asyncio.get_running_loop().run_in_executor(
                None, self.ctx.coord.register_key, site, key)
        except ConfigError as e:
            raise web.HTTPError(400, reason=str(e)) from None
        log.info("site %s registered (node %s) by %s", site, node, self.caller.name)
        self.send({"site": site, "node": node}, 201)


class SiteHandler(Base):
    open_methods = frozenset()  # admins only

    async def delete(self, site: str):
        if site not in self.ctx.coord.sites().values():
            raise web.HTTPError(404, reason=f"no site {site} is registered")
        await asyncio.get_running_loop().run_in_executor(None, self.ctx.coord.unregister, site)
        log.info("site %s unregistered by %s", site, self.caller.name)
        self.send({"site": site, "unregistered": True})


class NotFound(Base):
    def get(self, *_):
        raise web.HTTPError(404)


def make_app(ctx: Context, prefix: str = "/services/federation/") -> web.Application:
    name = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
    return web.Application(api_routes(prefix, [
        ("studies", StudiesHandler),
        (rf"studies/(?P<study>{name})", StudyHandler),
        (rf"studies/(?P<study>{name})/reruns/(?P<rerun>[0-9]{{1,6}})", StudyHandler),
        (rf"studies/(?P<study>{name})/rerun", RerunHandler),
        ("sites", SitesHandler),
        (rf"sites/(?P<site>{name})", SiteHandler),
    ], ctx, NotFound))


class ResearchersAPI(ThreadedServer):
    """The API served on loopback in a thread of its own, for as long as the
    coordinator runs."""

    def __init__(self, coord, *, port: int, hub_api: str, token: str, public_url: str = "",
                 workflow_dirs: list[Path] | None = None):
        from ..jobs.workflows import project_workflows

        self.public_url = public_url
        dirs = [project_workflows(), *(workflow_dirs or [])]

        super().__init__(lambda: Context(coord, hub_users(hub_api, token), dirs), make_app,
                         port, "federation-api")

    @classmethod
    def for_home(cls, home, coord) -> ResearchersAPI | None:
        """The API of a coordinator whose workspace runs (the hub knows the
        service from its start); None without one."""
        from ..jobs.config import JobService
        from .commands import API_TOKEN, _dir

        cfg = json.loads((_dir(home) / "coordinator.json").read_text())
        run = home.read_run()
        if run is None or not cfg.get("api_port"):
            return None
        dirs = [Path(d) for d in JobService(config=home.config()).workflow_dirs]
        return cls(coord, port=cfg["api_port"], hub_api=run["hub_api"],
                   token=home.secret(API_TOKEN), workflow_dirs=dirs,
                   public_url=run["url"].rstrip("/") + f"/services/{SERVICE}/api/")


def hub_users(hub_api: str, token: str) -> Users:
    """The hub's users as a federation API sees them, with its own token."""
    from jupyterhub.services.auth import HubAuth

    return Users(HubAuth(api_url=hub_api, api_token=token, cache_max_age=10))
