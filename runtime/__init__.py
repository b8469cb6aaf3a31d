"""Adapters to the real world (Docker engine, gVisor sandbox, Traefik). Nothing tenant-policy
aware beyond labels; never imports `control`. Every adapter call goes through
`runtime.resilience` (circuit breaker + safe retries)."""
