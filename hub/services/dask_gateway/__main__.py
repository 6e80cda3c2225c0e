"""Run the gateway: ``python -m imaginghub.hub.services.dask_gateway CONFIG``.

JupyterHub starts it as its managed service ``dask-gateway`` (with
JUPYTERHUB_API_URL, JUPYTERHUB_API_TOKEN and IMAGINGHUB_HOME set). Its log,
and its proxy's, go to the state directory's ``logs/dask-gateway.log``; each
cluster's scheduler and worker logs to ``dask-gateway/logs/CLUSTER/`` once
the cluster stops (under ``dask-gateway/clusters/CLUSTER/logs`` while it runs).
"""

from __future__ import annotations

import os
import sys

from ...state import Home
from ...process import die_with_parent


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.exit("usage: python -m imaginghub.hub.services.dask_gateway CONFIG")
    home = Home(os.environ["IMAGINGHUB_HOME"])
    log_path = home.path / "logs" / "dask-gateway.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print(f"dask-gateway: logging to {log_path}", file=sys.stderr, flush=True)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)  # the proxy (a child) writes here too
    os.dup2(fd, 2)
    os.close(fd)
    die_with_parent()  # stop with the hub, even if it is killed

    from dask_gateway_server.app import DaskGateway

    DaskGateway.launch_instance(["-f", argv[0]])


if __name__ == "__main__":
    main()
