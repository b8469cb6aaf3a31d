"""What Traefik's ACME certificate store holds (``acme.json``), read, never written.

Traefik keeps, per resolver, the account and the certificates it obtained; a certificate's
state is read from there rather than guessed: its issuer, its validity and its serial. The
private keys in the file are never parsed or returned.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509


@dataclass(frozen=True)
class StoredCertificate:
    hostname: str
    issuer: str
    not_before: datetime
    not_after: datetime
    serial: str
    resolver: str


def read_store(path: Path) -> dict[str, StoredCertificate]:
    """Hostname (main and SANs) → its certificate; an absent or unreadable store is empty."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    found: dict[str, StoredCertificate] = {}
    for resolver, body in (doc or {}).items():
        for entry in (body or {}).get("Certificates") or []:
            try:
                pem = base64.b64decode(entry["certificate"])
                cert = x509.load_pem_x509_certificate(pem)  # the first of the chain: the leaf
            except (KeyError, TypeError, ValueError):
                continue
            domain = entry.get("domain") or {}
            names = [domain.get("main"), *(domain.get("sans") or [])]
            stored = StoredCertificate(
                hostname=str(domain.get("main")),
                issuer=cert.issuer.rfc4514_string(),
                not_before=cert.not_valid_before_utc.astimezone(UTC),
                not_after=cert.not_valid_after_utc.astimezone(UTC),
                serial=format(cert.serial_number, "x"),
                resolver=resolver,
            )
            for name in names:
                if name:
                    found[str(name).lower()] = stored
    return found


@dataclass(frozen=True)
class AcmeError:
    at: datetime
    error: str


ACME_FAILURE = "Unable to obtain ACME certificate for domains"


def acme_errors(log_path: Path, *, tail_bytes: int = 2 * 1024 * 1024) -> dict[str, AcmeError]:
    """Hostname → the last failure Traefik logged obtaining or renewing its certificate (its
    JSON log's last ``tail_bytes``); an absent log is no errors."""
    try:
        with log_path.open("rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - tail_bytes))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return {}
    found: dict[str, AcmeError] = {}
    for line in lines:
        if ACME_FAILURE not in line:
            continue
        try:
            entry = json.loads(line)
            at = datetime.fromisoformat(str(entry["time"]).replace("Z", "+00:00")).astimezone(UTC)
        except (ValueError, KeyError, TypeError):
            continue
        for name in entry.get("domains") or []:
            found[str(name).lower()] = AcmeError(at, str(entry.get("error", ""))[:500])
    return found
