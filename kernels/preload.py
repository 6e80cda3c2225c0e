"""What every imaging kernel has without importing anything.

Kept light: ``pacs`` is created here but connects, and imports
dicomweb-client, numpy and pydicom, only on first use; ``view`` imports the
viewer only when called.
"""

from ..widgets import cohort_builder, jobs_widget, view
from .browser_viewer import view_in_browser
from .catalog import Catalog
from .cluster import cluster
from .mapping import map_series
from .dicomweb import PACS
from .errors import NotAVolume, PACSError
from .jobs import Jobs

pacs = PACS.from_env()
catalog = Catalog.from_env()
jobs = Jobs.from_env()

__all__ = ["pacs", "catalog", "jobs", "PACS", "PACSError", "NotAVolume", "view", "cohort_builder",
           "jobs_widget", "cluster", "map_series", "view_in_browser"]
