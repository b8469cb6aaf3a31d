"""Managed-database rules that need no engine: URL formats and quoting, redaction, checksum
verification, and the hardened container spec a database gets."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from runtime.databases import (
    BackupIntegrityError,
    Credentials,
    Databases,
    DatabaseSpec,
    engine_facts,
    redact_text,
    redact_url,
)
from runtime.databases.backup import checksum_path, sha256_file, verify
from runtime.databases.provision import hostname_for
from runtime.docker_engine import DockerEngine
from runtime.resilience import BreakerRegistry
from runtime.sandbox import SandboxPolicy, create_kwargs
from runtime.settings import RuntimeSettings

CREDS = Credentials(password='s3cr@t:/%"x', user="app", database="orders")


def test_postgres_url_uses_the_hostname_and_quotes_the_password() -> None:
    url = engine_facts("postgres").url("db-orders", CREDS)
    parts = urlsplit(url)
    assert url.startswith("postgres://app:") and url.endswith("@db-orders:5432/orders")
    assert (parts.hostname, parts.port, unquote(parts.password or "")) == ("db-orders", 5432, CREDS.password)


def test_redis_url_uses_the_default_user_and_db_zero() -> None:
    url = engine_facts("redis").url("db-cache", Credentials(password="pw", database="0"))
    assert url == "redis://default:pw@db-cache:6379/0"
    assert engine_facts("redis").url("h", Credentials(password="pw", database="orders")).endswith("/0")


def test_unknown_engine_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown database engine"):
        engine_facts("mysql")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgres://app:s3cret@db-x:5432/app", "postgres://app:***@db-x:5432/app"),
        ("redis://default:p%40ss@db-c:6379/0", "redis://default:***@db-c:6379/0"),
        ("redis://:pw@db-c:6379/0", "redis://:***@db-c:6379/0"),
        ("postgres://db-x:5432/app", "postgres://db-x:5432/app"),  # nothing to hide
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_redact_text_masks_raw_and_url_quoted_forms() -> None:
    url = engine_facts("postgres").url("db-orders", CREDS)
    text = f"FATAL: bad {CREDS.password} via {url}"
    out = redact_text(text, CREDS.secrets())
    assert "s3cr" not in out and out.count("***") == 2


def test_credentials_repr_hides_the_password() -> None:
    assert "s3cr" not in repr(CREDS)


def test_verify_accepts_a_match_and_refuses_a_mismatch(tmp_path: Path) -> None:
    f = tmp_path / "x.pgdump"
    f.write_bytes(b"PGDMP...data")
    with pytest.raises(BackupIntegrityError, match="no checksum"):
        verify(f)
    checksum_path(f).write_text(f"{sha256_file(f)}  {f.name}\n")
    assert verify(f) == sha256_file(f)
    f.write_bytes(b"PGDMP...dat4")
    with pytest.raises(BackupIntegrityError, match="checksum mismatch"):
        verify(f)
    with pytest.raises(BackupIntegrityError):
        verify(f, "0" * 64)


def test_hostname_is_a_prefixed_dns_label() -> None:
    assert hostname_for("orders") == "db-orders"
    with pytest.raises(ValueError):
        hostname_for("Orders!")
    with pytest.raises(ValueError):
        hostname_for("x" * 62)  # 'db-' + 62 > 63


def test_database_container_gets_the_sandbox_and_the_tenant_network() -> None:
    settings = RuntimeSettings()
    dbs = Databases(DockerEngine(settings, registry=BreakerRegistry()))  # no request made
    spec = DatabaseSpec("acme", "orders", "postgres", "moorage-t-acme", CREDS, "db_0123456789abcdefghjkmnpqrs")
    assert spec.resource_name == "moorage-db_0123456789abcdefghjkmnpqrs"
    policy = SandboxPolicy(limits=engine_facts("postgres").limits)
    kwargs = create_kwargs(dbs.container_spec(spec, "moorage-db-acme-orders"), policy, settings)
    assert kwargs["name"] == spec.resource_name
    assert kwargs["labels"]["db.moorage/id"] == spec.id
    assert kwargs["runtime"] == "runsc" and kwargs["cap_drop"] == ["ALL"]
    assert kwargs["network"] == "moorage-t-acme" and kwargs["user"] == "999"
    assert kwargs["mem_limit"] == 512 * 2**20 and kwargs["pids_limit"] == 1024
    assert kwargs["volumes"] == {"moorage-db-acme-orders": {"bind": "/var/lib/postgresql/data", "mode": "rw"}}
    assert kwargs["labels"]["moorage.tenant"] == "acme" and kwargs["labels"]["moorage.role"] == "database"
    assert kwargs["labels"]["db.moorage/engine"] == "postgres"
    assert "ports" not in kwargs  # never published on the host
    assert kwargs["environment"]["POSTGRES_PASSWORD"] == CREDS.password  # via env only, never argv
    assert "REDIS_MAXMEMORY" not in kwargs["environment"]
    assert CREDS.password not in " ".join(kwargs.get("command") or [])


def test_redis_gets_a_maxmemory_under_its_container_limit() -> None:
    env = engine_facts("redis").env(CREDS, memory_bytes=256 * 2**20)
    assert env["REDIS_MAXMEMORY"] == str(192 * 2**20)  # writes fail with OOM before the kernel kills the sandbox
    assert "REDIS_MAXMEMORY" not in engine_facts("redis").env(CREDS)  # no limit known: the image's default (none)
    assert "REDIS_MAXMEMORY" not in engine_facts("postgres").env(CREDS, memory_bytes=2**30)
