"""The exception root of the server side.

Errors meant for a person carry a short reason that says what was wrong and
what to do; the CLI prints it without a traceback and exits non-zero.
"""


class ImagingHubError(Exception):
    """Base of every error the server side raises on purpose."""


class ConfigError(ImagingHubError):
    """A setting, file or argument is wrong."""


class StackError(ImagingHubError):
    """A managed process could not be started or died."""


class HubNotRunning(ImagingHubError):
    """An action needs the running hub, and there is none for this home."""
