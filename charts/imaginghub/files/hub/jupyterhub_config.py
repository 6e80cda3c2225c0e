# The hub's configuration in the imaginghub chart. It reads the rendered
# values (values.json beside this file, from the chart's config Secret), as
# zero-to-jupyterhub's jupyterhub_config.py reads its own: every setting is
# made by imaginghub.hub.chart from them, and hub.config.<Class> is passed to
# traitlets last, so a site's own settings win.
import os

from imaginghub.hub.chart import configure_hub

c = get_config()  # noqa: F821
configure_hub(c, os.environ.get("IMAGINGHUB_CHART_VALUES",
                                "/usr/local/etc/imaginghub/values.json"))
