"""Drives actual state (Docker containers, Traefik route files) to desired state (the database)."""
