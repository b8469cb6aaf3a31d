"""SQLAlchemy 2 typed models. Every change here needs an Alembic migration."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from control.clock import utcnow
from control.store.types import JSONList, UTCDateTime

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Timestamps:
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class TenantRow(Timestamps, Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    status: Mapped[str] = mapped_column(String(16), default="active")


class ApiKeyRow(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    # NULL tenant: an operator key, which manages the platform rather than one tenant.
    tenant_id: Mapped[str | None] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100), default="")
    secret_hash: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[list[str]] = mapped_column(JSONList)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(40))
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class RegistrationTokenRow(Base):
    """An operator's invitation to self-register: ``uses`` tenants at most, until it expires
    or is revoked. Only SHA-256 of the token is kept; ``used`` only ever grows, by a
    conditional UPDATE, so concurrent registrations never spend more uses than there are."""

    __tablename__ = "registration_tokens"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), default="")
    secret_hash: Mapped[str] = mapped_column(String(64))
    uses: Mapped[int] = mapped_column(Integer)
    used: Mapped[int] = mapped_column(Integer, default=0)
    approval: Mapped[bool] = mapped_column(Boolean, default=False)  # tenants made with it start pending
    default_limits: Mapped[str] = mapped_column(Text, default="{}")  # JSON: the overrides each new tenant gets
    created_by: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class RecoveryCodeRow(Base):
    """A tenant's one recovery code (SHA-256 only): replaced by every recovery and reset."""

    __tablename__ = "recovery_codes"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    code_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class RecoveryAttemptsRow(Base):
    """Failed recoveries per tenant *name*, known or not, so that an unknown name is counted,
    locked and answered exactly like a known one. No foreign key: names that were never
    tenants are counted too."""

    __tablename__ = "recovery_attempts"

    tenant_name: Mapped[str] = mapped_column(String(63), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    first_failed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime)


class AppRow(Timestamps, Base):
    __tablename__ = "apps"
    __table_args__ = (UniqueConstraint("tenant_id", "name"), Index("ix_apps_tenant", "tenant_id", "id"))

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(63))
    description: Mapped[str] = mapped_column(Text, default="")
    port: Mapped[int] = mapped_column(Integer, default=8080)
    health_check_path: Mapped[str] = mapped_column(String(200), default="/")
    builder: Mapped[str] = mapped_column(String(16), default="auto")
    env_version: Mapped[int] = mapped_column(Integer, default=0)  # bumped by every env change
    replicas: Mapped[int] = mapped_column(Integer, default=1, server_default="1")  # containers the release runs in
    # --- previews: an app of kind "preview" is a short-lived copy of its parent app ------
    kind: Mapped[str] = mapped_column(String(16), default="app", server_default="app")  # app | preview
    parent_app_id: Mapped[str | None] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), index=True)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)  # a preview is deleted then


class IdempotencyRecordRow(Base):
    """One Idempotency-Key as seen from one API key: the lease while in flight, then
    the stored response to replay."""

    __tablename__ = "idempotency_records"
    __table_args__ = (UniqueConstraint("api_key_id", "idempotency_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    api_key_id: Mapped[str] = mapped_column(String(40), index=True)
    tenant_id: Mapped[str | None] = mapped_column(String(40))
    idempotency_key: Mapped[str] = mapped_column(String(255))
    fingerprint: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))  # in_flight | completed
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    response_status: Mapped[int | None] = mapped_column(Integer)
    response_headers: Mapped[str | None] = mapped_column(Text)  # JSON list of [name, value]
    response_body: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class TenantLimitsRow(Base):
    """Per-tenant overrides set by operators; NULL means the platform default."""

    __tablename__ = "tenant_limits"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    requests_per_minute: Mapped[int | None] = mapped_column(Integer)  # whole tenant
    key_requests_per_minute: Mapped[int | None] = mapped_column(Integer)  # each key
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class EnvVarRow(Timestamps, Base):
    """An app's environment variable, AES-256-GCM encrypted; AAD binds tenant, app and name."""

    __tablename__ = "env_vars"
    __table_args__ = (UniqueConstraint("app_id", "name"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(255))
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)  # key id + nonce + sealed value
    master_key_id: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    secret: Mapped[bool] = mapped_column(Boolean, default=True)


