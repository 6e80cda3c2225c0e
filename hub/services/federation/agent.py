"""A site's federation agent: a Flower SuperNode and imaginghub's bridge,
which runs no code of the coordinator's.

The SuperNode (``flower-supernode --isolation process``) connects out to the
coordinator's Fleet API over TLS, authenticated by the site's node key, and
pulls the study's messages: nothing connects into the site. It runs nothing
itself. In Flower's own set-up a SuperExec would start a ClientApp process
per message, loaded from the run's FAB, that is the coordinator's code. Here
:func:`serve` takes its place on the SuperNode's local runtime API
(loopback, with the SuperExec secret), and for every message:

1. reads the run's FAB hash and refuses the message, with an error reply,
   unless it is the bridge hash the site pinned (the FAB is never
   installed or imported, whatever it holds);
2. reads the round's request as data (:func:`.bridge.read_round`);
3. hands it to the site's round (:class:`.site.SiteRound`: the policy, the
   study's own job, the egress gate, the audit) and replies with the
   outcome and the released bytes only.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

from .bridge import read_round, reply_content

log = logging.getLogger("imaginghub.federation")

AUTH_METHODS = frozenset({"/flwr.proto.Runtime/AcquireTask"})
NOT_PINNED = "this site has not pinned the run's app (its FAB hash): nothing was run"


@dataclass
class Answer:
    """What a site's round handler gives back."""

    status: str
    reason: str = ""
    released: dict | None = None  # name: bytes
    provenance: dict | None = None
    handed_over: Callable[[], None] | None = None  # once the SuperNode took the reply


def _client(address: str, interceptors, tries: int = 5):
    """A client of the SuperNode's runtime API. Its retries are our own:
    Flower's (``make_simple_http_retry_invoker``) sends SIGINT to its whole
    process on a 401, which suits its process per task and would stop this
    agent, whose tasks are threads."""
    import httpx
    from flwr.supercore.retry import RetryInvoker, exponential
    from flwr.supercore.runtime import RuntimeHttpClient

    retry = RetryInvoker(wait_gen_factory=lambda: exponential(max_delay=10),
                         recoverable_exceptions=httpx.TransportError, max_tries=tries,
                         max_time=None)
    return RuntimeHttpClient.from_server_address(
        server_address=address, insecure=True, root_certificates=None,
        interceptors=interceptors, retry_invoker=retry)


