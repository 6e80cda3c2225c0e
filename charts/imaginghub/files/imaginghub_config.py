# imaginghub's own settings in the chart's service pods (the data service,
# the job service, the viewer): made from the rendered values by
# imaginghub.hub.chart, then hub.config's sections of imaginghub's classes.
import os

from imaginghub.hub.chart import configure_services

c = get_config()  # noqa: F821
configure_services(c, os.environ.get("IMAGINGHUB_CHART_VALUES",
                                     "/usr/local/etc/imaginghub/values.json"))
