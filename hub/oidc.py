"""Login with a site's identity provider (OpenID Connect: Keycloak, Azure AD,
...): oauthenticator's GenericOAuthenticator, with the provider's groups as
imaginghub's projects and its user names held to imaginghub's naming rules.

- A group ``project-P`` (Keycloak writes group paths: ``/project-P``, or
  ``/imaging/project-P`` for a subgroup) makes its member one of project P;
  JupyterHub's groups follow the provider at every login
  (``manage_groups``), so a user removed from a group there loses the
  project at their next login.
- The provider's user name (``username_claim``) is lower-cased and must then
  be a name the embedded stack would give a Unix account (letters, digits,
  ``.``, ``_``, ``-``, starting with a letter, at most 32 characters, not a
  system account's): a user whose name cannot is refused with the reason,
  never renamed into someone else's.

Used by the Kubernetes chart, and by an embedded site with
``c.JupyterHub.authenticator_class = "imaginghub-oidc"`` and the
``c.ImagingOIDCAuthenticator`` settings (GenericOAuthenticator's, and
``client_secret_file``) in its imaginghub_config.py.
"""

from __future__ import annotations

from pathlib import Path

from oauthenticator.generic import GenericOAuthenticator
from traitlets import Unicode, default

from .accounts import MAX_NAME, RESERVED
from .errors import ConfigError
from .safeio import read_secret
from .users import PROJECT_PREFIX, validate_name


def hub_name(name: str) -> str:
    """The hub name of a provider's user name, or a ConfigError saying why
    it cannot be one."""
    out = (name or "").strip().lower()
    validate_name(out)
    if len(out) > MAX_NAME:
        raise ConfigError(f"user name {out!r} has {len(out)} characters; imaginghub's "
                          f"accounts take at most {MAX_NAME}")
    if out in RESERVED:
        raise ConfigError(f"user name {out!r} is a system account's")
    return out


def project_groups(groups, *, keep: set[str] = frozenset()) -> list[str]:
    """The hub groups of a provider's group list: the last part of each path
    (Keycloak's ``/a/project-P`` is ``project-P``), the projects' and those in
    ``keep`` (the admin groups); sorted, without repeats."""
    out = set()
    for g in groups or []:
        if not isinstance(g, str):
            continue
        name = g.rstrip("/").rsplit("/", 1)[-1]
        if name.startswith(PROJECT_PREFIX) or name in keep:
            out.add(name)
    return sorted(out)


class ImagingOIDCAuthenticator(GenericOAuthenticator):
    """GenericOAuthenticator with projects from the provider's groups and
    user names by imaginghub's naming rules (see the module's text). With no
    ``allowed_groups``, anyone with a project may log in."""

    groups_claim = Unicode("groups", help="""
        The claim of the provider's user info that lists the user's groups
        (Keycloak: a "Group Membership" mapper with this name).""").tag(config=True)

    client_secret_file = Unicode("", help="""
        A file whose first line is the provider's client secret: a regular
        file, not open to every account (root's on an embedded site, 0600).
        Instead of client_secret, so that no secret is in a configuration
        file; the chart passes the secret in OAUTH_CLIENT_SECRET instead.""").tag(
        config=True)

    @default("client_secret")
    def _client_secret_from_file(self):
        if self.client_secret_file:
            return read_secret(Path(self.client_secret_file),
                               "c.ImagingOIDCAuthenticator.client_secret_file",
                               "the provider's client secret")
        return super()._client_secret_default()  # OAUTH_CLIENT_SECRET

    @default("manage_groups")
    def _manage_groups(self):
        return True  # JupyterHub's groups are the provider's, at every login

    async def get_user_groups(self, auth_state: dict) -> set[str]:
        info = (auth_state or {}).get(self.user_auth_state_key) or {}
        return set(project_groups(info.get(self.groups_claim),
                                  keep=set(self.admin_groups) | set(self.allowed_groups)))

    def normalize_username(self, username):
        try:
            return hub_name(username)
        except ConfigError as e:
            # not a name an imaginghub user can have: refused in check_allowed
            self.log.warning("login refused: %s", e)
            return ""

    async def check_allowed(self, username, auth_model):
        if not username:
            return False
        if await super().check_allowed(username, auth_model):
            return True
        groups = (auth_model or {}).get("groups") or []
        return not self.allowed_groups and any(g.startswith(PROJECT_PREFIX) for g in groups)
