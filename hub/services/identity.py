"""Who is calling a hub service: the caller's token checked by JupyterHub,
and their projects (the groups ``project-NAME``), shared by the services.

The CLI's admin service and, when they ask with the header
``X-Imaginghub-Scope: all``, admin users see everything.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import httpx
from jupyterhub.services.auth import HubAuth
from tornado import web

from ..users import PROJECT_PREFIX

ADMIN_SERVICE = "imaginghub-admin"
SCOPE_HEADER = "X-Imaginghub-Scope"

log = logging.getLogger("imaginghub.services")


@dataclass
class Caller:
    name: str
    projects: frozenset[str]
    admin: bool
    all_projects: bool  # sees every series (the admin service, or an admin who asked)
    kind: str = "user"  # or "service"
    token_id: str | None = None  # the hub's id of the token the request came with

    @property
    def scope(self) -> set[str] | None:
        """Projects to filter by; None means no filter."""
        return None if self.all_projects else set(self.projects)


class Users:
    """The hub's model of users (groups, admin), fetched with the service's
    own token and cached for ``cache_seconds``."""

    def __init__(self, hub_auth: HubAuth, cache_seconds: float = 10.0):
        self.hub_auth = hub_auth
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, dict]] = {}
        self.http = httpx.AsyncClient(
            timeout=10, headers={"Authorization": f"token {hub_auth.api_token}"})

    async def model(self, name: str) -> dict:
        hit = self._cache.get(name)
        if hit and time.monotonic() - hit[0] < self.cache_seconds:
            return hit[1]
        r = await self.http.get(f"{self.hub_auth.api_url}/users/{name}")
        if r.status_code != 200:
            return {}  # not cached: a passing hub error must not lock a user out
        model = r.json()
        self._cache[name] = (time.monotonic(), model)
        return model

    async def projects(self, name: str) -> frozenset[str]:
        groups = (await self.model(name)).get("groups", [])
        return frozenset(g[len(PROJECT_PREFIX):] for g in groups if g.startswith(PROJECT_PREFIX))

    async def aclose(self) -> None:
        await self.http.aclose()


def request_token(handler: web.RequestHandler) -> str:
    header = handler.request.headers.get("Authorization", "")
    return header.split(None, 1)[1].strip() if " " in header else ""


async def identify(handler: web.RequestHandler, users: Users, service: str) -> Caller:
    """The caller of ``handler``'s request, or HTTP 401 (no valid token) or
    403 (a token without access to ``service``)."""
    token = request_token(handler)
    model = None
    if token:
        try:
            model = await users.hub_auth.user_for_token(token, sync=False)
        except Exception:  # an unreachable hub or a bad token: not authenticated
            log.warning("token check failed for %s %s", handler.request.method,
                        handler.request.path)
    if not model:
        raise web.HTTPError(401)
    if not users.hub_auth.check_scopes({f"access:services!service={service}"}, model):
        handler._audit_user = model.get("name", "-")
        raise web.HTTPError(403)
    name = model["name"]
    if model.get("kind", "user") == "service":
        return Caller(name, frozenset(), admin=name == ADMIN_SERVICE,
                      all_projects=name == ADMIN_SERVICE, kind="service")
    full = await users.model(name)
    admin = bool(full.get("admin"))
    asked = handler.request.headers.get(SCOPE_HEADER, "").lower() == "all"
    return Caller(name, await users.projects(name), admin, all_projects=admin and asked,
                  token_id=model.get("token_id"))
