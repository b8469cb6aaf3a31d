"""Backups and restores of managed databases, streamed through `docker exec` (no host port,
no password on any command line), each file with a SHA-256 sidecar.

- Postgres: `pg_dump -Fc` over the container's unix socket -> `<file>.pgdump`; restore is
  `pg_restore --clean --if-exists --single-transaction` (all or nothing) into the same or a
  new database.
- Redis: `BGSAVE`, then the finished `dump.rdb` -> `<file>.rdb`; restore is stop, replace
  `dump.rdb` in the data volume, start, wait healthy (RDB-only images: no AOF to reconcile).

Restores verify the checksum before touching the database: a mismatch is refused.
"""

from __future__ import annotations

import hashlib
import os
import re
import tarfile
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import structlog

from runtime.databases.engines import PG_SOCKET_DIR, POSTGRES, REDIS, Credentials
from runtime.databases.execio import ExecIO, ExecOutcome
from runtime.databases.provision import DatabaseError, DatabaseInstance, Databases
from runtime.databases.redaction import redact_text
from runtime.docker_engine import DockerEngine
from runtime.resilience import guarded

log = structlog.get_logger("moorage.runtime.databases")

SUFFIX = {POSTGRES: ".pgdump", REDIS: ".rdb"}
_PG_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,62}$")


class BackupIntegrityError(DatabaseError):
    """The backup file does not match its checksum (corrupt or tampered): never restored."""


@dataclass(frozen=True)
class BackupResult:
    path: Path
    checksum_path: Path
    size: int
    sha256: str
    engine: str


def checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: Path, expected_sha256: str | None = None) -> str:
    """The file's digest if it matches `expected_sha256` (or, when None, its `.sha256`
    sidecar); `BackupIntegrityError` otherwise."""
    if expected_sha256 is None:
        sidecar = checksum_path(path)
        if not sidecar.exists():
            raise BackupIntegrityError(f"no checksum for {path.name}: expected {sidecar.name}")
        expected_sha256 = sidecar.read_text().split()[0] if sidecar.read_text().strip() else ""
    actual = sha256_file(path)
    if actual != expected_sha256.lower():
        raise BackupIntegrityError(
            f"checksum mismatch for {path.name}: expected {expected_sha256[:16]}..., "
            f"got {actual[:16]}...; refusing to restore a corrupt backup"
        )
    return actual


