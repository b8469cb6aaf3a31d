"""Per-engine facts: image, port, data path, user, health command, environment, and the
connection URL apps get (always the in-network hostname, never a host port)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import quote

from runtime.settings import Limits

POSTGRES = "postgres"
REDIS = "redis"
# Redis's own ceiling, under the container's: past it writes fail with an OOM error the app
# can see, instead of the kernel killing the sandbox mid-write. The rest is for the fork of
# a snapshot (copy-on-write pages), client buffers and the allocator's overhead.
REDIS_MAXMEMORY_SHARE = 0.75


@dataclass(frozen=True)
class Credentials:
    """Generated and stored (encrypted) by the control plane; passed in per call."""

    password: str = field(repr=False)
    user: str = "app"  # Postgres role (a superuser of its own instance); unused by Redis
    database: str = "app"  # Postgres database; Redis logical db number ("0")

    def secrets(self) -> tuple[str, ...]:
        return (self.password, quote(self.password, safe=""))


@dataclass(frozen=True)
class EngineFacts:
    name: str
    image: str
    port: int
    data_path: str  # the named volume's mount point
    uid: int  # the image's non-root user (fixed in deploy/images/<engine>/Dockerfile)
    scheme: str
    # Used when the caller's policy sets none. Under runsc the sandbox's own threads count
    # against the pids cgroup: an idle Postgres already holds ~230, so the app default (256)
    # lets a CREATE DATABASE or a few `docker exec`s kill the sandbox (seen here).
    limits: Limits = field(default_factory=Limits)

    def env(self, creds: Credentials, memory_bytes: int | None = None) -> dict[str, str]:
        """Container environment the image's entrypoint reads (docker keeps it off argv);
        ``memory_bytes``: the container's memory limit."""
        if self.name == POSTGRES:
            return {"POSTGRES_USER": creds.user, "POSTGRES_PASSWORD": creds.password, "POSTGRES_DB": creds.database}
        env = {"REDIS_PASSWORD": creds.password}
        if memory_bytes:
            env["REDIS_MAXMEMORY"] = str(int(memory_bytes * REDIS_MAXMEMORY_SHARE))
        return env

    def url(self, host: str, creds: Credentials) -> str:
        """The URL an app on the same tenant network connects with."""
        pw = quote(creds.password, safe="")
        if self.name == POSTGRES:
            return f"{self.scheme}://{quote(creds.user, safe='')}:{pw}@{host}:{self.port}/{quote(creds.database, safe='')}"
        # Explicit `default` user: the same as `:pass@` to Redis 6+, but redis-cli 7.0 turns an
        # empty user into `AUTH "" pass`, which fails.
        db = creds.database if creds.database.isdigit() else "0"
        return f"{self.scheme}://default:{pw}@{host}:{self.port}/{db}"


ENGINES: Mapping[str, EngineFacts] = {
    POSTGRES: EngineFacts(
        name=POSTGRES,
        image="moorage/postgres:15",
        port=5432,
        data_path="/var/lib/postgresql/data",
        uid=999,
        scheme="postgres",
        limits=Limits(memory_bytes=512 * 2**20, nano_cpus=1_000_000_000, pids=1024),
    ),
    REDIS: EngineFacts(
        name=REDIS,
        image="moorage/redis:7",
        port=6379,
        data_path="/data",
        uid=999,
        scheme="redis",
        limits=Limits(memory_bytes=256 * 2**20, nano_cpus=500_000_000, pids=512),
    ),
}

# Unix socket inside the Postgres container: local connections are trusted there, so the
# runtime's pg_dump/pg_restore/health checks need no password at all.
PG_SOCKET_DIR = "/var/run/postgresql"


def engine_facts(engine: str) -> EngineFacts:
    try:
        return ENGINES[engine]
    except KeyError:
        raise ValueError(f"unknown database engine {engine!r}; one of {sorted(ENGINES)}") from None
