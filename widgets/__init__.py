"""Notebook widgets: the volume viewer (``view``)."""


def view(*args, **kwargs):
    """See :func:`imaginghub.widgets.viewer.view`."""
    from .viewer import view as _view

    return _view(*args, **kwargs)
