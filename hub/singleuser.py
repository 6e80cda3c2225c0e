"""A user's server: ``python -m imaginghub.hub.singleuser`` is
``jupyterhub-singleuser`` without ``rfc3987_syntax``.

jupyter_server imports jupyter_events, whose jsonschema imports the optional
IRI checker rfc3987_syntax when it is installed; it compiles a grammar at
import: 1.9 s of the 3.9 s that a server's imports took here, on every
server start (20 users starting at once pay it 20 times on two cores).
Nothing a server validates uses IRI formats, and jsonschema works without
it. The job starter does the same for papermill (see jobs/child.py).
"""

from __future__ import annotations

import sys


def main():
    sys.modules.setdefault("rfc3987_syntax", None)
    from jupyterhub.singleuser import main as singleuser

    return singleuser()


if __name__ == "__main__":
    sys.exit(main())
