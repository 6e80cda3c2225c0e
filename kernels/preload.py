"""What every imaging kernel has without importing anything.

Kept light: ``pacs`` is created here but connects, and imports
dicomweb-client, numpy and pydicom, only on first use; ``view`` imports the
viewer only when called.
"""

from ..widgets import view
from .dicomweb import PACS
from .errors import NotAVolume, PACSError

pacs = PACS.from_env()

__all__ = ["pacs", "PACS", "PACSError", "NotAVolume", "view"]
