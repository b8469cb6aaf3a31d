"""Repositories: queries in one place, rows in, records out."""
