"""The user registry: who may log in, their projects, their password hashes.

It lives in ``users.json`` (0600) in the state directory and is the source of
truth for the hub: the generated ``jupyterhub_config.py`` reads it for admins
and groups, and :class:`~imaginghub.hub.auth.RegistryAuthenticator` checks
passwords against it at every login, so a user added while the hub runs can
log in at once. Passwords are stored as salted scrypt hashes only.

A project is a JupyterHub group named ``project-NAME``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError
from .state import write_private

PROJECT_PREFIX = "project-"
_NAME = re.compile(r"^[a-z][a-z0-9_.-]{0,62}$")
_PROJECT = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")

# scrypt parameters: about 40 ms per check on this project's 2-core machine, 16 MiB of memory.
_N, _R, _P = 2**14, 8, 1


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P)
    b64 = base64.b64encode
    return f"scrypt${_N}${_R}${_P}${b64(salt).decode()}${b64(digest).decode()}"


def check_password(password: str, stored: str) -> bool:
    try:
        algo, n, r, p, salt, digest = stored.split("$")
    except ValueError:
        return False
    if algo != "scrypt":
        return False
    got = hashlib.scrypt(
        password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p)
    )
    return hmac.compare_digest(got, base64.b64decode(digest))


def generate_password() -> str:
    return secrets.token_urlsafe(12)


def validate_name(name: str) -> str:
    if not _NAME.match(name):
        raise ConfigError(
            f"invalid user name {name!r}: use lower-case letters, digits, '.', '_' or '-', "
            "starting with a letter (at most 63 characters)"
        )
    return name


def validate_project(project: str) -> str:
    if project.startswith(PROJECT_PREFIX):
        project = project[len(PROJECT_PREFIX):]
    if not _PROJECT.match(project):
        raise ConfigError(
            f"invalid project name {project!r}: use lower-case letters, digits, '_' or '-' "
            "(at most 63 characters)"
        )
    return project


def group_name(project: str) -> str:
    return PROJECT_PREFIX + validate_project(project)


@dataclass
class User:
    name: str
    admin: bool = False
    projects: list[str] = field(default_factory=list)
    password_hash: str = ""

    def to_json(self) -> dict:
        return {
            "admin": self.admin,
            "projects": sorted(set(self.projects)),
            "password": self.password_hash,
        }


class Registry:
    """Read and change ``users.json``. Every change is written atomically."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def load(self) -> dict[str, User]:
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{self.path} is not valid JSON ({e}); restore it from a backup") from e
        return {
            name: User(
                name=name,
                admin=bool(u.get("admin")),
                projects=list(u.get("projects", [])),
                password_hash=u.get("password", ""),
            )
            for name, u in data.get("users", {}).items()
        }

    def save(self, users: dict[str, User]) -> None:
        data = {"users": {n: users[n].to_json() for n in sorted(users)}}
        write_private(self.path, json.dumps(data, indent=2) + "\n")

    def get(self, name: str) -> User | None:
        return self.load().get(name)

    def add(
        self,
        name: str,
        *,
        admin: bool = False,
        projects: list[str] = (),
        password: str | None = None,
        exist_ok: bool = False,
    ) -> tuple[User, str | None]:
        """Add a user (or, with ``exist_ok``, extend one) and return it with the
        new plain-text password when one was set (generated if not given)."""
        validate_name(name)
        projects = [validate_project(p) for p in projects]
        users = self.load()
        user = users.get(name)
        new_password = None
        if user is None:
            new_password = password or generate_password()
            user = User(name=name, admin=admin, projects=projects,
                        password_hash=hash_password(new_password))
        elif not exist_ok:
            raise ConfigError(f"user {name!r} exists already; use 'imaginghub users passwd' "
                              "to set a new password")
        else:
            user.admin = user.admin or admin
            user.projects = sorted(set(user.projects) | set(projects))
        users[name] = user
        self.save(users)
        return user, new_password

    def remove(self, name: str) -> None:
        users = self.load()
        if users.pop(name, None) is None:
            raise ConfigError(f"no user {name!r}")
        self.save(users)

    def set_password(self, name: str, password: str | None = None) -> str:
        users = self.load()
        if name not in users:
            raise ConfigError(f"no user {name!r}; add one with 'imaginghub users add {name}'")
        password = password or generate_password()
        users[name].password_hash = hash_password(password)
        self.save(users)
        return password

    def verify(self, name: str, password: str) -> User | None:
        user = self.get(name)
        if user is None or not user.password_hash:
            # Spend the same time as a real check: no user-existence oracle.
            check_password(password, _DUMMY_HASH)
            return None
        return user if check_password(password, user.password_hash) else None

    def groups(self) -> dict[str, list[str]]:
        """{group name: [user names]} for every project that has members."""
        groups: dict[str, list[str]] = {}
        for user in self.load().values():
            for p in user.projects:
                groups.setdefault(group_name(p), []).append(user.name)
        return {g: sorted(m) for g, m in sorted(groups.items())}


_DUMMY_HASH = hash_password(secrets.token_hex(8))
