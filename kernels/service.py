"""The kernel's way to a hub service's REST API (the catalog of the data
service, the job service): the user's token, one kept-alive connection, and
errors that say what was wrong."""

from __future__ import annotations

from .errors import (REFUSED, AuthenticationFailed, Forbidden, NotFound, PACSError, Refused,
                     ServiceUnavailable)


class ServiceClient:
    """Subclasses name the service in messages (``name``), say how it gets
    configured (``unset``), what a refused request is (``refused``) and what a
    404 with no better reason means (``not_found``)."""

    name = "the service"
    unset = "no service configured"
    refused = "the service refused it"
    not_found = "not found (or not one you may see)"

    def __init__(self, api_url: str, token: str | None = None, timeout: float = 60.0):
        self.api = api_url.rstrip("/")
        self._token = token
        self.timeout = timeout
        self._client = None

    def _raw(self, method: str, path: str, body=None):
        """The answer whatever its status; ServiceUnavailable when none came."""
        import httpx

        if not self.api:
            raise PACSError(self.unset)
        if self._client is None:
            headers = {"Authorization": f"token {self._token}"} if self._token else {}
            self._client = httpx.Client(headers=headers, timeout=self.timeout)
        try:
            return self._client.request(method, f"{self.api}/{path}", json=body)
        except httpx.TransportError as e:
            raise ServiceUnavailable(f"{self.name} at {self.api} did not answer ({e})") from None

    def _send(self, method: str, path: str, body=None):
        """The answer; a 4xx or 5xx raises: Refused (a ValueError) for a
        request refused as made, AuthenticationFailed, Forbidden, NotFound,
        ServiceUnavailable (502, 503, 504) or PACSError."""
        r = self._raw(method, path, body)
        if r.status_code < 400:
            return r
        reason = r.reason_phrase
        try:
            reason = r.json().get("message") or reason
        except ValueError:
            pass
        if r.status_code in REFUSED:
            raise Refused(f"{self.refused}: {reason}")
        if r.status_code in (502, 503, 504):
            raise ServiceUnavailable(f"{self.name} cannot answer now: {reason} (HTTP "
                                     f"{r.status_code}); try again later")
        if r.status_code == 404 and reason == "Not Found":
            reason = self.not_found
        kind = {401: AuthenticationFailed, 403: Forbidden, 404: NotFound}.get(r.status_code,
                                                                              PACSError)
        raise kind(f"{self.name}: {method} {path}: {reason} (HTTP {r.status_code})")

    def _json(self, method: str, path: str, body=None) -> dict:
        return self._send(method, path, body).json()
