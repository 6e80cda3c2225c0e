"""The data service's errors (its subpackage's root, with their HTTP status)."""

from __future__ import annotations

from ..web import ServiceError


class DataServiceError(ServiceError):
    """The root of the data service's errors."""


class QueryError(DataServiceError, ValueError):
    """A query the catalog cannot answer; the message says what to change."""

    status = 400


class CohortError(DataServiceError, ValueError):
    """A cohort request that cannot be done; the message says why."""

    status = 400
