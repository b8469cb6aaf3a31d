"""Fixtures for the managed-database tests: service images checked up front, two tenants'
networks, one Postgres and one Redis on tenant A, client containers, and log capture.

Everything carries the run label; volumes (which the conftest sweep does not cover) are
removed here by that label.
"""

from __future__ import annotations

import functools
import logging
import secrets
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import docker.errors
import pytest
import structlog

from runtime.containers import ContainerInfo, Containers
from runtime.databases import (
    Backups,
    Credentials,
    DatabaseInstance,
    Databases,
    DatabaseSpec,
)
from runtime.databases.engines import ENGINES, POSTGRES, REDIS
from runtime.docker_engine import DockerEngine
from runtime.networks import TenantNetworks
from tests.runtime.helpers import RUN_ID, RUN_LABEL, run_all, sleeper, spec, tenant_name

SERVICE_HINT = "run `sudo bash deploy/host-setup.sh` (it builds moorage/postgres:15 and moorage/redis:7)"
# Characters that must survive URL quoting, initdb's pwfile and Redis' quoted config string.
PASSWORD_TAIL = '@:/%"\\ x'


@dataclass
class LogCapture:
    """Everything logged through structlog and the stdlib (docker SDK, urllib3 included)."""

    events: list[dict[str, Any]] = field(default_factory=list)
    records: list[str] = field(default_factory=list)

    def text(self) -> str:
        return "\n".join([*(repr(e) for e in self.events), *self.records])


class _ListHandler(logging.Handler):
    def __init__(self, sink: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(f"{record.name} {record.getMessage()} {record.args!r} {record.__dict__!r}")


@dataclass
class DbEnv:
    a: str
    b: str
    a_net: str
    b_net: str
    pg: DatabaseInstance
    pg_creds: Credentials
    redis: DatabaseInstance
    redis_creds: Credentials
    a_app: ContainerInfo  # python3 "app" on tenant A
    b_app: ContainerInfo  # python3 "app" on tenant B
    pg_client: ContainerInfo  # postgres image on tenant A: psql as a client
    redis_client: ContainerInfo  # redis image on tenant A: redis-cli as a client
    databases: Databases
    backups: Backups
    logs: LogCapture


def new_credentials(database: str) -> Credentials:
    return Credentials(password=f"pw-{secrets.token_hex(12)}{PASSWORD_TAIL}", user="app", database=database)


@pytest.fixture(scope="module", name="log_capture")
def log_capture_fixture() -> Iterator[LogCapture]:
    cap = LogCapture()
    handler = _ListHandler(cap.records)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    with structlog.testing.capture_logs() as events:
        cap.events = events
        yield cap
    root.removeHandler(handler)
    root.setLevel(old_level)


@pytest.fixture(scope="module", name="db_env")
def db_env_fixture(
    engine: DockerEngine, containers: Containers, networks: TenantNetworks, log_capture: LogCapture
) -> Iterator[DbEnv]:
    for facts in ENGINES.values():
        try:
            engine.client.images.get(facts.image)
        except docker.errors.ImageNotFound:
            pytest.fail(f"service image {facts.image} missing: {SERVICE_HINT}", pytrace=False)
    a, b = tenant_name("db-a"), tenant_name("db-b")
    a_net, b_net = networks.ensure(a).name, networks.ensure(b).name
    databases = Databases(engine, containers)
    made: list[ContainerInfo] = []
    try:
        pg_creds, redis_creds = new_credentials("orders"), new_credentials("0")
        labels = {RUN_LABEL: RUN_ID}
        # Both databases and the clients start at once: each mostly waits for its own sandbox
        # and health check. The teardown finds the databases by label, whatever happens here.
        with ThreadPoolExecutor(max_workers=2) as pool:
            provisions = [
                pool.submit(
                    databases.provision, DatabaseSpec(a, name, engine, a_net, creds, database_id(), labels=labels), timeout=180
                )
                for name, engine, creds in (("orders", POSTGRES, pg_creds), ("cache", REDIS, redis_creds))
            ]
            made += run_all(
                containers,
                sleeper(a, "web", a_net),
                sleeper(b, "web", b_net),
                spec(a, "psql", a_net, image=ENGINES[POSTGRES].image, command=["sleep", "900"]),
                spec(a, "rcli", a_net, image=ENGINES[REDIS].image, command=["sleep", "900"]),
            )
        pg, cache = (provision.result() for provision in provisions)
        yield DbEnv(
            a=a,
            b=b,
            a_net=a_net,
            b_net=b_net,
            pg=pg,
            pg_creds=pg_creds,
            redis=cache,
            redis_creds=redis_creds,
            a_app=made[0],
            b_app=made[1],
            pg_client=made[2],
            redis_client=made[3],
            databases=databases,
            backups=Backups(engine, databases),
            logs=log_capture,
        )
    finally:
        _teardown(engine, containers, networks, databases, made, (a, b))


def database_id() -> str:
    """An id of the shape the control plane gives databases (it names the container and volume)."""
    return f"db_{secrets.token_hex(13)}"


def _teardown(
    engine: DockerEngine,
    containers: Containers,
    networks: TenantNetworks,
    databases: Databases,
    made: list[ContainerInfo],
    tenants: tuple[str, str],
) -> None:
    """Every step runs even if one fails (a leftover volume must not survive a failed test);
    the first error is raised at the end. The containers go first, all at once (each removal
    mostly waits for its own sandbox), then the volumes, then the networks."""
    removals: list[Callable[[], object]] = [functools.partial(containers.remove, c.id, force=True) for c in made]
    # Tests may replace an instance (re-provision): look them up rather than keep a list.
    removals += [functools.partial(databases.remove, inst, purge_volume=True) for inst in databases.list(tenants[0])]
    errors: list[Exception] = []

    def volumes() -> None:
        for volume in engine.client.volumes.list(filters={"label": f"{RUN_LABEL}={RUN_ID}"}):
            volume.remove(force=True)

    def attempt(step: Callable[[], object]) -> None:
        try:
            step()
        except Exception as exc:  # noqa: BLE001 (collected, the first is re-raised)
            errors.append(exc)

    with ThreadPoolExecutor(max_workers=max(1, len(removals))) as pool:
        list(pool.map(attempt, removals))
    for step in [volumes, *(functools.partial(networks.remove, t) for t in tenants)]:
        attempt(step)
    if errors:
        raise errors[0]
