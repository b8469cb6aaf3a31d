"""The records the domain works with: plain, immutable values. The store's repositories
make them from rows; nothing here knows about SQLAlchemy."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Tenant:
    id: str
    name: str
    display_name: str
    status: str
    created_at: datetime
    updated_at: datetime

    @property
    def is_suspended(self) -> bool:
        return self.status == "suspended"

    @property
    def is_pending(self) -> bool:
        """Self-registered with a token that asks for approval, not yet approved."""
        return self.status == "pending"


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    tenant_id: str | None
    name: str
    secret_hash: str
    scopes: tuple[str, ...]
    created_at: datetime
    created_by: str | None
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None

    @property
    def is_operator(self) -> bool:
        return self.tenant_id is None


@dataclass(frozen=True, slots=True)
class App:
    id: str
    tenant_id: str
    name: str
    description: str
    port: int
    health_check_path: str
    builder: str
    created_at: datetime
    updated_at: datetime
    replicas: int = 1
    kind: str = "app"  # app | preview (a short-lived copy of ``parent_app_id``, gone at ``expires_at``)
    parent_app_id: str | None = None
    expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened to a tenant's resource (see ``control.domain.events``)."""

    seq: int  # the cursor: increasing in commit order
    id: str
    tenant_id: str
    type: str
    subject: str
    created_at: datetime
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AuditEvent:
    id: str
    tenant_id: str | None
    api_key_id: str | None
    action: str
    target: str
    request_id: str
    outcome: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Backup:
    id: str
    tenant_id: str
    database_id: str
    engine: str
    status: str
    trigger: str  # manual | schedule
    reason: str | None
    file_name: str | None
    size: int | None
    sha256: str | None
    created_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class Restore:
    id: str
    tenant_id: str
    backup_id: str
    target_id: str
    status: str
    reason: str | None
    created_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class Database:
    id: str
    tenant_id: str
    name: str
    engine: str
    status: str
    reason: str | None
    memory_mb: int
    backup_retention: int | None
    backup_schedule: str | None
    next_backup_at: datetime | None
    backups_skipped: int
    last_backup_skip_reason: str | None
    db_user: str
    db_name: str
    master_key_id: str
    container_id: str | None
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None
    purge_after: datetime | None
    password_ciphertext: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class DatabaseOverrides:
    max_databases: int | None = None
    max_memory_mb: int | None = None


@dataclass(frozen=True, slots=True)
class Volume:
    id: str
    tenant_id: str
    app_id: str
    name: str
    mount_path: str
    size_mb: int
    quota: str  # enforced | measured
    status: str  # ready | full
    used_bytes: int | None
    measured_at: datetime | None
    created_at: datetime
    updated_at: datetime

    @property
    def enforced(self) -> bool:
        return self.quota == "enforced"


@dataclass(frozen=True, slots=True)
class ComputeOverrides:
    """An operator's per-tenant compute quotas; None: the platform default."""

    max_apps: int | None = None
    max_replicas: int | None = None
    max_millicpus: int | None = None
    max_memory_mb: int | None = None
    build_minutes_per_day: int | None = None
    max_environments: int | None = None


@dataclass(frozen=True, slots=True)
class RunningApp:
    """An app that holds compute: it has a current release or a deployment in flight."""

    name: str
    replicas: int


@dataclass(frozen=True, slots=True)
class StorageOverrides:
    max_volumes: int | None = None
    max_total_mb: int | None = None
    max_snapshot_mb: int | None = None  # every snapshot's files together


ACTIVE_STATUSES = ("queued", "building", "releasing")  # a deployment in one of these has not ended


@dataclass(frozen=True, slots=True)
class Deployment:
    id: str
    tenant_id: str
    app_id: str
    status: str
    source_kind: str
    source: dict[str, Any]
    builder: str | None
    release_id: str | None
    image: str | None
    reason: str | None
    cancel_requested: bool
    log_path: str | None
    timings: dict[str, float]
    transitions: list[dict[str, Any]]
    created_at: datetime
    updated_at: datetime

    @property
    def is_terminal(self) -> bool:
        return self.status not in ACTIVE_STATUSES


@dataclass(frozen=True, slots=True)
class StoredEnvVar:
    id: str
    tenant_id: str
    app_id: str
    name: str
    ciphertext: bytes
    master_key_id: str
    version: int
    secret: bool
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class EnvApp:
    """The app an env set belongs to, and how often that set changed."""

    id: str
    tenant_id: str
    name: str
    env_version: int


@dataclass(frozen=True, slots=True)
class StoredResponse:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    id: int
    api_key_id: str
    tenant_id: str | None
    idempotency_key: str
    fingerprint: str
    state: str
    lease_expires_at: datetime | None
    expires_at: datetime
    response: StoredResponse | None


@dataclass(frozen=True, slots=True)
class InferenceOverrides:
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    token_budget: int | None = None
    budget_period: str | None = None


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    kind: str
    tenant_id: str | None
    subject_id: str
    state: str
    attempts: int
    max_attempts: int
    run_after: datetime
    lease_owner: str | None
    lease_expires_at: datetime | None
    last_error: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class LimitOverrides:
    tenant_quota: int | None
    key_quota: int | None


@dataclass(frozen=True, slots=True)
class Link:
    id: str
    tenant_id: str
    app_id: str
    app_name: str
    database_id: str
    database_name: str
    engine: str
    env_name: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ServedModel:
    name: str  # the public name tenants send
    engine_model: str  # what the node's engine expects in `model` (transformers serve: the model dir)


