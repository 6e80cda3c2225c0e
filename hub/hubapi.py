"""The CLI's way into the running hub: its REST API, as the admin service."""

from __future__ import annotations

import httpx

from .errors import HubNotRunning, ImagingHubError
from .hubconfig import ADMIN_SERVICE
from .state import Home


class HubAPI:
    def __init__(self, home: Home):
        run = home.read_run()
        if run is None:
            raise HubNotRunning(
                f"the workspace in {home.path} is not running: start it with "
                f"'imaginghub up --home {home.path}' and try again"
            )
        self.url = run["hub_api"]
        self._client = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"token {home.secret('admin_service_token')}"},
            timeout=30,
        )

    def request(self, method: str, path: str, *, missing_ok: bool = False,
                **kw) -> httpx.Response:
        """The hub's answer; an error for any refusal (but a 404 with
        ``missing_ok``)."""
        try:
            r = self._client.request(method, path, **kw)
        except httpx.TransportError as e:
            raise HubNotRunning(f"cannot reach the hub at {self.url} ({type(e).__name__})") from None
        if r.status_code >= 400 and not (missing_ok and r.status_code == 404):
            try:
                message = r.json().get("message", r.text)
            except ValueError:
                message = r.text
            raise ImagingHubError(f"the hub refused {method} {path} as {ADMIN_SERVICE}: "
                                  f"HTTP {r.status_code} {message}")
        return r

    def has_user(self, name: str) -> bool:
        """Whether the hub knows ``name`` (a registry user, or one who logged
        in with the site's identity provider)."""
        return self.request("GET", f"/users/{name}", missing_ok=True).status_code == 200

    def ensure_user(self, name: str, admin: bool) -> None:
        if self._client.get(f"/users/{name}").status_code == 404:
            self.request("POST", f"/users/{name}")
        if admin:
            self.request("PATCH", f"/users/{name}", json={"admin": True})

    def remove_user(self, name: str) -> None:
        """Stop the user's servers and delete them from the hub."""
        import time

        if self._client.get(f"/users/{name}").status_code == 404:
            return
        self._client.delete(f"/users/{name}/server")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            model = self._client.get(f"/users/{name}").json()
            if not model.get("servers") and not model.get("pending"):
                break
            time.sleep(0.5)
        self.request("DELETE", f"/users/{name}")

    def add_to_group(self, group: str, name: str) -> None:
        if self._client.get(f"/groups/{group}").status_code == 404:
            self.request("POST", f"/groups/{group}")
        self.request("POST", f"/groups/{group}/users", json={"users": [name]})

    def new_token(self, name: str, note: str = "imaginghub token") -> str:
        r = self.request("POST", f"/users/{name}/tokens", json={"note": note})
        return r.json()["token"]
