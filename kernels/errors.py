"""The exception root of the kernel side (what a user's code sees).

Every error raised on purpose derives from :class:`PACSError`. Three kinds a
user's code often tells apart:

- :class:`Refused`: a service understood the request and said no (HTTP 400,
  409, 413, 422: a wrong parameter, a cohort that would be empty, an upload
  too large); the message says why. Also a ``ValueError``.
- :class:`ServiceUnavailable`: a hub service (the data service, the job
  service, Dask Gateway) did not answer.
- :class:`ArchiveUnavailable`: the archive behind the data service did not
  answer (or, with the archive's own address, the archive itself).

Both kinds of unavailability are :class:`Unavailable`: trying again later
may work (Dask retries a series that fails so).
"""


class PACSError(Exception):
    """Base of every error raised on purpose by ``pacs``, volume loading,
    the catalog, jobs and clusters."""


class Unavailable(PACSError):
    """Something on the way did not answer; trying again later may work."""


class ArchiveUnavailable(Unavailable):
    """The archive could not be reached (down, wrong URL, timed out)."""


class ServiceUnavailable(Unavailable):
    """A hub service (the data service, the job service, Dask Gateway) did
    not answer, or answered that it cannot serve now."""


class Refused(PACSError, ValueError):
    """A service refused the request as it was made (HTTP 400, 409, 413,
    422); the message says what was wrong."""


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


# HTTP statuses of a request refused as made
REFUSED = (400, 409, 413, 415, 422)
