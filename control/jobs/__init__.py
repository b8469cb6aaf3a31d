"""Durable background work: a job queue in the database and the workers that run it."""
