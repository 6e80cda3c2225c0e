"""One job's process: ``python -m imaginghub.hub.services.jobs.child JOB_DIR``.

It runs the workflow with papermill as the job's ``spec.json`` says, in the
job's ``work/`` folder, and leaves beside it:

- ``output.ipynb``: the executed notebook, saved after every cell (papermill),
  so a failing or killed run keeps what it did up to there;
- ``progress.json``: cells done of all cells, rewritten as cells finish;
- ``result.json``: how it ended, written last (atomically). A job's process
  that dies without writing it was killed;
- ``work/inputs/``: the files given with the job (``POST jobs``'s
  ``inputs``), read-only, as the notebook finds them;
- ``work/stored-series.jsonl``: a JSON line for each series the notebook
  stored in the archive (``pacs.store_instances``, so also
  ``write_segmentation``), which the jobs widget links to the browser viewer.

The log (``log.txt``) is this process's output: papermill's cell markers and
each cell's printed output, as the cells run.

It runs as the job's user with umask 077. In multi-user mode the job's
folder has the service account's group (set-group-id): the files written
here are made readable by that group (0640), and when the notebook is done
so is everything in ``work/``; nobody else can read any of it. Papermill's
kernel talks over IPC, in the account's private runtime folder.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

from ....kernels.dicomweb import ENV_JOB_STORED, STORED_FILE


def write_json(path: Path, value: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(fd, 0o640)  # for the job service (the folder's group), past the umask
        f.write(json.dumps(value))
    os.replace(tmp, path)


def write_inputs(folder: Path, inputs: dict[str, str]) -> None:
    """The job's input files (base64 in the spec, their names checked by
    the service) in ``work/inputs/``, read-only."""
    import base64

    if not inputs:
        return
    folder.mkdir(exist_ok=True)
    for name, text in inputs.items():
        if "/" in name or name.startswith("."):
            raise ValueError(f"input file name {name!r}")
        fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o400)
        with os.fdopen(fd, "wb") as f:
            f.write(base64.b64decode(text))


def share_outputs(work: Path) -> None:
    """Let the folder's group (the job service) read what the notebook left
    in ``work/``: files g+r, folders g+rx; links are left alone."""
    import stat

    for root, dirs, files in os.walk(work):
        for name in [*dirs, *files]:
            path = os.path.join(root, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                os.chmod(path, (st.st_mode & 0o7777) | 0o050)
            elif stat.S_ISREG(st.st_mode):
                os.chmod(path, (st.st_mode & 0o7777) | 0o040)


def ipc_kernel_manager():
    """jupyter_client's kernel manager with the kernel's channels on Unix
    sockets in JUPYTER_RUNTIME_DIR (0700) instead of loopback TCP."""
    import uuid

    from jupyter_client import AsyncKernelManager
    from jupyter_core.paths import jupyter_runtime_dir
    from jupyter_core.utils import ensure_dir_exists
    from traitlets import CaselessStrEnum, default

    class IPCKernelManager(AsyncKernelManager):
        transport = CaselessStrEnum(["tcp", "ipc"], default_value="ipc", config=True)

        @default("ip")
        def _ip_in_runtime_dir(self):
            # jupyter_client's default is "kernel-ipc" in the working folder
            # when no connection file is named yet: the job's work/ folder.
            # A Kubernetes job's HOME is a fresh /tmp: the folder may not be there.
            runtime = jupyter_runtime_dir()
            ensure_dir_exists(runtime, 0o700)
            return os.path.join(runtime, f"kernel-{uuid.uuid4()}-ipc")

    return IPCKernelManager


class Progress(logging.Handler):
    """Turns papermill's "Ending Cell N" log lines into ``progress.json``."""

    def __init__(self, path: Path, cells: int):
        super().__init__(logging.INFO)
        self.path, self.cells = path, max(cells, 1)
        write_json(path, {"done": 0, "cells": self.cells})

    def emit(self, record):
        message = record.getMessage()
        if message.startswith("Ending Cell "):
            try:
                done = int(message[len("Ending Cell "):].strip("-"))
            except ValueError:
                return
            write_json(self.path, {"done": min(done, self.cells), "cells": self.cells})


def failed_cell(path: Path) -> int | None:
    """The index of the failing cell in the executed notebook (papermill
    marks it, and puts a note about it at the top)."""
    try:
        cells = json.loads(path.read_text())["cells"]
    except (OSError, ValueError, KeyError):
        return None
    for i, cell in enumerate(cells):
        if cell.get("metadata", {}).get("papermill", {}).get("exception"):
            return i
    return None


def run(job_dir: Path) -> int:
    # jsonschema (under nbformat) imports rfc3987_syntax when it is installed,
    # which compiles a grammar for 1.1 s of the 1.5 s that importing papermill
    # takes; notebooks need none of its IRI format checks.
    sys.modules.setdefault("rfc3987_syntax", None)
    import nbformat
    import papermill
    from papermill.exceptions import PapermillExecutionError

    spec = json.loads((job_dir / "spec.json").read_text())
    work = job_dir / "work"
    work.mkdir(exist_ok=True)
    write_inputs(work / "inputs", spec.get("inputs") or {})
    # the series the notebook stores (pacs.store_instances) are listed here
    os.environ[ENV_JOB_STORED] = str(work / STORED_FILE)
    nb = nbformat.read(spec["notebook"], as_version=4)
    # papermill adds the injected-parameters cell: one more than the notebook has
    cells = sum(1 for c in nb.cells) + (1 if spec["parameters"] else 0)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("papermill").addHandler(Progress(job_dir / "progress.json", cells))
    result: dict = {"status": "succeeded", "reason": "", "failed_cell": None}
    try:
        papermill.execute_notebook(
            spec["notebook"], str(job_dir / "output.ipynb"), parameters=spec["parameters"],
            kernel_name=spec.get("kernel", "imaging"), cwd=str(work), progress_bar=False,
            log_output=True, request_save_on_cell_execute=True,
            start_timeout=int(spec.get("start_timeout", 120)),
            kernel_manager_class=ipc_kernel_manager())
    except PapermillExecutionError as e:
        result.update(status="failed", reason=f"{e.ename}: {e.evalue}",
                      failed_cell=failed_cell(job_dir / "output.ipynb"))
    except Exception as e:  # the kernel died, the notebook could not be read ...
        result.update(status="failed", reason=f"{type(e).__name__}: {e}")
    result["ended"] = time.time()
    share_outputs(work)
    write_json(job_dir / "result.json", result)
    print(f"job {result['status']}" + (f": {result['reason']}" if result["reason"] else ""),
          flush=True)
    return 0 if result["status"] == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(run(Path(sys.argv[1])))
