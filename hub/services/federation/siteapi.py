"""A site's admin, from the command line and over HTTP: the policy, the
requests that wait, a preview of what a round would release, the audit.

:class:`SiteAdmin` is what both use (``imaginghub federation site ...``
and this API), so the two cannot disagree. Changes to the policy are
made under a lock (``federation-policy.lock``) and saved atomically; the
running agent reads the policy anew for every round.

The API is the hub service ``federation-site``, at
``/services/federation-site/api/``: ``site init`` gives it a port and a
token, the workspace's next start registers it with the hub, and ``site
start`` serves it on loopback for as long as the agent runs. Only the
hub's admins may use it (a token of theirs with the hub's scope for the
service; a user's server token has none). The policy is root's in a
multi-user site, so ``site start`` serves the API when it runs as root
(or the single-user workspace's own account), which is how the README
starts it.

- ``GET site``: the site's name, its coordinator, the pinned bridge hash;
- ``GET policy``: the approvals;
- ``PUT policy/studies/COORDINATOR/STUDY``: approve a study
  (``{"notebooks", "cohorts", "parameters", "min_cell", "auto"}``, as
  ``site approve`` takes them); ``DELETE`` the same path revokes it;
- ``PUT policy/studies/COORDINATOR/STUDY/rounds/N``: let one round run;
- ``GET pending``: the requests that wait, each with its key;
- ``POST pending/COORDINATOR/STUDY/ROUND/preview`` (``{"cohort",
  "min_cell"}``): run the round here on that cohort and answer what would
  leave (each output's kind, size, SHA-256, suppressed cells and content:
  the JSON, or a state_dict's names, dtypes and shapes); nothing is sent
  or audited;
- ``GET audit[?study=S&coordinator=C]``: every output that left.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
from contextlib import contextmanager
from dataclasses import asdict
from functools import cached_property

from tornado import web

from ...errors import ConfigError, ImagingHubError
from ..web import ThreadedServer, api_routes
from .api import Base, HubContext, hub_users
from .policy import Policy, Study, load

log = logging.getLogger("imaginghub.federation")

SERVICE = "federation-site"
TOKEN = "federation_site_token"  # the site admins' API's, as a hub service
STUDY_FIELDS = {"notebooks", "cohorts", "parameters", "min_cell", "auto"}


class NoSuchRequest(ImagingHubError):
    """No pending request has that key (decided meanwhile, or never asked)."""


class SiteAdmin:
    """A site's admin operations on its folder (``federation/site``)."""

    def __init__(self, home):
        from .commands import _dir, _read

        self.home = home
        self.cfg = _read(_dir(home) / "site.json", "a federation site",
                         "run 'imaginghub federation site init --name NAME --coordinator "
                         "HOST:PORT --ca CA.crt'")
        self.folder = _dir(home) / "site"
        self.policy_path = self.folder / "federation-policy.json"
        self.pending_path = self.folder / "pending.json"

    # -- the policy ------------------------------------------------------------------
    def policy(self) -> Policy:
        return load(self.policy_path)

    @contextmanager
    def _changing(self):
        """The policy, to change: locked against another change, saved
        atomically when the block ends without an error."""
        lock = self.folder / "federation-policy.lock"
        with open(lock, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            policy = self.policy()
            yield policy
            try:
                policy.save(self.policy_path)
            except PermissionError:
                raise ConfigError(f"{self.policy_path} is root's: change the policy as root "
                                  "(sudo), or run 'site start' as root for the API") from None

    def approve(self, study: Study) -> None:
        with self._changing() as policy:
            policy.approve(study)

    def approve_round(self, coordinator: str, study: str, round_number: int) -> None:
        with self._changing() as policy:
            policy.approve_round(coordinator, study, round_number)

    def revoke(self, coordinator: str, study: str) -> bool:
        """Withdraw an approval; False when there was none."""
        with self._changing() as policy:
            had = (coordinator, study) in policy.studies
            policy.revoke(coordinator, study)
        return had

    # -- rounds ----------------------------------------------------------------------
    def pending(self) -> dict[str, dict]:
        from .site import read_pending

        return read_pending(self.pending_path)

    def site_round(self, policy):
        from ...cli import _jobs
        from ...hubapi import HubAPI
        from .site import SiteRound

        return SiteRound(policy, self.audit, _jobs(self.home), HubAPI(self.home),
                         pending=self.pending_path)

    def preview(self, key: str, cohort: str, min_cell: int = 5):
        """Run a pending round here, as approved for this look only, on
        ``cohort`` (``project/name@version``): its outcome, with what would
        leave. Nothing is sent, nothing is audited."""
        from .site import pending_request

        found = pending_request(self.pending_path, key)
        if found is None:
            raise NoSuchRequest(f"no pending request {key}: see 'imaginghub federation "
                                "site pending'")
        req, weights = found
        look = Policy()
        look.approve(Study(req.coordinator, req.study, notebooks=[req.notebook_sha256],
                           cohorts={req.cohort_alias: cohort},
                           parameters={k: {"values": [v]} for k, v in req.parameters.items()},
                           min_cell=min_cell, auto=True))
        return self.site_round(look).run(req, weights=weights, preview=look)

    @cached_property
    def audit(self):
        """The site's audit (one database engine for the agent and the API)."""
        from .audit import Audit

        return Audit(f"sqlite:///{self.folder / 'audit.sqlite'}")


def released_view(released) -> dict:
    """What a preview shows of one output: its kind, size, SHA-256, the
    suppressed cells, and its content (the JSON; a state_dict's tensors'
    names, dtypes and shapes)."""
    if released.kind == "state_dict":
        from .aggregate import decode_weights

        content = {name: {"dtype": a.dtype.name, "shape": list(a.shape)}
                   for name, a in decode_weights(released.data).items()}
    else:
        content = json.loads(released.data)
    return {"kind": released.kind, "bytes": released.size, "sha256": released.sha256,
            "suppressed": released.suppressed, "content": content}


# -- the API ---------------------------------------------------------------------------
class Context(HubContext):
    def __init__(self, admin: SiteAdmin, users):
        super().__init__(users, SERVICE)
        self.admin = admin


class AdminBase(Base):
    open_methods = frozenset()  # admins only

    def study(self, body: dict, coordinator: str, study: str) -> Study:
        unknown = set(body) - STUDY_FIELDS
        if unknown:
            raise web.HTTPError(400, reason=f"unknown field(s) {', '.join(sorted(unknown))}: "
                                "an approval takes " + ", ".join(sorted(STUDY_FIELDS)))
        s = Study(coordinator, study, notebooks=body.get("notebooks", []),
                  cohorts=body.get("cohorts", {}), parameters=body.get("parameters", {}),
                  min_cell=body.get("min_cell", 5), auto=body.get("auto", False))
        if not isinstance(s.notebooks, list) or not s.notebooks:
            raise web.HTTPError(400, reason="say which notebooks the study may run: "
                                            '"notebooks": [SHA256, ...]')
        if not isinstance(s.cohorts, dict) or not s.cohorts:
            raise web.HTTPError(400, reason='say which cohort each alias means: "cohorts": '
                                            '{"ALIAS": "project/name@version"}')
        if not isinstance(s.parameters, dict) or not isinstance(s.auto, bool):
            raise web.HTTPError(400, reason='"parameters" is an object of bounds and "auto" '
                                            "true or false")
        return s

    async def blocking(self, fn, *args):
        try:
            return await asyncio.get_running_loop().run_in_executor(None, fn, *args)
        except ConfigError as e:
            raise web.HTTPError(400, reason=str(e)) from None


class SiteInfo(AdminBase):
    def get(self):
        cfg = self.ctx.admin.cfg
        self.send({"site": cfg["name"], "coordinator": cfg["superlink"],
                   "pinned": cfg["pinned"]})


class PolicyHandler(AdminBase):
    async def get(self):
        policy = await self.blocking(self.ctx.admin.policy)
        self.send({"studies": [asdict(s) for s in policy.studies.values()]})


class ApprovalHandler(AdminBase):
    async def put(self, coordinator: str, study: str):
        s = self.study(self.body(), coordinator, study)
        await self.blocking(self.ctx.admin.approve, s)
        log.info("study %s/%s approved by %s", coordinator, study, self.caller.name)
        self.send(asdict(s))

    async def delete(self, coordinator: str, study: str):
        if not await self.blocking(self.ctx.admin.revoke, coordinator, study):
            raise web.HTTPError(404, reason=f"study {coordinator}/{study} is not approved here")
        log.info("study %s/%s revoked by %s", coordinator, study, self.caller.name)
        self.send({"coordinator": coordinator, "study": study, "revoked": True})


class RoundHandler(AdminBase):
    async def put(self, coordinator: str, study: str, number: str):
        await self.blocking(self.ctx.admin.approve_round, coordinator, study, int(number))
        log.info("round %s of %s/%s approved by %s", number, coordinator, study,
                 self.caller.name)
        self.send({"coordinator": coordinator, "study": study, "round": int(number)})


class PendingHandler(AdminBase):
    def get(self):
        self.send({"pending": [{"key": key, **req}
                               for key, req in sorted(self.ctx.admin.pending().items())]})


class PreviewHandler(AdminBase):
    async def post(self, key: str):
        body = self.body()
        cohort, min_cell = body.get("cohort"), body.get("min_cell", 5)
        if not isinstance(cohort, str) or isinstance(min_cell, bool) \
                or not isinstance(min_cell, int) or min_cell < 1:
            raise web.HTTPError(400, reason='preview on a cohort: {"cohort": '
                                            '"project/name@version", "min_cell": N (1 or more)}')
        try:
            outcome = await self.blocking(self.ctx.admin.preview, key, cohort, min_cell)
        except NoSuchRequest:
            raise web.HTTPError(404, reason=f"no pending request {key}") from None
        except ImagingHubError as e:
            raise web.HTTPError(400, reason=str(e)) from None
        self.send({"request": key, "cohort": cohort, "status": outcome.status,
                   "reason": outcome.reason,
                   "outputs": {name: released_view(r)
                               for name, r in outcome.released.items()}})


class AuditHandler(AdminBase):
    async def get(self):
        rows = await self.blocking(
            lambda: self.ctx.admin.audit.rows(
                coordinator=self.get_argument("coordinator", None),
                study=self.get_argument("study", None)))
        self.send({"rows": rows})


class NotFound(AdminBase):
    def get(self, *_):
        raise web.HTTPError(404)


def make_app(ctx: Context, prefix: str = f"/services/{SERVICE}/") -> web.Application:
    name = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
    study = rf"(?P<coordinator>{name})/(?P<study>{name})"
    return web.Application(api_routes(prefix, [
        ("site", SiteInfo),
        ("policy", PolicyHandler),
        (rf"policy/studies/{study}", ApprovalHandler),
        (rf"policy/studies/{study}/rounds/(?P<number>[0-9]{{1,6}})", RoundHandler),
        ("pending", PendingHandler),
        (rf"pending/(?P<key>{name}/{name}/[0-9]{{1,6}})/preview", PreviewHandler),
        ("audit", AuditHandler),
    ], ctx, NotFound))


class SiteAPI(ThreadedServer):
    """The site admins' API, served next to the agent."""

    def __init__(self, admin: SiteAdmin, *, port: int, hub_api: str, token: str,
                 public_url: str = ""):
        self.public_url = public_url
        super().__init__(lambda: Context(admin, hub_users(hub_api, token)), make_app, port,
                         "federation-site-api")

    @classmethod
    def for_home(cls, home, admin: SiteAdmin) -> tuple[SiteAPI | None, str]:
        """The API of a site whose workspace runs and whose hub knows it,
        or None and why not."""
        import os

        run = home.read_run()
        if not admin.cfg.get("api_port"):
            return None, "run 'site init' again to give it a port"
        if run is None:
            return None, "start the workspace first"
        if os.geteuid() != 0 and home.multi_user:
            return None, "the policy is root's: start the agent as root for the API"
        return cls(admin, port=admin.cfg["api_port"], hub_api=run["hub_api"],
                   token=home.secret(TOKEN),
                   public_url=run["url"].rstrip("/") + f"/services/{SERVICE}/api/"), ""
