"""The Kubernetes job runner: each job is a ``batch/v1`` Job in the user
image (``c.JobService.runner = "kubernetes"``; the Helm chart sets it).

- :meth:`start` makes a Secret ``imaginghub-job-ID`` with the job's token,
  its spec and its notebook, and a Job whose one pod mounts it and runs
  ``python -m imaginghub.hub.services.jobs.pod``. Only the token is secret:
  the rest of the environment (the services' URLs) is plain. The pod has the
  labels of users' code (the chart's NetworkPolicies), no service-account
  token, its resources (:meth:`container_resources`: what the workflow's
  metadata and the job asked for, over this runner's defaults), and
  ``ttlSecondsAfterFinished``. The handle is the Job's name.
- The run sends its progress, result, executed notebook and work files to
  the job service's API with its own token (:mod:`.pod`; the service checks
  that the token is the job's and keeps them in ``runs_dir/ID``, see
  :meth:`store`). Nothing is shared on a disk.
- :meth:`poll` reads the Job's conditions and its pod's exit code;
  :meth:`stop` (cancel, time limit) deletes the Job with its pod;
  :meth:`log` is the pod's log through the API, or a line that says why
  there is none. A restarted service adopts a running Job by its name.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from traitlets import Dict, Integer, List, Unicode

from .errors import RunnerUnavailable
from .runner import GONE, RunsFolderRunner

log = logging.getLogger("imaginghub.jobs")

MOUNT = "/run/imaginghub/job"
# the environment variables that hold the job's token
SECRET_VARIABLES = ("JUPYTERHUB_API_TOKEN", "IMAGINGHUB_DICOMWEB_TOKEN")
# what a run may send, besides its work folder (work/...)
RUN_FILES = ("progress.json", "result.json", "output.ipynb")
UNAVAILABLE = b"(logs unavailable: %s)\n"


SECRET_MAX_BYTES = 1_000_000  # a Secret's data: at most 1 MiB, with room for its metadata


def job_name(job_id: str) -> str:
    return f"imaginghub-job-{job_id}"


class KubernetesJobRunner(RunsFolderRunner):
    """Jobs as Kubernetes Jobs (see the module's text)."""

    name = "kubernetes"

    namespace = Unicode("", help="""
        The namespace of the jobs; empty: the service's own (its pod's
        service account's namespace).""").tag(config=True)
    kubeconfig = Unicode("", help="""
        A kubeconfig file; empty: the pod's own service account
        (in-cluster).""").tag(config=True)
    image = Unicode("imaginghub/user:0.1.0", help="""
        The user image the jobs run in (the same as users' servers).""").tag(config=True)
    image_pull_policy = Unicode("IfNotPresent", help="Kubernetes' imagePullPolicy.").tag(
        config=True)
    image_pull_secrets = List(Unicode(), help="Secrets for the site's registry.").tag(
        config=True)
    upload_url = Unicode("", help="""
        The job service's root (``.../services/jobs``) as the jobs' pods reach
        it: where a run sends its results with its token.""").tag(config=True)
    resources = Dict({"requests": {"cpu": "1", "memory": "4Gi"},
                      "limits": {"memory": "8Gi"}}, help="""
        A job's container resources (Kubernetes' form), for what neither its
        workflow nor the job asks for. A namespace LimitRange or
        ResourceQuota bounds what jobs may ask for: the API server refuses
        a Job above it, and the job fails saying so.""").tag(config=True)
    gpu_image = Unicode("", help="""
        The image of a job that asks for a GPU (the user image's GPU
        variant); empty: :attr:`image`.""").tag(config=True)
    gpu_resource = Unicode("nvidia.com/gpu", help="""
        The extended resource a job's ``gpu`` asks for.""").tag(config=True)
    gpu_node_selector = Dict(help="""
        Node labels a job that asks for a GPU requires (besides
        node_selector).""").tag(config=True)
    gpu_tolerations = List(Dict(), help="""
        Tolerations of a job that asks for a GPU (GPU nodes are often
        tainted).""").tag(config=True)
    ttl_seconds_after_finished = Integer(3600, help="""
        How long Kubernetes keeps a finished Job and its pod (its log).""").tag(config=True)
    extra_labels = Dict(help="""
        Labels of every job's pod: the chart's NetworkPolicies know users'
        code by them.""").tag(config=True)
    node_selector = Dict(help="Node labels a job's pod requires.").tag(config=True)
    tolerations = List(Dict(), help="Tolerations of a job's pod.").tag(config=True)
    uid = Integer(1000, help="The user id jobs run as (the user image's).").tag(config=True)

    def __init__(self, home=None, *, runs_dir: Path | None = None, **kwargs):
        super().__init__(home, **kwargs)
        # the service's own folder: the runs' files come through its API, and
        # no process of a user's touches them (not the spool of local runs)
        self.runs_dir = Path(runs_dir or home.jobs_dir / "runs")
        self._api = None
        if not self.namespace:
            sa = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
            self.namespace = sa.read_text().strip() if sa.exists() else "default"

    # -- the API ---------------------------------------------------------------------
    async def api(self):
        if self._api is None:
            from kubernetes_asyncio import client, config

            if self.kubeconfig:
                conf = client.Configuration()
                await config.load_kube_config(config_file=self.kubeconfig,
                                              client_configuration=conf)
            else:
                conf = client.Configuration()
                config.load_incluster_config(client_configuration=conf)
            self._api = client.ApiClient(conf)
        return self._api

    async def _call(self, group: str, method: str, *args, missing=None, **kwargs):
        """``client.<group>(api).<method>(...)``; ``missing`` for a 404;
        RunnerUnavailable when the API server does not answer."""
        from kubernetes_asyncio import client
        from kubernetes_asyncio.client.rest import ApiException

        api = getattr(client, group)(await self.api())
        try:
            return await getattr(api, method)(*args, **kwargs)
        except ApiException as e:
            if e.status == 404:
                return missing
            raise
        except OSError as e:
            raise RunnerUnavailable(f"the Kubernetes API server does not answer ({e})") \
                from None

    # -- manifests ------------------------------------------------------------------
    def secret_manifest(self, job_id: str, spec: dict, notebook: Path,
                        env: dict[str, str]) -> dict:
        data = {k: env[k] for k in SECRET_VARIABLES if env.get(k)}
        data["spec.json"] = json.dumps({**spec, "notebook": f"{MOUNT}/input.ipynb"})
        data["input.ipynb"] = Path(notebook).read_text()
        size = sum(len(v.encode()) for v in data.values())
        if size > SECRET_MAX_BYTES:
            raise ValueError(f"the job's notebook, parameters and input files come to {size} "
                             f"bytes, over the {SECRET_MAX_BYTES} a Kubernetes Secret holds: "
                             "give smaller input files (or keep large data in the archive)")
        return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": job_name(job_id), "labels": self.labels(job_id)},
                "stringData": data}

    def labels(self, job_id: str) -> dict[str, str]:
        return {"app.kubernetes.io/part-of": "imaginghub", "component": "job",
                "imaginghub.org/job-id": job_id, **self.extra_labels}

    def container_resources(self, needs: dict) -> dict:
        """Kubernetes' resources of a job's container: ``needs`` (a
        workflow's and a job's, workflows.check_resources: cpu, memory,
        gpu) over :attr:`resources`. cpu and memory are requests; memory is
        the limit too (a job over it is stopped, not the node's other
        pods); a GPU is a limit of :attr:`gpu_resource`."""
        requests = dict(self.resources.get("requests") or {})
        limits = dict(self.resources.get("limits") or {})
        if "cpu" in needs:
            requests["cpu"] = f"{needs['cpu']:g}"
        if "memory" in needs:
            requests["memory"] = limits["memory"] = needs["memory"]
        if needs.get("gpu"):
            limits[self.gpu_resource] = int(needs["gpu"])
        out = {"requests": requests} if requests else {}
        if limits:
            out["limits"] = limits
        return out

    def job_manifest(self, job_id: str, user: str, spec: dict, env: dict[str, str]) -> dict:
        name = job_name(job_id)
        needs = spec.get("resources") or {}
        gpu = bool(needs.get("gpu"))
        plain = {k: v for k, v in env.items() if k not in SECRET_VARIABLES
                 and k not in ("HOME", "PATH")}
        plain.update(IMAGINGHUB_JOB_UPLOAD_URL=self.upload_url.rstrip("/"),
                     IMAGINGHUB_JOB_ID=job_id, HOME="/tmp")
        container_env = [{"name": k, "value": str(v)} for k, v in sorted(plain.items())]
        container_env += [{"name": k, "valueFrom": {"secretKeyRef": {"name": name, "key": k}}}
                          for k in SECRET_VARIABLES if env.get(k)]
        pod = {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "securityContext": {"runAsUser": self.uid, "runAsGroup": self.uid,
                                "runAsNonRoot": True, "fsGroup": self.uid},
            "containers": [{
                "name": "job", "image": (self.gpu_image or self.image) if gpu else self.image,
                "imagePullPolicy": self.image_pull_policy,
                "command": ["python3", "-m", "imaginghub.hub.services.jobs.pod", MOUNT],
                "env": container_env,
                "resources": self.container_resources(needs),
                "securityContext": {"allowPrivilegeEscalation": False,
                                    "capabilities": {"drop": ["ALL"]}},
                "volumeMounts": [{"name": "job", "mountPath": MOUNT, "readOnly": True},
                                 {"name": "dshm", "mountPath": "/dev/shm"}],
            }],
            "volumes": [{"name": "job", "secret": {"secretName": name, "defaultMode": 0o440}},
                        {"name": "dshm", "emptyDir": {"medium": "Memory"}}],
        }
        if self.image_pull_secrets:
            pod["imagePullSecrets"] = [{"name": n} for n in self.image_pull_secrets]
        selector = {**self.node_selector, **(self.gpu_node_selector if gpu else {})}
        tolerations = [*self.tolerations, *(self.gpu_tolerations if gpu else [])]
        if selector:
            pod["nodeSelector"] = selector
        if tolerations:
            pod["tolerations"] = tolerations
        labels = self.labels(job_id)
        return {
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "labels": labels,
                         "annotations": {"imaginghub.org/user": user}},
            "spec": {"backoffLimit": 0, "ttlSecondsAfterFinished":
                     self.ttl_seconds_after_finished,
                     "template": {"metadata": {"labels": labels}, "spec": pod}},
        }

    # -- Runner -----------------------------------------------------------------------
    async def start(self, job_id, user, spec, notebook, env) -> str:
        (self.runs_dir / job_id / "work").mkdir(parents=True, exist_ok=True)
        await self._call("CoreV1Api", "create_namespaced_secret", self.namespace,
                         self.secret_manifest(job_id, spec, notebook, env))
        try:
            await self._call("BatchV1Api", "create_namespaced_job", self.namespace,
                             self.job_manifest(job_id, user, spec, env))
        except Exception:
            await self._delete_secret(job_id)
            raise
        return job_name(job_id)

    async def _pod(self, handle: str):
        pods = await self._call("CoreV1Api", "list_namespaced_pod", self.namespace,
                                label_selector=f"job-name={handle}")
        items = pods.items if pods else []
        return items[0] if items else None

    async def poll(self, handle: str) -> int | None:
        job = await self._call("BatchV1Api", "read_namespaced_job", handle, self.namespace)
        if job is None:
            return GONE
        conditions = {c.type: c.status for c in (job.status.conditions or [])}
        if conditions.get("Complete") == "True":
            return 0
        if conditions.get("Failed") != "True":
            return None
        pod = await self._pod(handle)
        for status in (pod.status.container_statuses or []) if pod else []:
            if status.state and status.state.terminated:
                return status.state.terminated.exit_code or 1
        return 1  # failed without an exit code (deadline, evicted, never started)

    async def stop(self, handle: str, grace: float = 5.0) -> None:
        await self._call("BatchV1Api", "delete_namespaced_job", handle, self.namespace,
                         propagation_policy="Background",
                         grace_period_seconds=int(grace))
        await self._delete_secret(handle.removeprefix("imaginghub-job-"))

    async def _delete_secret(self, job_id: str) -> None:
        await self._call("CoreV1Api", "delete_namespaced_secret", job_name(job_id),
                         self.namespace)

    async def log(self, job_id: str, offset: int = 0, limit: int | None = None) -> bytes:
        from kubernetes_asyncio.client.rest import ApiException

        try:
            pod = await self._pod(job_name(job_id))
            if pod is None:
                return UNAVAILABLE % b"the job's pod is gone" if offset == 0 else b""
            if not pod.spec.node_name:
                return (UNAVAILABLE % b"the job's pod never ran on a node"
                        if offset == 0 else b"")
            text = await self._call("CoreV1Api", "read_namespaced_pod_log",
                                    pod.metadata.name, self.namespace)
        except (ApiException, RunnerUnavailable) as e:
            reason = getattr(e, "reason", None) or str(e)
            return (UNAVAILABLE % str(reason).encode()[:200]) if offset == 0 else b""
        data = (text or "").encode()
        return data[offset:offset + limit if limit is not None else None]

    async def clean_up(self, job_id: str) -> None:
        await self._delete_secret(job_id)

    async def remove(self, job_id: str) -> None:
        import shutil

        shutil.rmtree(self.runs_dir / job_id, ignore_errors=True)

    async def close(self) -> None:
        if self._api is not None:
            await self._api.close()
            self._api = None

    # -- what the run sends ----------------------------------------------------------
    accepts_uploads = True

    def store(self, job_id: str, path: str, data: bytes) -> None:
        """Keep a file the run sent (``progress.json``, ``result.json``,
        ``output.ipynb`` or ``work/...``) in ``runs_dir/ID``; a ValueError for
        any other name."""
        parts = path.split("/")
        if not (path in RUN_FILES or (len(parts) > 1 and parts[0] == "work" and all(
                p and p not in (".", "..") and "\x00" not in p for p in parts))):
            raise ValueError(f"a run may send {', '.join(RUN_FILES)} or work/PATH, "
                             f"not {path!r}")
        target = self.runs_dir / job_id / Path(*parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(f".{target.name}.part")
        part.write_bytes(data)
        os.replace(part, target)
