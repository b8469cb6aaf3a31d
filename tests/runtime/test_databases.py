"""Managed Postgres and Redis on a tenant's network, against the
real engine, runsc and the service images host-setup builds.

Clients are separate containers on the tenant network that connect with the URL an app
would get (`DatabaseInstance.url`), so a pass proves in-network reachability by hostname,
TCP and password auth, not a `docker exec` inside the database container.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from runtime.containers import ContainerInfo
from runtime.databases import (
    BackupIntegrityError,
    Credentials,
    DatabaseNotHealthy,
    DatabaseSpec,
    redact_text,
)
from runtime.databases.backup import checksum_path
from runtime.databases.engines import REDIS
from runtime.databases.provision import NameHeldByAnother
from tests.runtime.db_fixtures import (
    DbEnv,
    database_id,
    db_env_fixture,
    log_capture_fixture,
)
from tests.runtime.helpers import RUN_ID, RUN_LABEL

__all__ = ["db_env_fixture", "log_capture_fixture"]  # fixtures, used by name

pytestmark = pytest.mark.docker
REPO = Path(__file__).resolve().parents[2]

CONNECT = (
    "import socket, sys\n"
    "try:\n"
    "    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()\n"
    "    print('connected')\n"
    "except OSError as e:\n"
    "    print('blocked', type(e).__name__, e); sys.exit(1)\n"
)


def sh(env: DbEnv, container: ContainerInfo, script: str, *args: str, **envvars: str) -> tuple[int, str]:
    out: list[bytes] = []
    res = env.backups.exec.run(container.id, ["sh", "-c", script, "sh", *args], env=envvars, on_stdout=out.append)
    return res.exit_code, b"".join(out).decode() + res.stderr


def psql(env: DbEnv, sql: str, database: str | None = None) -> str:
    url = env.pg.url(env.pg_creds)
    if database:
        url = url.rsplit("/", 1)[0] + f"/{database}"
    code, out = sh(env, env.pg_client, 'psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -Atc "$1"', sql, DATABASE_URL=url)
    assert code == 0, redact_text(out, env.pg_creds.secrets())
    return out.strip()


def redis(env: DbEnv, *args: str) -> str:
    code, out = sh(
        env, env.redis_client, 'redis-cli --no-auth-warning -u "$REDIS_URL" "$@"', *args, REDIS_URL=env.redis.url(env.redis_creds)
    )
    assert code == 0, redact_text(out, env.redis_creds.secrets())
    return out.strip()


def connect(env: DbEnv, client: ContainerInfo, host: str, port: int) -> tuple[int, str]:
    code, out = sh(env, client, 'python3 -c "$1" "$2" "$3"', CONNECT, host, str(port))
    return code, out.strip()


def corrupt_copy(src: Path, dest_dir: Path) -> Path:
    """A copy with one byte flipped, next to the original's (now wrong) checksum."""
    dest = dest_dir / f"corrupt-{src.name}"
    data = bytearray(src.read_bytes())
    data[len(data) // 2] ^= 0xFF
    dest.write_bytes(bytes(data))
    shutil.copy(checksum_path(src), checksum_path(dest))
    return dest


def forbid_touching(env: DbEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    def touched(*_: Any, **__: Any) -> None:
        raise AssertionError("restore touched the database before the checksum check")

    monkeypatch.setattr(env.backups.exec, "run", touched)
    monkeypatch.setattr(env.databases, "stop", touched)
    monkeypatch.setattr(env.backups, "_put_archive", touched)


# --- 1. provisioned on the tenant network, hardened, reachable by hostname ----------------


def test_database_containers_are_sandboxed_on_the_tenant_network(db_env: DbEnv) -> None:
    for inst in (db_env.pg, db_env.redis):
        info = db_env.databases.containers.inspect(inst.container_id)
        host = info.attrs["HostConfig"]
        assert info.runtime == "runsc"
        assert host["CapDrop"] == ["ALL"] and host["Memory"] == inst.facts.limits.memory_bytes
        assert host["PidsLimit"] == inst.facts.limits.pids and host["NanoCpus"] > 0
        assert list(info.ip_addresses) == [db_env.a_net]  # only the tenant network
        assert not host.get("PortBindings")  # never published on the host
        assert info.attrs["Config"]["User"] == "999"
        aliases = info.attrs["NetworkSettings"]["Networks"][db_env.a_net]["Aliases"]
        assert inst.hostname in aliases
    assert db_env.databases.find(db_env.a, db_env.pg.id) == db_env.pg
    assert db_env.databases.find(db_env.b, db_env.pg.id) is None  # another tenant's label: not found


def test_postgres_write_and_read_from_another_container(db_env: DbEnv) -> None:
    assert connect(db_env, db_env.a_app, db_env.pg.hostname, 5432) == (0, "connected")
    psql(db_env, "CREATE TABLE items (id int PRIMARY KEY, name text); INSERT INTO items VALUES (1, 'anchor')")
    assert psql(db_env, "SELECT name FROM items WHERE id = 1") == "anchor"
    wrong = db_env.pg.url(db_env.pg_creds).replace("pw-", "nope-", 1)
    code, out = sh(db_env, db_env.pg_client, 'psql "$DATABASE_URL" -Atc "select 1"', DATABASE_URL=wrong)
    assert code != 0 and "password authentication failed" in out


def test_redis_write_and_read_from_another_container(db_env: DbEnv) -> None:
    assert connect(db_env, db_env.a_app, db_env.redis.hostname, 6379) == (0, "connected")
    assert redis(db_env, "SET", "greeting", "ahoy") == "OK"
    assert redis(db_env, "GET", "greeting") == "ahoy"
    _, out = sh(db_env, db_env.redis_client, f"redis-cli -h {db_env.redis.hostname} GET greeting")
    assert "NOAUTH" in out  # no password, no data


# --- 3. another tenant cannot reach them --------------------------------------------------


def test_redis_has_a_ceiling_of_its_own_under_the_container_limit(db_env: DbEnv) -> None:
    limit = db_env.databases.containers.inspect(db_env.redis.container_id).attrs["HostConfig"]["Memory"]
    assert redis(db_env, "CONFIG", "GET", "maxmemory").split() == ["maxmemory", str(int(limit * 0.75))]
    assert redis(db_env, "CONFIG", "GET", "maxmemory-policy").split() == ["maxmemory-policy", "noeviction"]


def test_other_tenant_cannot_reach_the_databases(db_env: DbEnv) -> None:
    attempts = []
    for inst, port in ((db_env.pg, 5432), (db_env.redis, 6379)):
        ip = db_env.databases.containers.inspect(inst.container_id).ip_on(db_env.a_net)
        attempts += [(db_env.a_app, ip, port), (db_env.b_app, ip, port), (db_env.b_app, inst.hostname, port)]
    # All at once: a dropped connection waits out its whole timeout.
    with ThreadPoolExecutor(max_workers=len(attempts)) as pool:
        results = iter(list(pool.map(lambda attempt: connect(db_env, *attempt), attempts)))
    for inst in (db_env.pg, db_env.redis):
        assert next(results) == (0, "connected")  # same tenant: yes
        code, out = next(results)
        assert code != 0 and out.startswith("blocked"), f"tenant B reached tenant A's {inst.engine}: {out}"
        code, out = next(results)  # A's names don't resolve in B
        assert code != 0, out


# --- 2. backup -> damage -> restore; corrupt backups refused -------------------------------


def test_postgres_backup_and_restore(db_env: DbEnv, tmp_path: Path) -> None:
    psql(db_env, "CREATE TABLE IF NOT EXISTS ledger (id int, note text); INSERT INTO ledger VALUES (7, 'keep me')")
    result = db_env.backups.backup(db_env.pg, db_env.pg_creds, tmp_path)
    assert result.path.read_bytes()[:5] == b"PGDMP"  # pg_dump custom format
    assert result.size == result.path.stat().st_size
    assert checksum_path(result.path).read_text() == f"{result.sha256}  {result.path.name}\n"

    psql(db_env, "DROP TABLE ledger")
    db_env.backups.restore(db_env.pg, db_env.pg_creds, result.path)
    assert psql(db_env, "SELECT note FROM ledger WHERE id = 7") == "keep me"

    db_env.backups.restore(db_env.pg, db_env.pg_creds, result.path, database="orders_copy", create_database=True)
    assert psql(db_env, "SELECT note FROM ledger WHERE id = 7", database="orders_copy") == "keep me"


def test_postgres_corrupt_backup_is_refused_before_touching_the_database(
    db_env: DbEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    psql(db_env, "CREATE TABLE IF NOT EXISTS ledger (id int, note text)")
    result = db_env.backups.backup(db_env.pg, db_env.pg_creds, tmp_path)
    psql(db_env, "INSERT INTO ledger VALUES (8, 'after the backup')")
    bad = corrupt_copy(result.path, tmp_path)
    with monkeypatch.context() as m:
        forbid_touching(db_env, m)
        with pytest.raises(BackupIntegrityError, match="checksum mismatch"):
            db_env.backups.restore(db_env.pg, db_env.pg_creds, bad)
        with pytest.raises(BackupIntegrityError, match="checksum mismatch"):
            db_env.backups.restore(db_env.pg, db_env.pg_creds, result.path, expected_sha256="0" * 64)
    assert psql(db_env, "SELECT note FROM ledger WHERE id = 8") == "after the backup"


def test_redis_backup_and_restore(db_env: DbEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    redis(db_env, "SET", "cargo", "rum")
    redis(db_env, "RPUSH", "manifest", "a", "b", "c")
    result = db_env.backups.backup(db_env.redis, db_env.redis_creds, tmp_path)
    assert result.path.read_bytes()[:5] == b"REDIS"  # RDB header

    with monkeypatch.context() as m:  # a corrupt copy changes nothing: no stop, no restart
        forbid_touching(db_env, m)
        with pytest.raises(BackupIntegrityError, match="checksum mismatch"):
            db_env.backups.restore(db_env.redis, db_env.redis_creds, corrupt_copy(result.path, tmp_path))
    assert redis(db_env, "GET", "cargo") == "rum"

    redis(db_env, "FLUSHALL")
    assert redis(db_env, "DBSIZE") == "0"
    db_env.backups.restore(db_env.redis, db_env.redis_creds, result.path)
    assert redis(db_env, "GET", "cargo") == "rum"
    assert redis(db_env, "LRANGE", "manifest", "0", "-1").split() == ["a", "b", "c"]


# --- lifecycle: retried provision, data kept across remove, crash reported fast -----------


def test_provision_again_reuses_and_volume_keeps_data(db_env: DbEnv) -> None:
    redis(db_env, "SET", "durable", "yes")
    spec = DatabaseSpec(db_env.a, "cache", REDIS, db_env.a_net, db_env.redis_creds, db_env.redis.id, labels={RUN_LABEL: RUN_ID})
    assert db_env.databases.provision(spec, timeout=180).container_id == db_env.redis.container_id
    db_env.databases.remove(db_env.redis)  # container gone (Redis saves on SIGTERM), volume kept
    db_env.redis = db_env.databases.provision(spec, timeout=180)
    assert redis(db_env, "GET", "durable") == "yes"


def test_an_object_holding_a_databases_name_without_its_labels_is_never_adopted(db_env: DbEnv) -> None:
    """A volume named like the database but labelled as another tenant's (or no one's) is
    refused, left as it was, and nothing is started on it."""
    spec = DatabaseSpec(db_env.b, "cache", REDIS, db_env.b_net, db_env.redis_creds, database_id(), labels={RUN_LABEL: RUN_ID})
    client = db_env.databases.engine.client
    squatter = client.volumes.create(
        spec.resource_name,
        labels={"moorage.managed": "true", "moorage.tenant": db_env.a, "db.moorage/id": spec.id, RUN_LABEL: RUN_ID},
    )
    try:
        with pytest.raises(NameHeldByAnother, match="left alone"):
            db_env.databases.provision(spec, timeout=60)
        assert db_env.databases.find(db_env.b, spec.id) is None
        assert client.volumes.get(spec.resource_name).attrs["Labels"]["moorage.tenant"] == db_env.a
        assert db_env.databases.purge_volumes(db_env.b, spec.id) == []  # not tenant B's to purge
    finally:
        squatter.remove(force=True)


def test_a_database_that_cannot_start_fails_fast(db_env: DbEnv) -> None:
    spec = DatabaseSpec(
        db_env.a, "broken", REDIS, db_env.a_net, Credentials(password=""), database_id(), labels={RUN_LABEL: RUN_ID}
    )
    started = time.monotonic()
    with pytest.raises(DatabaseNotHealthy, match="REDIS_PASSWORD is required"):
        db_env.databases.provision(spec, timeout=180)
    assert time.monotonic() - started < 60  # the crash, not the deadline, ended the wait
    assert db_env.databases.find(db_env.a, spec.id) is None  # nothing half-made


# --- 4. credentials never logged (runs after provision, backups and restores above) ------


def test_credentials_never_appear_in_logs(db_env: DbEnv) -> None:
    names = {e.get("event") for e in db_env.logs.events}
    assert {
        "database.provisioning",
        "database.healthy",
        "database.backup.done",
        "database.restore.verified",
        "database.restore.done",
    } <= names, names
    text = db_env.logs.text()
    assert db_env.logs.records, "stdlib logging (docker SDK, urllib3) was not captured"
    for creds in (db_env.pg_creds, db_env.redis_creds):
        for secret in creds.secrets():
            assert secret not in text
        assert creds.password.split("@")[0] not in text  # the random part alone


# --- 5. host setup stays idempotent with the service images present ----------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="host-setup runs as root")
def test_host_setup_rerun_changes_nothing(db_env: DbEnv) -> None:
    proc = subprocess.run(
        ["bash", str(REPO / "deploy" / "host-setup.sh")], capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "image present: moorage/postgres:15" in proc.stdout
    assert "image present: moorage/redis:7" in proc.stdout
    assert proc.stdout.rstrip().endswith("nothing changed"), proc.stdout