@dataclass(frozen=True, slots=True)
class Node:
    id: str
    name: str
    secret_hash: str
    created_by: str | None
    created_at: datetime
    revoked_at: datetime | None
    draining: bool
    registered_at: datetime | None
    last_heartbeat_at: datetime | None
    engine: str
    base_url: str
    state: str
    models: tuple[ServedModel, ...]
    report: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ConfigVar:
    """One env var as a release was made with it: which version (``version_id`` names the kept
    value, sealed in the store like every value), never the value itself."""

    name: str
    version: int
    secret: bool
    version_id: str


@dataclass(frozen=True, slots=True)
class ConfigLink:
    env_name: str
    database_id: str


@dataclass(frozen=True, slots=True)
class ReleaseConfig:
    """What a release was made with besides its image: env vars and database links."""

    env_version: int
    vars: tuple[ConfigVar, ...]
    links: tuple[ConfigLink, ...]

    def to_json(self) -> str:
        return json.dumps(
            {
                "env_version": self.env_version,
                "vars": [
                    {"name": v.name, "version": v.version, "secret": v.secret, "version_id": v.version_id} for v in self.vars
                ],
                "links": [{"env_name": link.env_name, "database_id": link.database_id} for link in self.links],
            }
        )

    @classmethod
    def from_json(cls, text: str) -> ReleaseConfig:
        doc = json.loads(text)
        return cls(
            env_version=int(doc["env_version"]),
            vars=tuple(ConfigVar(v["name"], int(v["version"]), bool(v["secret"]), v["version_id"]) for v in doc["vars"]),
            links=tuple(ConfigLink(link["env_name"], link["database_id"]) for link in doc["links"]),
        )

    def summary(self) -> str:
        """Names and versions, never values: ``GREETING v2, DATABASE_URL -> db_...``."""
        parts = [f"{v.name} v{v.version}" for v in self.vars] + [f"{k.env_name} -> {k.database_id}" for k in self.links]
        return ", ".join(parts) or "no env vars or links"


@dataclass(frozen=True, slots=True)
class Release:
    id: str
    tenant_id: str
    app_id: str
    number: int
    deployment_id: str
    image_id: str
    image_tag: str
    env_version: int
    port: int
    health_check_path: str
    rollback_of: str | None
    created_at: datetime
    config: ReleaseConfig | None = None  # None: made before releases kept their config

    @property
    def name(self) -> str:
        return f"v{self.number}"


@dataclass(frozen=True, slots=True)
class DesiredApp:
    """One app the reconciler must keep running: its names, release, how many replicas it
    should run, and the containers recorded for them (``(id, name)``, first replica first)."""

    tenant_id: str
    tenant_name: str
    app_id: str
    app_name: str
    release: Release
    container_id: str
    container_name: str
    replicas: int = 1
    containers: tuple[tuple[str, str], ...] = ()

    @property
    def replica_containers(self) -> tuple[tuple[str, str], ...]:
        return self.containers or ((self.container_id, self.container_name),)


@dataclass(frozen=True, slots=True)
class UsageRecord:
    id: str
    tenant_id: str
    api_key_id: str
    request_id: str
    model: str
    node_id: str | None
    endpoint: str
    stream: bool
    status: str
    http_status: int
    prompt_tokens: int
    completion_tokens: int
    reserved_tokens: int
    usage_reported: bool
    latency_ms: int
    ttft_ms: int | None
    created_at: datetime

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class UsageBucket:
    tenant_id: str
    day: str  # YYYY-MM-DD (UTC)
    model: str
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int


RUN_ACTIVE_STATUSES = ("queued", "running")  # a run in one of these has not ended


@dataclass(frozen=True, slots=True)
class Run:
    """One command run in a new container from an app's release (by API or by a schedule)."""

    id: str
    tenant_id: str
    app_id: str
    status: str
    command: tuple[str, ...]
    timeout_s: int
    trigger: str  # "api" | "cron:<schedule name>"
    volumes: str  # how it mounts the app's volumes: none | read-only | read-write
    release_id: str
    image: str
    exit_code: int | None
    reason: str | None
    output_truncated: bool
    output_bytes: int
    cancel_requested: bool
    log_path: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime

    @property
    def is_terminal(self) -> bool:
        return self.status not in RUN_ACTIVE_STATUSES


@dataclass(frozen=True, slots=True)
class CronSchedule:
    id: str
    tenant_id: str
    app_id: str
    name: str
    schedule: str
    command: tuple[str, ...]
    timeout_s: int
    enabled: bool
    next_fire_at: datetime | None  # None while disabled
    last_run_id: str | None
    last_fired_at: datetime | None
    skipped: int  # firings skipped (the previous run still going, or no release to run)
    last_skipped_at: datetime | None
    last_skip_reason: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Domain:
    id: str
    tenant_id: str
    app_id: str
    hostname: str
    method: str  # http | dns
    token: str
    status: str  # pending | verifying | active | failed
    reason: str | None
    hsts: bool
    verify_until: datetime | None
    checked_at: datetime | None
    verified_at: datetime | None
    created_at: datetime
    updated_at: datetime


# -- environments (sandboxes) --------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Environment:
    """A leased sandbox container a tenant execs commands in."""

    id: str
    tenant_id: str
    app_id: str | None  # the app it was made from (from_app), while that app exists
    image: str
    release_id: str | None
    with_app_env: bool
    status: str  # starting | ready
    container_id: str | None
    millicpus: int
    memory_mb: int
    lease_expires_at: datetime
    lifetime_ends_at: datetime
    created_at: datetime
    updated_at: datetime
