"""``jobs``: run workflow notebooks as repeatable jobs from a notebook.

>>> job = jobs.submit("cohort-qc", cohort="lung-ct@3")
>>> job.wait()                      # a progress bar until it ends
>>> job.artifacts()                 # the files it wrote
>>> job.download("qc-output/qc.csv")
>>> jobs.list()                     # yours, and those shared with your projects
>>> jobs.workflows()                # what can run, and its parameters

A job runs as you, with a token of its own that reads what you may read.
Its record keeps what went in (notebook SHA-256, parameters, the cohort's
version and a hash of its series, package versions), and ``rerun()`` runs
exactly that again.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from .errors import PACSError
from .service import ServiceClient

ACTIVE = ("queued", "running")


class JobFailed(PACSError):
    """A job that ended other than succeeded (its reason in the message)."""


class Jobs(ServiceClient):
    name = "the job service"
    unset = "no job service configured: the hub sets IMAGINGHUB_JOBS_URL in every user server"
    refused = "the job service refused it"
    not_found = "no such job or workflow (or not one you may see)"

    def __init__(self, url: str, token: str | None = None, timeout: float = 60.0):
        self.url = url.rstrip("/")
        super().__init__(self.url + "/api" if self.url else "", token, timeout)

    @classmethod
    def from_env(cls, environ=None) -> Jobs:
        from .environment import kernel_environment

        env = kernel_environment(environ)
        return cls(env.jobs_url, env.token)

    def __repr__(self) -> str:
        return f"<jobs {self.url or '(not configured)'}>"

    # -- the API --------------------------------------------------------------
    def workflows(self):
        """The workflows you can run, as a DataFrame (name, title, per_series,
        parameters)."""
        import pandas as pd

        rows = self._json("GET", "workflows")["workflows"]
        return pd.DataFrame([{"name": w["name"], "title": w["title"],
                              "per_series": w["per_series"],
                              "parameters": ", ".join(f"{n}: {p['type']} = {p['default']}"
                                                      for n, p in w["parameters"].items()),
                              "description": w["description"]} for w in rows])

    def workflow(self, name: str) -> dict:
        """One workflow: title, description, what it reads and writes, and
        its parameters (type, default, help)."""
        return self._json("GET", f"workflows/{name}")

    def submit(self, workflow: str, *, shared: bool = False, time_limit: int | None = None,
               resources: dict | None = None, inputs: dict[str, bytes] | None = None,
               **parameters) -> Job:
        """Queue ``workflow`` with ``parameters`` (``cohort="lung-ct@3"`` or
        ``series=[...]`` for the ones that read series). ``shared=True`` lets
        the members of the cohort's project see it; ``time_limit`` in seconds
        (at most the site's); ``resources`` what one run needs, over the
        workflow's own (``{"cpu": 4, "memory": "16Gi", "gpu": 1}``: used
        where jobs run on Kubernetes); ``inputs`` files for the run
        (``{name: bytes}``, at most 64 MiB together), which the notebook finds
        in ``inputs/``. Parameters the workflow does not take,
        or of the wrong type, are refused before anything is queued."""
        if hasattr(parameters.get("cohort"), "ref"):  # a Cohort object
            c = parameters["cohort"]
            parameters.update(cohort=c.ref, project=c.project)
        body = {"workflow": workflow, "parameters": parameters, "shared": shared}
        if time_limit is not None:
            body["time_limit"] = time_limit
        if resources is not None:
            body["resources"] = resources
        return self._post(body, inputs)

    def submit_as(self, user: str, workflow: str, parameters: dict, *,
                  inputs: dict[str, bytes] | None = None) -> Job:
        """Queue ``workflow`` for ``user``: for a service that sees every
        job (the site's admin service), as :meth:`submit` otherwise."""
        return self._post({"workflow": workflow, "user": user, "parameters": parameters},
                          inputs)

    def _post(self, body: dict, inputs: dict[str, bytes] | None) -> Job:
        if inputs:
            import base64

            body["inputs"] = {name: base64.b64encode(bytes(data)).decode()
                              for name, data in inputs.items()}
        return Job(self, self._json("POST", "jobs", body))

    def list(self, *, status: str | None = None, limit: int = 50, mine: bool = False):
        """Jobs newest first, as a DataFrame; ``mine=True`` leaves out those
        others shared with you."""
        import pandas as pd

        q = f"jobs?limit={int(limit)}" + (f"&status={status}" if status else "") + \
            ("&mine=1" if mine else "")
        rows = self._json("GET", q)["jobs"]
        cols = ["id", "workflow", "user", "status", "progress", "submitted", "ended", "cohort",
                "reason"]
        return pd.DataFrame([{**{k: j[k] for k in cols if k != "cohort"},
                              "cohort": (j["cohort"] or {}).get("ref", "")} for j in rows],
                            columns=cols)

    def get(self, job_id: str) -> Job:
        return Job(self, self._json("GET", f"jobs/{job_id}"))


class Job:
    """One job; its fields are those of the service's record (``.status``,
    ``.parameters``, ``.cohort``, ``.notebook`` ...), fetched again by
    :meth:`refresh` and :meth:`wait`."""

    def __init__(self, jobs: Jobs, model: dict):
        self._jobs = jobs
        self._model = model

    def __getattr__(self, name):
        try:
            return self.__dict__["_model"][name]
        except KeyError:
            raise AttributeError(name) from None

    def __repr__(self) -> str:
        m = self._model
        extra = f", {m['reason']}" if m.get("reason") else ""
        return f"<Job {m['id']} {m['workflow']} {m['status']} {100 * m['progress']:.0f}%{extra}>"

    def _repr_html_(self) -> str:
        import html

        m = self._model
        colour = {"succeeded": "#1a7f37", "failed": "#cf222e", "running": "#0969da"}.get(
            m["status"], "#57606a")
        return (f"<b>job {m['id']}</b> {html.escape(m['title'] or m['workflow'])}: "
                f"<span style='color:{colour}'>{m['status']}</span> "
                f"({100 * m['progress']:.0f}%) {html.escape(m.get('reason') or '')}")

    @property
    def model(self) -> dict:
        return dict(self._model)

    def refresh(self) -> Job:
        self._model = self._jobs._json("GET", f"jobs/{self.id}")
        return self

    @property
    def done(self) -> bool:
        return self._model["status"] not in ACTIVE

    def wait(self, timeout: float | None = None, *, progress: bool = True,
             raise_on_failure: bool = False, interval: float = 0.5) -> Job:
        """Wait until the job ends (a progress bar meanwhile); returns it.
        ``raise_on_failure``: JobFailed when it did not succeed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=100, desc=f"job {self.id} {self.workflow}", unit="%",
                       bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}")
        try:
            while True:
                self.refresh()
                if bar is not None:
                    bar.n = round(100 * self._model["progress"])
                    bar.set_postfix_str(self._model["status"])
                if self.done:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"job {self.id} still {self.status} after {timeout} s")
                time.sleep(interval)
        finally:
            if bar is not None:
                bar.close()
        if raise_on_failure and self.status != "succeeded":
            raise JobFailed(f"job {self.id} {self.status}: {self.reason}")
        return self

    def logs(self) -> str:
        """The job's log so far: papermill's cell markers and what cells printed."""
        return self._jobs._send("GET", f"jobs/{self.id}/log").text

    def output_notebook(self, path: str | os.PathLike | None = None):
        """The executed notebook (kept also when a cell failed): saved to
        ``path`` when given (returns the path), else returned as an nbformat
        notebook."""
        data = self._jobs._send("GET", f"jobs/{self.id}/notebook").content
        if path is not None:
            Path(path).write_bytes(data)
            return Path(path)
        import nbformat

        return nbformat.reads(data.decode(), as_version=4)

    def artifacts(self) -> list[dict]:
        """The files the job wrote (``path``, ``size``); for a per-series job,
        every series' run's files under its id."""
        return self._jobs._json("GET", f"jobs/{self.id}/artifacts")["artifacts"]

    def download(self, path: str, to: str | os.PathLike | None = None) -> Path:
        """One artefact saved locally (default: its file name here)."""
        data = self._jobs._send("GET", f"jobs/{self.id}/artifacts/{path}").content
        target = Path(to) if to is not None else Path(Path(path).name)
        target.write_bytes(data)
        return target

    def read(self, path: str) -> bytes:
        """One artefact's bytes."""
        return self._jobs._send("GET", f"jobs/{self.id}/artifacts/{path}").content

    def children(self) -> list[Job]:
        """The runs of a per-series job, one per series."""
        return [Job(self._jobs, m) for m in
                self._jobs._json("GET", f"jobs/{self.id}/children")["jobs"]]

    def cancel(self) -> Job:
        self._model = self._jobs._json("POST", f"jobs/{self.id}/cancel")
        return self

    def rerun(self) -> Job:
        """A new job with exactly this one's inputs: the same notebook (by its
        SHA-256), parameters and cohort version."""
        return Job(self._jobs, self._jobs._json("POST", f"jobs/{self.id}/rerun"))

    def share(self, shared: bool = True) -> Job:
        """Let the members of the job's project see it (or stop)."""
        self._model = self._jobs._json("PATCH", f"jobs/{self.id}", {"shared": shared})
        return self
