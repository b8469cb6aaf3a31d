"""The API client half of the ``moorage`` CLI: thin, JSON first, safe to retry.

It talks to the control plane over HTTP only (never imports the server's domain), so
it works from any machine an agent runs on.
"""
