"""Test helpers that act as a user would: the hub's REST API with a user's
token, a single-user server, and a kernel driven over its websocket through
the proxy."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import httpx


class UserSession:
    def __init__(self, base_url: str, user: str, token: str):
        self.base = base_url.rstrip("/")
        self.user = user
        self.headers = {"Authorization": f"token {token}"}
        self.token = token

    def hub(self, method: str, path: str, **kw) -> httpx.Response:
        return httpx.request(method, f"{self.base}/hub/api{path}", headers=self.headers,
                             timeout=30, **kw)

    def start_server(self, timeout: float = 90) -> None:
        r = self.hub("POST", f"/users/{self.user}/server")
        assert r.status_code in (201, 202, 400), r.text  # 400: already running
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            model = self.hub("GET", f"/users/{self.user}").json()
            server = model.get("servers", {}).get("")
            if server and server.get("ready"):
                return
            time.sleep(0.3)
        raise AssertionError(f"the server of {self.user} did not start in {timeout} s")

    def server(self, method: str, path: str, **kw) -> httpx.Response:
        return httpx.request(method, f"{self.base}/user/{self.user}/api{path}",
                             headers=self.headers, timeout=60, **kw)

    def start_kernel(self, name: str | None = None) -> dict:
        body = {"name": name} if name else {}
        r = self.server("POST", "/kernels", json=body)
        assert r.status_code == 201, r.text
        return r.json()

    def execute(self, kernel_id: str, code: str, timeout: float = 120) -> dict:
        """Run ``code`` in the kernel; return {"stdout", "stderr", "result", "error"}."""
        return asyncio.run(self._execute(kernel_id, code, timeout))

    async def _execute(self, kernel_id: str, code: str, timeout: float) -> dict:
        import websockets

        ws_url = (self.base.replace("http://", "ws://")
                  + f"/user/{self.user}/api/kernels/{kernel_id}/channels")
        msg_id = uuid.uuid4().hex
        request = {
            "header": {"msg_id": msg_id, "username": self.user, "session": uuid.uuid4().hex,
                       "msg_type": "execute_request", "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell",
            "content": {"code": code, "silent": False, "store_history": False,
                        "user_expressions": {}, "allow_stdin": False},
        }
        out = {"stdout": "", "stderr": "", "result": None, "error": None}
        async with websockets.connect(ws_url, additional_headers=self.headers,
                                      max_size=None) as ws:
            await ws.send(json.dumps(request))
            async with asyncio.timeout(timeout):
                while True:
                    msg = json.loads(await ws.recv())
                    if msg.get("parent_header", {}).get("msg_id") != msg_id:
                        continue
                    kind, content = msg["msg_type"], msg["content"]
                    if kind == "stream":
                        out[content["name"]] += content["text"]
                    elif kind == "execute_result":
                        out["result"] = content["data"].get("text/plain")
                    elif kind == "error":
                        out["error"] = f"{content['ename']}: {content['evalue']}"
                    elif kind == "status" and content["execution_state"] == "idle":
                        return out
