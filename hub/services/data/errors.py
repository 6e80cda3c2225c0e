"""The data service's errors (its subpackage's root, with their HTTP status)."""

from __future__ import annotations

from ..web import ServiceError


class DataServiceError(ServiceError):
    """The root of the data service's errors."""


class QueryError(DataServiceError, ValueError):
    """A query the catalog cannot answer; the message says what to change."""

    status = 400


class ArchiveUnreachable(DataServiceError):
    """The archive did not answer (down, or its connection broke off): a
    502, as the transfer paths answer it (kernels: ArchiveUnavailable)."""

    status = 502

    def __init__(self, what: str = ""):
        super().__init__("the archive did not answer" + (f" ({what})" if what else "")
                         + ": try again once it is back")


class CohortError(DataServiceError, ValueError):
    """A cohort request that cannot be done; the message says why."""

    status = 400
