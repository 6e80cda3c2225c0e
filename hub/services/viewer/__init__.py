"""The browser viewer: the built OHIF app at ``/services/viewer/``, logged in
with the hub's OAuth, reading the archive through the data service as the
user (see :mod:`.app`)."""