class EnvVarVersionRow(Base):
    """Every value an env var has had (sealed as it was), so a release can be made again with
    the config it had: releases name the versions they were made with, by these ids."""

    __tablename__ = "env_var_versions"
    __table_args__ = (Index("ix_env_var_versions_var", "app_id", "name", "version"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(255))
    version: Mapped[int] = mapped_column(Integer)
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    master_key_id: Mapped[str] = mapped_column(String(64), index=True)
    secret: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AuditEventRow(Base):
    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_tenant", "tenant_id", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str | None] = mapped_column(String(40))  # no FK: the trail outlives tenants
    api_key_id: Mapped[str | None] = mapped_column(String(40))
    action: Mapped[str] = mapped_column(String(100))  # e.g. "POST /v1/apps/{app}"
    target: Mapped[str] = mapped_column(String(500))
    request_id: Mapped[str] = mapped_column(String(128))
    outcome: Mapped[int] = mapped_column(Integer)  # HTTP status
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


# --- deployments ---------------------------------------------------------------


class DeploymentRow(Timestamps, Base):
    """One attempt to put source (or an earlier release's image) into production.

    ``transitions`` is a JSON list of ``{"status", "at", "reason"?}``: every state change,
    in order, so the whole history survives restarts."""

    __tablename__ = "deployments"
    __table_args__ = (Index("ix_deployments_app", "app_id", "id"), Index("ix_deployments_status", "status"))

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16))
    source_kind: Mapped[str] = mapped_column(String(16))  # archive | git | rollback
    source: Mapped[str] = mapped_column(Text, default="{}")  # JSON: git url/ref, or the release rolled back to
    builder: Mapped[str | None] = mapped_column(String(16))  # the builder actually used
    release_id: Mapped[str | None] = mapped_column(String(40))
    image: Mapped[str | None] = mapped_column(String(200))
    reason: Mapped[str | None] = mapped_column(Text)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    log_path: Mapped[str | None] = mapped_column(String(500))  # build log file under the data dir
    timings: Mapped[str] = mapped_column(Text, default="{}")  # JSON: seconds per step
    transitions: Mapped[str] = mapped_column(Text, default="[]")


