"""Dask clusters on Kubernetes: dask-gateway's Kubernetes backend with the
embedded stack's per-user limits (``c.DaskLimits``, the chart's
``daskGateway.limits``), the same options for users (:func:`.backend.
cluster_options`), and the workers a user asks for at the start. Its
controller (``dask-gateway-server kube-controller``) turns each DaskCluster
into the scheduler's Pod, Secret and Service, the workers' Pods and
traefik's routes; the chart runs both and traefik, and defines the
DaskCluster resource."""

from __future__ import annotations

from dask_gateway_server.backends.kubernetes import KubeBackend, KubeClusterConfig
from traitlets import Dict, Integer, default

from .backend import check_cluster_count


class HubKubeClusterConfig(KubeClusterConfig):
    """A Kubernetes cluster's configuration, plus the workers it starts with."""

    workers = Integer(0, min=0, config=True, help="""
        Workers started as soon as the cluster runs (the `workers` option).""")


class HubKubeBackend(KubeBackend):
    """KubeBackend with per-user limits; a cluster's DaskCluster asks for
    its starting workers (``spec.replicas``)."""

    limits = Dict(help="The limits of every user (c.DaskLimits).", config=True)
    user_limits = Dict(help="Per user changes to `limits`: {name: {limit: value}}.",
                       config=True)

    @default("cluster_config_class")
    def _default_cluster_config_class(self):
        return "imaginghub.hub.services.dask_gateway.kube.HubKubeClusterConfig"

    async def start_cluster(self, user, cluster_options):
        check_cluster_count(user.name, len(await self.list_clusters(username=user.name)),
                            self.limits, self.user_limits)
        return await super().start_cluster(user, cluster_options)

    def make_cluster_object(self, username, options, config):
        obj = super().make_cluster_object(username, options, config)
        obj["spec"]["replicas"] = int(getattr(config, "workers", 0) or 0)
        return obj
