"""Notebook widgets: the volume viewer (``view``), the cohort builder and the
jobs widget."""


def view(*args, **kwargs):
    """See :func:`imaginghub.widgets.viewer.view`."""
    from .viewer import view as _view

    return _view(*args, **kwargs)


def cohort_builder(**kwargs):
    """See :func:`imaginghub.widgets.cohort_builder.cohort_builder`."""
    from .cohort_builder import cohort_builder as _builder

    return _builder(**kwargs)


def jobs_widget(*args, **kwargs):
    """See :func:`imaginghub.widgets.jobs.jobs_widget`."""
    from .jobs import jobs_widget as _jobs_widget

    return _jobs_widget(*args, **kwargs)
