"""The exception root of the kernel side (what a user's code sees)."""


class PACSError(Exception):
    """Base of every error raised on purpose by ``pacs`` and volume loading."""


class ArchiveUnavailable(PACSError):
    """The archive could not be reached (down, wrong URL, timed out)."""


class AuthenticationFailed(PACSError):
    """The archive refused the credentials or token."""


class Forbidden(PACSError):
    """The gateway refused the action (for example storing into a project
    you are not a member of)."""


class NotFound(PACSError):
    """No study, series or instance with that UID (that you may see)."""


class NotAVolume(PACSError):
    """The series cannot be stacked into one regular 3D volume."""


class CorruptData(PACSError):
    """An instance's pixel data cannot be decoded (names the instance)."""
