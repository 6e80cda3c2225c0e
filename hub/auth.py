"""A password authenticator backed by the site's user registry (users.json)."""

from __future__ import annotations

from jupyterhub.auth import Authenticator
from traitlets import Unicode

from .users import Registry


class RegistryAuthenticator(Authenticator):
    """Log users in with the scrypt-hashed passwords of ``users.json``.

    Users, admins and projects are managed with ``imaginghub users ...``; a
    user exists for the hub as soon as the registry has them. The groups
    (``project-NAME``) that the registry lists are returned with the auth
    model, so a login brings the user's projects up to date.
    """

    registry_path = Unicode(
        help="Path of the user registry (users.json) written by 'imaginghub users'."
    ).tag(config=True)

    def _registry(self) -> Registry:
        return Registry(self.registry_path)

    async def authenticate(self, handler, data):
        name = self.normalize_username((data or {}).get("username", ""))
        password = (data or {}).get("password", "")
        if not name or not password:
            return None
        user = self._registry().verify(name, password)
        if user is None:
            self.log.warning("Failed login for %s", name)
            return None
        return {"name": user.name, "admin": user.admin}

    async def check_allowed(self, username, authentication=None):
        return self._registry().get(username) is not None
