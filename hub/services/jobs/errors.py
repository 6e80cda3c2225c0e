"""The job service's errors (its subpackage's root, with their HTTP status)."""

from __future__ import annotations

from ..web import ServiceError


class JobServiceError(ServiceError):
    """The root of the job service's errors."""


class ParameterError(JobServiceError, ValueError):
    """Submitted parameters that do not fit the workflow."""

    status = 400


class SubmitError(JobServiceError, ValueError):
    """A submission that cannot be queued; the message says why."""

    status = 400


class RunnerUnavailable(JobServiceError, RuntimeError):
    """The runner cannot start jobs now (queued jobs wait)."""

    status = 503
