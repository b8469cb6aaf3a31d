"""Managed Postgres / Redis as tenant services: engine facts, provisioning on the tenant's
network behind the sandbox, and checksummed backups/restores.

Credentials come from the caller (the control plane generates and stores them encrypted);
nothing here logs them or puts them in an exception: see `redaction`.
"""

from runtime.databases.backup import BackupIntegrityError, BackupResult, Backups
from runtime.databases.engines import ENGINES, Credentials, EngineFacts, engine_facts
from runtime.databases.provision import (
    DatabaseError,
    DatabaseInstance,
    DatabaseNotHealthy,
    Databases,
    DatabaseSpec,
    ServiceImageMissing,
)
from runtime.databases.redaction import redact_text, redact_url

__all__ = [
    "ENGINES",
    "BackupIntegrityError",
    "BackupResult",
    "Backups",
    "Credentials",
    "DatabaseError",
    "DatabaseInstance",
    "DatabaseNotHealthy",
    "DatabaseSpec",
    "Databases",
    "EngineFacts",
    "ServiceImageMissing",
    "engine_facts",
    "redact_text",
    "redact_url",
]
