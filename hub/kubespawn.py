"""Users' servers on Kubernetes: KubeSpawner, with the server's token kept
out of the pod's spec.

KubeSpawner puts ``JUPYTERHUB_API_TOKEN`` into the pod's environment, where
anyone who may read pods in the namespace reads it. ImagingKubeSpawner puts
the token into a Secret of the server's own (``<pod>-token``, made before
the pod and deleted with it) and the pod's environment only refers to it.
Everything else is configured by :func:`imaginghub.hub.chart.configure_spawner`.
"""

from __future__ import annotations

from kubernetes_asyncio.client.models import (V1EnvVar, V1EnvVarSource, V1ObjectMeta,
                                              V1Secret, V1SecretKeySelector)
from kubernetes_asyncio.client.rest import ApiException
from kubespawner import KubeSpawner

# The variables that carry the server's token (JupyterHub sets both names).
TOKEN_VARIABLES = ("JUPYTERHUB_API_TOKEN", "JPY_API_TOKEN")


class ImagingKubeSpawner(KubeSpawner):
    """KubeSpawner whose pods take their token from a Secret (see the module)."""

    @property
    def token_secret_name(self) -> str:
        return f"{self.pod_name}-token"

    async def get_pod_manifest(self):
        pod = await super().get_pod_manifest()
        for container in pod.spec.containers:
            for i, var in enumerate(container.env or []):
                if var.name in TOKEN_VARIABLES:
                    container.env[i] = V1EnvVar(name=var.name, value_from=V1EnvVarSource(
                        secret_key_ref=V1SecretKeySelector(name=self.token_secret_name,
                                                           key=var.name)))
        return pod

    def get_token_secret_manifest(self) -> V1Secret:
        env = self.get_env()
        labels = self._build_common_labels(self._expand_all(self.extra_labels))
        return V1Secret(
            metadata=V1ObjectMeta(name=self.token_secret_name, labels=labels),
            type="Opaque",
            string_data={k: env[k] for k in TOKEN_VARIABLES if env.get(k)})

    async def _delete_token_secret(self) -> None:
        try:
            await self.api.delete_namespaced_secret(self.token_secret_name, self.namespace)
        except ApiException as e:
            if e.status != 404:
                raise

    async def _start(self):
        await self._delete_token_secret()  # a token of an earlier start
        await self.api.create_namespaced_secret(self.namespace,
                                                self.get_token_secret_manifest())
        return await super()._start()

    async def stop(self, now=False):
        try:
            return await super().stop(now=now)
        finally:
            await self._delete_token_secret()
