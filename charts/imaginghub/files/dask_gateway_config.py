# Dask Gateway in the imaginghub chart, its API and its controller: made from
# the rendered values by imaginghub.hub.chart (the Kubernetes backend, the
# same per-user limits as the embedded stack's c.DaskLimits, users' code's
# labels), then hub.config's sections of dask-gateway's classes.
import os

from imaginghub.hub.chart import configure_dask_gateway

c = get_config()  # noqa: F821
configure_dask_gateway(c, os.environ.get("IMAGINGHUB_CHART_VALUES",
                                         "/usr/local/etc/imaginghub/values.json"))