class Backups:
    def __init__(self, engine: DockerEngine, databases: Databases | None = None, exec_io: ExecIO | None = None) -> None:
        self.engine = engine
        self.guard = engine.guard
        self.databases = databases or Databases(engine)
        self.exec = exec_io or ExecIO(engine)

    # --- backup ---------------------------------------------------------------------------
    def backup(self, instance: DatabaseInstance, creds: Credentials, dest_dir: Path, *, stem: str | None = None) -> BackupResult:
        """Stream a consistent snapshot to `dest_dir/<stem><suffix>` (+ `.sha256`)."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        path = Path(dest_dir) / f"{stem or f'{instance.tenant}-{instance.name}-{stamp}'}{SUFFIX[instance.engine]}"
        if instance.engine == POSTGRES:
            cmd = ["pg_dump", "-Fc", "-h", PG_SOCKET_DIR, "-U", creds.user, "-d", creds.database]
            env: dict[str, str] = {}
        else:
            self._redis_bgsave(instance, creds)
            cmd, env = ["cat", f"{instance.facts.data_path}/dump.rdb"], _redis_env(creds)
        size, digest = self._stream_to_file(instance, creds, cmd, env, path)
        sidecar = checksum_path(path)
        sidecar.write_text(f"{digest}  {path.name}\n")
        log.info(
            "database.backup.done",
            tenant=instance.tenant,
            database=instance.name,
            engine=instance.engine,
            file=path.name,
            bytes=size,
            sha256=digest,
        )
        return BackupResult(path=path, checksum_path=sidecar, size=size, sha256=digest, engine=instance.engine)

    def _stream_to_file(
        self, instance: DatabaseInstance, creds: Credentials, cmd: list[str], env: dict[str, str], path: Path
    ) -> tuple[int, str]:
        path.parent.mkdir(parents=True, exist_ok=True)
        digest, size = hashlib.sha256(), 0
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
        try:
            with os.fdopen(fd, "wb") as out:

                def sink(chunk: bytes) -> None:
                    nonlocal size
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)

                outcome = self.exec.run(instance.container_id, cmd, env=env, on_stdout=sink)
                self._check(outcome, instance, creds, "backup")
                out.flush()
                os.fsync(out.fileno())
            if size == 0:
                raise DatabaseError(f"backup of {instance.engine} {instance.name} produced no data")
            os.replace(tmp, path)  # only a complete dump gets the final name
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return size, digest.hexdigest()

    def _redis_bgsave(self, instance: DatabaseInstance, creds: Credentials, timeout: float = 300.0) -> None:
        """BGSAVE and wait for it. BGSAVE sets `rdb_bgsave_in_progress` before it answers,
        so the first `in_progress:0` afterwards means our snapshot is on disk."""
        reply = self._redis(instance, creds, "BGSAVE")
        if "started" not in reply and "already in progress" not in reply:
            raise DatabaseError(f"redis BGSAVE refused on {instance.name}: {redact_text(reply, creds.secrets())[:200]}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = dict(
                line.split(":", 1) for line in self._redis(instance, creds, "INFO", "persistence").splitlines() if ":" in line
            )
            if info.get("rdb_bgsave_in_progress", "1").strip() == "0":
                if info.get("rdb_last_bgsave_status", "").strip() != "ok":
                    raise DatabaseError(f"redis BGSAVE failed on {instance.name}")
                return
            time.sleep(0.2)
        raise DatabaseError(f"redis BGSAVE on {instance.name} did not finish in {timeout:.0f}s")

    def _redis(self, instance: DatabaseInstance, creds: Credentials, *args: str) -> str:
        chunks: list[bytes] = []
        outcome = self.exec.run(
            instance.container_id, ["redis-cli", "-h", "127.0.0.1", *args], env=_redis_env(creds), on_stdout=chunks.append
        )
        self._check(outcome, instance, creds, f"redis {args[0]}")
        return b"".join(chunks).decode("utf-8", "replace")

    # --- restore --------------------------------------------------------------------------
    def restore(
        self,
        instance: DatabaseInstance,
        creds: Credentials,
        backup_path: Path,
        *,
        expected_sha256: str | None = None,
        database: str | None = None,
        create_database: bool = False,
        timeout: float = 120.0,
    ) -> None:
        """Verify the checksum first, then restore. Postgres: into `database` (default the
        credentials' one; `create_database` makes it first). Redis: replaces the whole data set."""
        backup_path = Path(backup_path)
        digest = verify(backup_path, expected_sha256)  # before anything touches the database
        bound = log.bind(
            tenant=instance.tenant, database=instance.name, engine=instance.engine, file=backup_path.name, sha256=digest
        )
        bound.info("database.restore.verified")
        if instance.engine == POSTGRES:
            self._pg_restore(instance, creds, backup_path, database or creds.database, create_database)
        else:
            self._redis_restore(instance, backup_path, timeout)
        bound.info("database.restore.done")

    def _pg_restore(self, instance: DatabaseInstance, creds: Credentials, path: Path, database: str, create: bool) -> None:
        if not _PG_IDENT.fullmatch(database):
            raise ValueError(f"database name {database!r}: letters, digits, '_' or '-', at most 63")
        base = ["-h", PG_SOCKET_DIR, "-U", creds.user]
        if create:
            sql = f'CREATE DATABASE "{database}"'
            outcome = self.exec.run(instance.container_id, ["psql", *base, "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-c", sql])
            self._check(outcome, instance, creds, "create database")
        with path.open("rb") as src:
            outcome = self.exec.run(
                instance.container_id,
                ["pg_restore", *base, "-d", database, "--clean", "--if-exists", "--single-transaction", "--exit-on-error"],
                stdin=src,
            )
        self._check(outcome, instance, creds, "restore")

    def _redis_restore(self, instance: DatabaseInstance, path: Path, timeout: float) -> None:
        """Redis loads dump.rdb only at start, and writes it on shutdown: so stop first,
        then replace the file, then start."""
        self.databases.stop(instance)
        with tempfile.TemporaryFile() as tar_file:
            with tarfile.open(fileobj=tar_file, mode="w") as tar, path.open("rb") as src:
                member = tarfile.TarInfo("dump.rdb")
                member.size, member.mode = path.stat().st_size, 0o600
                member.uid = member.gid = instance.facts.uid
                member.mtime = int(time.time())
                tar.addfile(member, src)
            self._put_archive(instance.container_id, instance.facts.data_path, tar_file)
        self.databases.start(instance, timeout=timeout)

    @guarded(idempotent=True)  # replaces one file with the same bytes: safe to repeat
    def _put_archive(self, container_id: str, target: str, tar_file: BinaryIO) -> None:
        tar_file.seek(0)
        if not self.engine.client.containers.get(container_id).put_archive(target, tar_file):
            raise DatabaseError(f"could not write into {target} of container {container_id[:12]}")

    @staticmethod
    def _check(outcome: ExecOutcome, instance: DatabaseInstance, creds: Credentials, what: str) -> None:
        if outcome.exit_code != 0:
            detail = redact_text(outcome.stderr.strip(), creds.secrets())[-1000:]
            raise DatabaseError(f"{what} of {instance.engine} {instance.name} failed (exit {outcome.exit_code}): {detail}")


def _redis_env(creds: Credentials) -> dict[str, str]:
    return {"REDISCLI_AUTH": creds.password}  # redis-cli reads it; keeps -a off argv
