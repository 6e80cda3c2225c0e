"""The ``data`` hub service: the only door to the archive.

It speaks DICOMweb to kernels at ``/services/data/dicom-web/``, authenticates
every request with JupyterHub, lets each caller see exactly the series of
their projects (JupyterHub groups ``project-NAME``), forwards to the archive
with credentials only it holds, and writes an audit trail.
"""
