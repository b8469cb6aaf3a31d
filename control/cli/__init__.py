"""The ``moorage`` command: server-side commands here; the API client joins later."""
