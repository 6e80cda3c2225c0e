"""The job service: notebooks run as repeatable workflows with papermill,
their history and provenance (see :mod:`.scheduler` and :mod:`.app`)."""