class ReleaseRow(Base):
    """Immutable: what ran (image) with which configuration. Numbered per app (v1, v2, ...)."""

    __tablename__ = "releases"
    __table_args__ = (UniqueConstraint("app_id", "number"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    deployment_id: Mapped[str] = mapped_column(String(40))
    image_id: Mapped[str] = mapped_column(String(200))
    image_tag: Mapped[str] = mapped_column(String(200))
    env_version: Mapped[int] = mapped_column(Integer)
    port: Mapped[int] = mapped_column(Integer)
    health_check_path: Mapped[str] = mapped_column(String(200))
    rollback_of: Mapped[str | None] = mapped_column(String(40))  # release id whose image this reuses
    # The env vars (sealed, exactly as stored then) and database links it was made with, as
    # JSON; None for releases made before releases kept their config.
    config: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AppRuntimeRow(Base):
    """Desired state the reconciler enforces: the release an app should be running, and
    the container that currently runs it."""

    __tablename__ = "app_runtimes"

    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    release_id: Mapped[str] = mapped_column(ForeignKey("releases.id", ondelete="CASCADE"))
    container_id: Mapped[str] = mapped_column(String(80))  # the first replica's
    container_name: Mapped[str] = mapped_column(String(200))
    # Every replica's [id, name] as JSON; None for rows made before replicas (one container).
    containers: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class JobRow(Base):
    """Durable work queue. A worker holds a job through a lease it renews (heartbeat); a
    lease that lapses means the worker died, and the job is retried or failed."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_claimable", "state", "run_after"), Index("ix_jobs_tenant_state", "tenant_id", "state"))

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    tenant_id: Mapped[str | None] = mapped_column(String(40))  # for per-tenant concurrency
    subject_id: Mapped[str] = mapped_column(String(40), index=True)  # e.g. the deployment id
    state: Mapped[str] = mapped_column(String(16))  # queued | running | succeeded | failed | cancelled
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=2)
    run_after: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(String(80))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class RunRow(Timestamps, Base):
    """A one-off command in a new container from a release of the app; its output is a log
    file under the data dir (``log_path``)."""

    __tablename__ = "runs"
    __table_args__ = (
        Index("ix_runs_app", "app_id", "id"),
        Index("ix_runs_app_trigger", "app_id", "trigger", "id"),
        Index("ix_runs_status", "status"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16))  # queued | running | succeeded | failed | timed_out | cancelled
    command: Mapped[str] = mapped_column(Text)  # JSON list of strings, in order
    timeout_s: Mapped[int] = mapped_column(Integer)
    trigger: Mapped[str] = mapped_column(String(80))  # api | cron:<schedule name>
    volumes: Mapped[str] = mapped_column(
        String(16), default="read-only", server_default="read-only"
    )  # none | read-only | read-write
    release_id: Mapped[str] = mapped_column(String(40))  # the release whose image it runs
    image: Mapped[str] = mapped_column(String(200))
    exit_code: Mapped[int | None] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(Text)
    output_truncated: Mapped[bool] = mapped_column(Boolean, default=False)
    output_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    log_path: Mapped[str] = mapped_column(String(500))
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class CronScheduleRow(Timestamps, Base):
    """A named schedule that starts a run of the app's current release; ``next_fire_at`` is
    when it is due next (kept, so a firing missed while the control plane was down runs once)."""

    __tablename__ = "cron_schedules"
    __table_args__ = (UniqueConstraint("app_id", "name"), Index("ix_cron_schedules_due", "enabled", "next_fire_at"))

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(63))
    schedule: Mapped[str] = mapped_column(String(200))
    command: Mapped[str] = mapped_column(Text)  # JSON list of strings
    timeout_s: Mapped[int] = mapped_column(Integer)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    next_fire_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_run_id: Mapped[str | None] = mapped_column(String(40))
    last_fired_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    skipped: Mapped[int] = mapped_column(Integer, default=0)
    last_skipped_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_skip_reason: Mapped[str | None] = mapped_column(Text)


# --- inference -----------------------------------------------------------------


class InferenceNodeRow(Timestamps, Base):
    """An enrolled inference node: its token hash, the operator's drain flag and what its
    last registration/heartbeat said (``report``: JSON of the dynamic part)."""

    __tablename__ = "inference_nodes"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    secret_hash: Mapped[str] = mapped_column(String(64))
    created_by: Mapped[str | None] = mapped_column(String(40))
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # DELETE: the token stops working
    draining: Mapped[bool] = mapped_column(Boolean, default=False)  # operator: route nothing new here
    registered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    engine: Mapped[str] = mapped_column(String(32), default="")
    base_url: Mapped[str] = mapped_column(String(300), default="")
    state: Mapped[str] = mapped_column(String(16), default="enrolled")  # the engine state last reported
    models: Mapped[str] = mapped_column(Text, default="[]")  # JSON [{"name", "engine_model"}]
    report: Mapped[str] = mapped_column(Text, default="{}")  # JSON: in flight, GPUs, expert load, ...


class InferenceUsageRow(Base):
    """One gateway request. No foreign key: usage is billing data and outlives tenants."""

    __tablename__ = "inference_usage"
    __table_args__ = (Index("ix_inference_usage_tenant", "tenant_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(40))
    api_key_id: Mapped[str] = mapped_column(String(40))
    request_id: Mapped[str] = mapped_column(String(128))
    model: Mapped[str] = mapped_column(String(200))
    node_id: Mapped[str | None] = mapped_column(String(40))
    endpoint: Mapped[str] = mapped_column(String(32))  # chat.completions | completions
    stream: Mapped[bool] = mapped_column(Boolean)
    status: Mapped[str] = mapped_column(String(16))  # ok | error | rejected | cancelled | stalled
    http_status: Mapped[int] = mapped_column(Integer)
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    reserved_tokens: Mapped[int] = mapped_column(Integer)
    usage_reported: Mapped[bool] = mapped_column(Boolean)  # False: the engine said nothing, estimated
    latency_ms: Mapped[int] = mapped_column(Integer)
    ttft_ms: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class TenantInferenceLimitsRow(Base):
    """Per-tenant inference quota overrides set by operators; NULL means the platform default."""

    __tablename__ = "tenant_inference_limits"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    requests_per_minute: Mapped[int | None] = mapped_column(Integer)
    tokens_per_minute: Mapped[int | None] = mapped_column(Integer)
    token_budget: Mapped[int | None] = mapped_column(Integer)
    budget_period: Mapped[str | None] = mapped_column(String(8))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


# --- managed databases ---------------------------------------------------------


class DatabaseRow(Timestamps, Base):
    """A tenant's managed Postgres/Redis. The row outlives the container: after DELETE it
    stays ``deleted`` (name reserved, volume kept) until ``purge_after``, then goes."""

    __tablename__ = "databases"
    __table_args__ = (
        UniqueConstraint("tenant_id", "name"),
        Index("ix_databases_tenant", "tenant_id", "id"),
        Index("ix_databases_backup_due", "status", "next_backup_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(63))
    engine: Mapped[str] = mapped_column(String(16))  # postgres | redis
    status: Mapped[str] = mapped_column(String(16))  # provisioning | available | failed | deleting | deleted
    reason: Mapped[str | None] = mapped_column(Text)
    memory_mb: Mapped[int] = mapped_column(Integer)
    backup_retention: Mapped[int | None] = mapped_column(Integer)  # NULL: the platform default
    backup_schedule: Mapped[str | None] = mapped_column(String(200))  # cron syntax, UTC; NULL: no scheduled backups
    next_backup_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    backups_skipped: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_backup_skip_reason: Mapped[str | None] = mapped_column(Text)
    db_user: Mapped[str] = mapped_column(String(63))
    db_name: Mapped[str] = mapped_column(String(63))
    # AES-256-GCM; AAD binds tenant id, database id and the field name.
    password_ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    master_key_id: Mapped[str] = mapped_column(String(64), index=True)
    container_id: Mapped[str | None] = mapped_column(String(80))
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    purge_after: Mapped[datetime | None] = mapped_column(UTCDateTime)  # the volume is kept until then


class DatabaseLinkRow(Base):
    """An app's link to a database: the URL lands in ``env_name`` at the app's next release."""

    __tablename__ = "database_links"
    __table_args__ = (UniqueConstraint("app_id", "env_name"), UniqueConstraint("database_id", "app_id"))

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"))
    database_id: Mapped[str] = mapped_column(ForeignKey("databases.id", ondelete="CASCADE"))
    env_name: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class DatabaseBackupRow(Base):
    """One backup file under ``<data_dir>/backups/<tenant id>/<database id>/``."""

    __tablename__ = "database_backups"
    __table_args__ = (Index("ix_database_backups_database", "database_id", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    database_id: Mapped[str] = mapped_column(ForeignKey("databases.id", ondelete="CASCADE"))
    engine: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))  # pending | running | succeeded | failed
    trigger: Mapped[str] = mapped_column(String(16), default="manual", server_default="manual")  # manual | schedule
    reason: Mapped[str | None] = mapped_column(Text)
    file_name: Mapped[str | None] = mapped_column(String(200))
    size: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))  # the reference: a sidecar can be rewritten with the file
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class DatabaseRestoreRow(Base):
    """A restore of one backup into a database of the same engine (the same one or another)."""

    __tablename__ = "database_restores"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    backup_id: Mapped[str] = mapped_column(ForeignKey("database_backups.id", ondelete="CASCADE"), index=True)
    target_id: Mapped[str] = mapped_column(ForeignKey("databases.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16))  # pending | running | succeeded | failed
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class TenantDatabaseLimitsRow(Base):
    """Per-tenant managed-database quotas set by operators; NULL means the platform default."""

    __tablename__ = "tenant_database_limits"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    max_databases: Mapped[int | None] = mapped_column(Integer)
    max_memory_mb: Mapped[int | None] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


# --- app volumes ---------------------------------------------------------------


class VolumeRow(Timestamps, Base):
    """An app's persistent volume: its storage on the host is named from its id
    (``moorage-vol-<id>``) and lives until the volume, or the app with ``?purge=true``, is deleted."""

    __tablename__ = "volumes"
    __table_args__ = (UniqueConstraint("app_id", "name"), Index("ix_volumes_tenant", "tenant_id", "id"))

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(63))
    mount_path: Mapped[str] = mapped_column(String(255))
    size_mb: Mapped[int] = mapped_column(Integer)
    quota: Mapped[str] = mapped_column(String(16))  # enforced | measured: how it was made, for good
    status: Mapped[str] = mapped_column(String(16), default="ready")  # ready | full (measured, over its size)
    used_bytes: Mapped[int | None] = mapped_column(BigInteger)  # the last measurement
    measured_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class TenantStorageLimitsRow(Base):
    """Per-tenant volume quotas set by operators; NULL means the platform default."""

    __tablename__ = "tenant_storage_limits"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    max_volumes: Mapped[int | None] = mapped_column(Integer)
    max_total_mb: Mapped[int | None] = mapped_column(Integer)
    max_snapshot_mb: Mapped[int | None] = mapped_column(Integer)  # every snapshot's files together
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class TenantComputeLimitsRow(Base):
    """Per-tenant compute quotas (apps, replicas, CPU, memory, build minutes) set by
    operators; NULL means the platform default (``MOORAGE_TENANT_MAX_*``)."""

    __tablename__ = "tenant_compute_limits"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    max_apps: Mapped[int | None] = mapped_column(Integer)
    max_replicas: Mapped[int | None] = mapped_column(Integer)
    max_millicpus: Mapped[int | None] = mapped_column(Integer)  # the API speaks CPUs (max_cpu); stored exact
    max_memory_mb: Mapped[int | None] = mapped_column(Integer)
    build_minutes_per_day: Mapped[int | None] = mapped_column(Integer)
    max_environments: Mapped[int | None] = mapped_column(Integer)  # sandboxes at once
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class DomainRow(Timestamps, Base):
    """A custom hostname of an app. ``pending`` → ``verifying`` → ``active`` | ``failed``; one
    tenant holds a name at a time, and a failed claim lets go of it."""

    __tablename__ = "domains"
    __table_args__ = (
        Index("ix_domains_tenant", "tenant_id", "id"),
        Index("ix_domains_app", "app_id", "id"),
        Index(
            "uq_domains_claimed",
            "hostname",
            unique=True,
            sqlite_where=text("status != 'failed'"),
            postgresql_where=text("status != 'failed'"),
        ),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"))
    hostname: Mapped[str] = mapped_column(String(253))  # ASCII (IDNA), lower case, no trailing dot
    method: Mapped[str] = mapped_column(String(8))  # http | dns
    token: Mapped[str] = mapped_column(String(64))  # not a secret: it is published, by design
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    hsts: Mapped[bool] = mapped_column(Boolean, default=False)
    verify_until: Mapped[datetime | None] = mapped_column(UTCDateTime)  # checks go on until then, then fail
    checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class MeteredUsageRow(Base):
    """One tenant's use of one resource in one hour (UTC): counters summed (CPU-seconds, bytes,
    build seconds), gauges as byte-seconds with their peak. No foreign key: like inference
    usage, it is billing data and outlives tenants."""

    __tablename__ = "metered_usage"
    __table_args__ = (Index("ix_metered_usage_hour", "hour"),)

    tenant_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    hour: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)  # the hour's start
    resource: Mapped[str] = mapped_column(String(40), primary_key=True)
    amount: Mapped[float] = mapped_column(Float, default=0.0)
    peak: Mapped[float] = mapped_column(Float, default=0.0)  # gauges only: the highest reading
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


# --- snapshots and forks -------------------------------------------------------


class SnapshotRow(Base):
    """A point-in-time copy of an app: its release's image, settings, env vars (sealed under the
    snapshot's own binding, ``snapshot_env_vars``), links, and the data (a tar of each volume,
    a dump of each linked database) in files under ``<data_dir>/snapshots/<tenant>/<id>/``.
    ``manifest_sha256`` is the digest of the manifest that lists every file with its SHA-256."""

    __tablename__ = "snapshots"
    __table_args__ = (Index("ix_snapshots_tenant", "tenant_id", "id"), Index("ix_snapshots_app", "app_id", "id"))

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"))
    app_name: Mapped[str] = mapped_column(String(63))
    status: Mapped[str] = mapped_column(String(16))  # pending | running | succeeded | failed
    reason: Mapped[str | None] = mapped_column(Text)
    release_id: Mapped[str] = mapped_column(String(40))
    release_number: Mapped[int] = mapped_column(Integer)
    image_id: Mapped[str] = mapped_column(String(200))  # kept by the image lifecycle while this row exists
    image_tag: Mapped[str] = mapped_column(String(200))
    settings: Mapped[str] = mapped_column(Text, default="{}")  # JSON: port, health_check_path, builder, description
    links: Mapped[str] = mapped_column(Text, default="[]")  # JSON [{env_name, database_id, database_name, engine}]
    volumes: Mapped[str] = mapped_column(Text, default="[]")  # JSON [{volume_id, name, mount_path, size_mb}]
    files: Mapped[str] = mapped_column(Text, default="[]")  # JSON: the manifest's entries [{path, kind, ref, size, sha256}]
    manifest_sha256: Mapped[str | None] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)  # every file together
    paused_ms: Mapped[int | None] = mapped_column(Integer)  # how long the app's volume writers were stopped
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class SnapshotEnvVarRow(Base):
    """An env var as a snapshot keeps it: AES-256-GCM, AAD binds ("snapshot", tenant, snapshot, name)."""

    __tablename__ = "snapshot_env_vars"
    __table_args__ = (UniqueConstraint("snapshot_id", "name"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    snapshot_id: Mapped[str] = mapped_column(ForeignKey("snapshots.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(255))
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    master_key_id: Mapped[str] = mapped_column(String(64), index=True)
    secret: Mapped[bool] = mapped_column(Boolean, default=True)


class SnapshotForkRow(Base):
    """A fork of a snapshot into an app of the tenant: ``plan`` (JSON) names the new volumes and
    databases the snapshot's files go into, and whether a release of the snapshot's image is
    deployed once they are filled (``deployment_id``)."""

    __tablename__ = "snapshot_forks"
    __table_args__ = (Index("ix_snapshot_forks_snapshot", "snapshot_id", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    snapshot_id: Mapped[str] = mapped_column(ForeignKey("snapshots.id", ondelete="CASCADE"))
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16))  # pending | restoring | deploying | succeeded | failed
    reason: Mapped[str | None] = mapped_column(Text)
    plan: Mapped[str] = mapped_column(Text, default="{}")
    deployment_id: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


# -- environments (sandboxes) --------------------------------------------------------------
class EnvironmentRow(Timestamps, Base):
    """A leased sandbox container a tenant execs commands in. ``starting`` while its
    container is being made, then ``ready``; the row goes (and its container with it) on
    DELETE or once ``lease_expires_at`` has passed. The container is named from the id."""

    __tablename__ = "environments"
    __table_args__ = (Index("ix_environments_tenant", "tenant_id", "id"), Index("ix_environments_lease", "lease_expires_at"))

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    app_id: Mapped[str | None] = mapped_column(ForeignKey("apps.id", ondelete="SET NULL"))  # from_app: the app it came from
    image: Mapped[str] = mapped_column(String(200))  # a base image's name, or the app release's image id
    release_id: Mapped[str | None] = mapped_column(String(40))  # from_app: the release whose image it runs
    with_app_env: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16))  # starting | ready
    container_id: Mapped[str | None] = mapped_column(String(80))
    millicpus: Mapped[int] = mapped_column(Integer)
    memory_mb: Mapped[int] = mapped_column(Integer)
    lease_expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    lifetime_ends_at: Mapped[datetime] = mapped_column(UTCDateTime)  # no renewal goes past it


# --- events ----------------------------------------------------------------------


class EventRow(Base):
    """What happened to a tenant's resources, in commit order. ``seq`` is the cursor clients
    resume from: AUTOINCREMENT, so a number is never given out twice, not even after the
    retention pass has removed every row."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_tenant_seq", "tenant_id", "seq"), {"sqlite_autoincrement": True})

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)  # evt_...: a webhook delivery's id
    tenant_id: Mapped[str] = mapped_column(String(40), ForeignKey("tenants.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(200))  # the id of the resource it is about
    data: Mapped[str] = mapped_column(Text, default="{}")  # JSON object: ids and states, never secrets
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