def serve(runtime_address: str, secret: bytes, site: str, pinned: str,
          handle: Callable[[dict], Answer], *, stop: threading.Event | None = None,
          poll: float = 0.5) -> None:
    """Take the SuperNode's tasks until ``stop`` is set: each in a thread of
    its own, since a round's job can take long."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.constant import TaskType
    from flwr.supercore.interceptors import (RuntimeVersionHttpInterceptor,
                                             SuperExecAuthHttpInterceptor)

    stop = stop or threading.Event()
    client = _client(runtime_address, [
        RuntimeVersionHttpInterceptor(component_name="SuperExec"),
        SuperExecAuthHttpInterceptor(master_secret=secret, protected_methods=AUTH_METHODS)],
        tries=1)  # the loop tries again, and sees a stop
    try:
        while not stop.is_set():
            try:
                res = client.AcquireTask(AcquireTaskRequest(
                    supported_task_types=[TaskType.CLIENT_APP], agentapp_fab_hashes=[]))
            except Exception as e:  # the SuperNode restarting: try again
                log.warning("the SuperNode's runtime API did not answer (%s)", type(e).__name__)
                stop.wait(2)
                continue
            if res.HasField("task") and res.token:
                threading.Thread(target=run_task, daemon=True, name=f"task-{res.task.task_id}",
                                 args=(runtime_address, res.token, site, pinned, handle)).start()
            stop.wait(poll)
    finally:
        client.close()


def run_task(runtime_address: str, token: str, site: str, pinned: str,
             handle: Callable[[dict], Answer]) -> None:
    """One message: checked, answered, the task closed."""
    from flwr.app import Error, Message
    from flwr.common.constant import SubStatus
    from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
    from flwr.supercore.interceptors import (RuntimeTokenHttpInterceptor,
                                             RuntimeVersionHttpInterceptor)
    from flwr.supernode.runtime.run_clientapp import (pull_task_input, push_message,
                                                      push_task_output)

    client = _client(runtime_address, [
        RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
        RuntimeTokenHttpInterceptor(token)])
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    heartbeat.start()
    context, status, details = None, SubStatus.FAILED, "the site's bridge failed"
    answer = None
    try:
        message, context, run, fab = pull_task_input(client)
        if fab.hash_str != pinned:
            log.warning("run %s: FAB %s is not the pinned bridge: refused", run.run_id,
                        fab.hash_str[:12])
            reply = Message(Error(code=0, reason=NOT_PINNED), reply_to=message)
            details = NOT_PINNED
        else:
            try:
                req = read_round(message)
            except ValueError as e:
                answer = Answer("refused", str(e))
            else:
                started = time.monotonic()
                try:
                    answer = handle(req)
                except Exception:  # said to the site's log, never to the coordinator
                    log.exception("study %s round %s failed at this site", req["study"],
                                  req["round_number"])
                    answer = Answer("failed", "the round failed at this site")
                log.info("study %s round %s: %s in %.1f s", req["study"],
                         req["round_number"], answer.status, time.monotonic() - started)
            reply = Message(reply_content(site, answer.status, answer.reason,
                                          answer.released, answer.provenance),
                            reply_to=message)
            status, details = SubStatus.COMPLETED, ""
        push_message(client, reply, context)
        if answer is not None and answer.handed_over is not None:
            answer.handed_over()  # the audit: what left, never what only might have
    except Exception:
        log.exception("a message could not be answered")
    finally:
        heartbeat.stop()
        push_task_output(client=client, context=context, sub_status=status, details=details)
        client.close()


def site_round_handler(site_round) -> Callable[[dict], Answer]:
    """The handler that runs a round with :class:`.site.SiteRound`."""
    from .site import RoundRequest

    def handle(req: dict) -> Answer:
        req = dict(req)
        weights = req.pop("weights", None)
        request = RoundRequest(**req)
        outcome = site_round.run(request, weights=weights, record=False)
        released = {n: r.data for n, r in outcome.released.items()}
        return Answer(outcome.status, outcome.reason, released, outcome.provenance,
                      handed_over=(lambda: site_round.record(request, outcome))
                      if released else None)

    return handle


class SiteAgent:
    """A site's SuperNode (a process) and the bridge serving it (a thread).

    ``home`` holds the node key (``node.key``, ``node.pub``: made once), the
    SuperExec secret and the SuperNode's log; ``ca`` is the federation CA's
    certificate the coordinator's admin gave the site."""

    def __init__(self, home, site: str, *, superlink: str, ca, runtime_port: int,
                 pinned: str, handle: Callable[[dict], Answer]):
        from pathlib import Path

        from .policy import IDENT

        if not IDENT.match(site):
            raise ValueError(f"a site's name {site!r:.70} is 1-64 letters, digits, '.', '_', "
                             "'-'")
        self.home, self.site, self.superlink = Path(home), site, superlink
        self.ca, self.runtime_port, self.pinned, self.handle = Path(ca), runtime_port, pinned, handle
        self.node = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def init(self):
        """The node key (made once): its public half is what the
        coordinator registers for this site."""
        import secrets

        from ...state import write_private
        from .pki import make_node_key

        self.home.mkdir(parents=True, exist_ok=True)
        if not (self.home / "node.key").exists():
            make_node_key(self.home)
        if not (self.home / "superexec.secret").exists():
            write_private(self.home / "superexec.secret", secrets.token_hex(32))
        return self.home / "node.pub"

    def start(self, wait: float = 60) -> None:
        import sys
        from pathlib import Path

        from ...process import Managed
        from .coordinator import _port_open, flower_env

        self.init()
        self.node = Managed(f"supernode-{self.site}", [
            str(Path(sys.executable).parent / "flower-supernode"),
            "--superlink", self.superlink, "--root-certificates", str(self.ca),
            "--auth-supernode-private-key", str(self.home / "node.key"),
            "--isolation", "process", "--host", "127.0.0.1", "--port", str(self.runtime_port),
            "--superexec-auth-secret-file", str(self.home / "superexec.secret"),
            "--max-retries", "0"],
            log_path=self.home / "supernode.log", env=flower_env(self.home / "flwr"),
            ready=lambda: _port_open("127.0.0.1", self.runtime_port), cwd=self.home)
        self.node.start()
        self.node.wait_ready(wait)
        self._stop.clear()
        secret = (self.home / "superexec.secret").read_bytes()
        self._thread = threading.Thread(
            target=serve, daemon=True, name=f"bridge-{self.site}",
            args=(f"127.0.0.1:{self.runtime_port}", secret, self.site, self.pinned, self.handle),
            kwargs={"stop": self._stop})
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self.node is not None:
            self.node.stop()
        if self._thread is not None:
            self._thread.join(10)
