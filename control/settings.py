"""Typed settings, read once from ``MOORAGE_*`` environment variables."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, get_args, get_type_hints

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class SettingsError(ValueError):
    """A MOORAGE_* variable holds a value that cannot be used."""


def default_volume_quota() -> str:
    """Enforced volumes need loop devices, which need root (CAP_SYS_ADMIN)."""
    return "enforced" if os.geteuid() == 0 else "measured"


def default_data_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/moorage")
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "moorage"


@dataclass(frozen=True)
class Settings:
    data_dir: Path = field(default_factory=default_data_dir)
    database_url: str = ""  # empty: SQLite file in data_dir
    host: str = "127.0.0.1"
    port: int = 7800
    base_domain: str = "moorage.localhost"
    master_key_file: Path | None = None  # AES keyring for secrets (agent-safety layer)
    # KEY_ID:BASE64 entries, first active; wins over the file. repr=False: never printed.
    master_keys: str = field(default="", repr=False)
    require_operator_key: bool = False  # refuse to start until `moorage admin bootstrap` ran
    log_level: str = "info"
    log_format: str = "json"  # json | console
    key_last_used_resolution_s: int = 60  # how stale `last_used_at` may be, to spare writes
    idempotency_retention_s: int = 86400  # how long a stored response can be replayed (24 h)
    idempotency_lease_s: int = 60  # in-flight lock; after it lapses (a crash) a retry takes over
    retention_sweep_interval_s: int = 300  # how often expired keys, old audit events and finished jobs go (0: never)
    audit_retention_s: int = 90 * 86400  # audit events older than this are removed (0 keeps them all)
    event_retention_s: int = 7 * 86400  # stream and webhook events older than this are removed (0 keeps them all)
    job_retention_s: int = 7 * 86400  # finished jobs older than this are removed
    jobs_kept: int = 1000  # and at most this many finished jobs are kept, the newest
    rate_limit_window_s: int = 60  # the `w` of every rate-limit policy
    rate_limit_key_quota: int = 120  # requests per window per API key (operator keys too)
    rate_limit_tenant_quota: int = 600  # requests per window per tenant, all its keys together
    rate_limit_cache_ttl_s: int = 5  # how long per-tenant overrides are cached per process
    auth_failure_quota: int = 20  # failed authentications per window per client address, then 429 (0: no limit)
    auth_failure_window_s: int = 60
    # Comma-separated proxy addresses or networks whose X-Forwarded-For names the client
    # (empty: the header is ignored and the socket peer is the client).
    trusted_proxies: str = ""
    # Self-registration (POST /v1/register) and key recovery (POST /v1/recover), which take no
    # API key: attempts per client address per window (0: no limit); recovery also per tenant
    # name, and max_failures wrong codes within lock_s lock the name for lock_s (0: never).
    registration_quota: int = 10
    registration_window_s: int = 3600
    recovery_quota: int = 10
    recovery_window_s: int = 3600
    recovery_max_failures: int = 5
    recovery_lock_s: int = 900
    max_header_bytes: int = 32 * 1024  # all request header lines together; more is 431 (0: uvicorn's own limit)
    request_body_timeout_s: int = 300  # a request body must arrive within this (0: no limit)
    request_body_idle_timeout_s: int = 30  # ... with no gap longer than this (slow-body clients)
    metrics_public: bool = False  # serve GET /metrics without an operator key
    # Deployments: build, release, run, reconcile.
    build_timeout_s: int = 900  # a build running longer is stopped and the deployment fails
    build_memory_bytes: int = 2 * 1024 * 1024 * 1024  # memory limit of each build step
    build_disk_bytes: int = 10 * 1024 * 1024 * 1024  # disk a build may write: layers, running step, log (0: no limit)
    max_upload_bytes: int = 100 * 1024 * 1024  # source archive as uploaded (gzip)
    max_source_bytes: int = 500 * 1024 * 1024  # source tree once extracted or cloned
    max_source_depth: int = 64  # directory levels of any path in an uploaded archive
    max_source_entries: int = 20_000  # files, directories and links in an uploaded archive
    git_timeout_s: int = 120  # a git clone taking longer fails the deployment
    # Git sources are https:// only; http:// too when this is true (an operator's choice).
    git_allow_http: bool = False
    # Comma-separated CIDRs a git host may resolve into although they are internal
    # (loopback, private, link-local...); empty: git hosts must have public addresses.
    git_allowed_networks: str = ""
    # Comma-separated absolute directories whose repositories tenants may deploy from with
    # file:// URLs (every tenant can read every repository under them); empty: file:// refused.
    git_file_prefixes: str = ""
    # A PEM file of CA certificates builds and app containers trust besides the host's system
    # roots (e.g. a TLS-intercepting proxy's); empty: none. Certificates only: a key is refused.
    build_ca_bundle: str = ""
    # Comma-separated images a tenant's FROM / COPY --from may name, besides scratch, its
    # earlier stages and its own images: host-setup's base images. `repo` allows every tag.
    build_allowed_images: str = "moorage/python:3-bookworm,moorage/busybox:latest,moorage/postgres:15,moorage/redis:7"
    job_workers: int = 2  # worker threads in this process (0: enqueue only)
    deploys_per_tenant: int = 1  # jobs of one tenant running at once
    job_lease_s: int = 30  # a worker silent this long is presumed dead; its job is retried
    job_max_attempts: int = 2  # runs of one job, retries after a crash included
    job_dependency_wait_s: int = 600  # a job waiting for a dependency that is down (Docker) fails after this long
    health_timeout_s: int = 60  # a new release must pass its health check within this
    swap_drain_ms: int = 1000  # after Traefik serves the new release, before the old one stops
    route_verify_timeout_s: int = 10  # how long to wait to see Traefik serve the new release
    reconcile_interval_s: int = 30  # 0 disables the reconciler
    # Metering: how often each running container's counters are read (0: never), how often
    # storage (volumes, database volumes, images, backups) is measured, and how many tenants
    # get series of their own in /metrics (the rest add up under tenant="_other").
    metering_interval_s: float = 30.0
    metering_storage_interval_s: float = 300.0
    metering_metrics_max_tenants: int = 200
    max_replicas: int = 10  # containers one app may run in (PATCH /v1/apps/{app} {"replicas"})
    # Custom domains: the proofs accepted (the first is the default), where names are looked
    # up (host[:port],...; empty: the system's resolver), the port the HTTP proof is fetched on
    # (Traefik's web entrypoint), and how long and how often a proof is looked for.
    domain_verify_methods: str = "http,dns"
    domain_nameservers: str = ""
    domain_http_port: int = 80
    # CIDRs the HTTP proof may be fetched from although not public (a platform on a private
    # network, the tests' loopback); empty: public addresses only.
    domain_internal_networks: str = ""
    domain_verify_timeout_s: int = 900
    domain_verify_interval_s: float = 10.0
    domain_max_per_app: int = 20
    # ACME through Traefik (deploy/host-setup.sh renders the same MOORAGE_ACME_* into Traefik's
    # static config): with an e-mail, active domains get HTTPS from this resolver. The store is
    # read for certificate state; the control plane never writes it.
    acme_email: str = ""
    acme_resolver: str = "letsencrypt"
    acme_storage: str = "/var/lib/moorage/traefik/acme.json"
    traefik_log: str = "/var/log/moorage/traefik.log"  # as deploy/host-setup.sh: read for ACME errors
    # The platform's own hostnames over HTTPS as well: per host from this ACME resolver (set
    # up by host setup with MOORAGE_ACME_EMAIL), or with a wildcard certificate for the base
    # domain that the operator provides as files (both files or neither).
    tls_cert_resolver: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    api_upstream_url: str = ""  # how Traefik reaches this control plane; empty: http://127.0.0.1:<port>
    kept_releases: int = 5  # per app, the newest releases whose images stay for rollback; older ones are removed
    # Untagged layers a tenant's builds left (failed builds' steps, multi-stage builds' earlier
    # stages) are removed once this old, while none of its builds runs; until then a retry reuses them.
    build_layer_grace_s: int = 3600
    # One-off runs and cron schedules: commands in a new container from an app's current release.
    run_timeout_default_s: int = 600  # a run that names no timeout_s is killed after this
    run_timeout_max_s: int = 3600  # the largest timeout_s a run or schedule may ask for
    run_output_max_bytes: int = 1024 * 1024  # a run's captured output; past it the log says where it was cut
    runs_kept_per_app: int = 200  # per app, the newest finished runs (and their logs) the retention sweep keeps
    cron_max_per_app: int = 20  # schedules one app may have
    cron_tick_ms: int = 500  # how often the scheduler looks for due schedules (0: schedules never fire)
    traefik_dynamic_dir: Path = Path("/var/lib/moorage/traefik/dynamic")  # as deploy/host-setup.sh
    traefik_url: str = "http://127.0.0.1:80"  # Traefik's HTTP entrypoint, to verify new routes
    traefik_ping_address: str = "127.0.0.1:8082"  # Traefik's ping entrypoint, for /readyz (as deploy/host-setup.sh)
    # `moorage serve` routes api.<base_domain> through Traefik to itself: how tenants' code
    # reaches the API and the inference gateway (no container reaches the host's other ports).
    api_route: bool = True
    docker_url: str = "unix:///var/run/docker.sock"
    docker_runtime: str = "runsc"  # the OCI runtime app containers get (must be registered in dockerd)
    nixpacks_bin: str = "nixpacks"  # the Nixpacks CLI (name on PATH or a path)
    # Inference: nodes, gateway, per-tenant quotas (operators override per tenant).
    inference_node_stale_s: int = 30  # a node silent this long is unhealthy (heartbeat every 10 s)
    inference_requests_per_minute: int = 60  # per tenant
    inference_tokens_per_minute: int = 200_000  # per tenant; reserved prompt estimate + max_tokens
    inference_token_budget: int = 10_000_000  # per tenant per budget period (prompt + completion)
    inference_budget_period: str = "month"  # day | month (UTC calendar)
    inference_default_max_tokens: int = 1024  # set on requests that name none: bounds the reservation
    inference_breaker_failures: int = 3  # consecutive failures that open a node's breaker
    inference_breaker_reset_s: int = 30  # open breaker: seconds before a trial request
    inference_connect_timeout_s: int = 5
    inference_read_timeout_s: int = 300  # longest silence from an engine (first token included)
    inference_max_connections: int = 200  # upstream connection pool, all nodes together
    # A stream client that takes no data for this long (its receive window stays full) is cut off:
    # its node slot, engine request and token reservation are freed (0: never).
    gateway_stream_idle_s: int = 30
    # Managed databases: per-tenant quotas (operators override), backups, deletion grace.
    database_max_per_tenant: int = 5  # databases a tenant may run (provisioning or available)
    database_max_memory_mb: int = 2048  # container memory of all of a tenant's databases together
    database_backup_retention: int = 7  # newest backups kept per database unless it sets its own
    database_backup_min_interval_s: int = 300  # a database's backup schedule may come round at most this often
    database_volume_grace_s: int = 7 * 86400  # a deleted database's volume is kept this long
    database_purge_interval_s: int = 3600  # sweep for volumes past their grace (0 disables)
    database_provision_timeout_s: int = 180  # a database not healthy by then fails
    # App volumes: `enforced` (an ext4 image on a loop device per volume: its size is a hard
    # limit; needs root) or `measured` (plain Docker volumes; use measured, a full one blocks deploys).
    volume_quota: str = field(default_factory=default_volume_quota)
    volume_max_size_mb: int = 10240  # one volume's size_mb at most
    volume_max_per_tenant: int = 10  # volumes of all of a tenant's apps together (operators override)
    volume_max_total_mb: int = 20480  # size_mb of all of a tenant's volumes together (operators override)
    volume_command_timeout_s: int = 60  # each losetup / mkfs.ext4 / debugfs call
    volume_orphan_grace_s: int = 600  # storage no volume accounts for is removed once this old
    # App snapshots: their files (volume tars, database dumps) of all of a tenant's snapshots
    # together, in MiB (operators override: max_snapshot_mb in PUT /v1/tenants/{id}/storage-limits).
    snapshot_max_total_mb: int = 20480

    # Preview deployments (POST /v1/apps/{app}/previews): each is an app of its own that counts
    # against the compute quotas below; the reconciler deletes it once its TTL has run out.
    preview_ttl_default_s: int = 86400  # a preview that names no ttl_s lives this long
    preview_ttl_max_s: int = 7 * 86400  # the largest ttl_s a preview may ask for
    preview_max_per_app: int = 5  # previews one app may have at once

    # Per-tenant compute quotas (operators override per tenant: PUT /v1/tenants/{id}/compute-limits).
    # An app holds replicas x the container limits below from its first accepted deploy on.
    tenant_max_apps: int = 20  # apps of one tenant, deployed or not
    tenant_max_replicas: int = 20  # containers of all of a tenant's running apps together
    tenant_max_cpu: float = 8.0  # CPUs of those containers together (each gets container_cpus)
    tenant_max_memory_mb: int = 16384  # memory of those containers together (each gets container_memory_mb)
    tenant_build_minutes_per_day: int = 600  # time a tenant's builds may take per UTC day; then deploys that build are refused
    container_cpus: float = 0.5  # Docker's CPU limit (NanoCpus) of each app container
    container_memory_mb: int = 256  # Docker's memory limit of each app container (no swap beyond it)
    # Environments (sandboxes): leased containers a tenant execs commands in (POST /v1/environments).
    # Images an environment may start from by name; empty: build_allowed_images minus the database images.
    environment_images: str = ""
    environment_lease_default_s: int = 900  # a create that names no lease_s
    environment_lease_max_s: int = 3600  # lease_s of one create or renew at most
    environment_lifetime_max_s: int = 86400  # no renewal extends an environment past this after its creation
    environment_cpu_default: float = 1.0  # CPUs of one environment that names none
    environment_cpu_max: float = 4.0
    environment_memory_mb_default: int = 1024
    environment_memory_mb_max: int = 8192
    environment_exec_timeout_default_s: int = 300  # an exec that names no timeout_s is killed after this
    environment_exec_timeout_max_s: int = 3600
    # Processes and threads of one environment. Under gVisor the sandbox's own threads count too:
    # at 256 (the app containers' limit) ten concurrent execs crash the sandbox.
    environment_pids: int = 2048
    environment_output_max_bytes: int = 1024 * 1024  # an exec's stdout and stderr, each; past it cut and marked
    environment_upload_max_bytes: int = 256 * 1024 * 1024  # a files upload, unpacked
    environment_download_max_bytes: int = 64 * 1024 * 1024  # a files download (the tar, and its tar.gz: held in memory)
    # The warm pool: environment containers kept started per image ("image=count,...", e.g.
    # "moorage/python:3-bookworm=2"), at the default CPU and memory; empty: none.
    environment_pool: str = ""
    environment_pool_refill_s: float = 2.0  # the pool's refill pass at least this often (and after each claim)
    tenant_max_environments: int = 10  # environments of one tenant at once (operators override: compute-limits)
    # GET /v1/operator/health
    health_disk_warn_pct: int = 15  # free space on the data dir or Docker's root under this: warn
    health_disk_fail_pct: int = 5  # ... under this: fail
    health_smoke_cache_s: int = 60  # a runsc smoke run's result is reused this long
    health_smoke_timeout_s: int = 30  # a smoke run taking longer fails
    health_queue_warn_s: int = 300  # the oldest queued job waiting longer than this: warn

    def __post_init__(self) -> None:
        if not self.database_url:
            object.__setattr__(self, "database_url", f"sqlite:///{self.data_dir / 'moorage.db'}")
        if self.log_format not in {"json", "console"}:
            raise SettingsError("MOORAGE_LOG_FORMAT must be 'json' or 'console'")
        if self.volume_quota not in {"enforced", "measured"}:
            raise SettingsError("MOORAGE_VOLUME_QUOTA must be 'enforced' or 'measured'")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise SettingsError("MOORAGE_TLS_CERT_FILE and MOORAGE_TLS_KEY_FILE go together: set both or neither")
        methods = [m.strip() for m in self.domain_verify_methods.split(",") if m.strip()]
        if not methods or any(m not in {"http", "dns"} for m in methods):
            raise SettingsError("MOORAGE_DOMAIN_VERIFY_METHODS must list 'http' and/or 'dns', comma-separated")
        if self.inference_budget_period not in {"day", "month"}:
            raise SettingsError("MOORAGE_INFERENCE_BUDGET_PERIOD must be 'day' or 'month'")
        try:
            _ = self.domain_networks
        except ValueError as exc:
            raise SettingsError(f"MOORAGE_DOMAIN_INTERNAL_NETWORKS must be comma-separated CIDRs: {exc}") from None
        try:
            _ = self.git_networks  # parsed here so a bad value stops startup, not the first git fetch
        except ValueError as exc:
            raise SettingsError(f"MOORAGE_GIT_ALLOWED_NETWORKS must be comma-separated CIDRs: {exc}") from None
        if self.build_ca_bundle:  # read here so a bad file stops startup, not the first build
            from runtime.ca_bundle import CaBundleError, combined

            try:
                combined(Path(self.build_ca_bundle))
            except CaBundleError as exc:
                raise SettingsError(str(exc)) from None
        relative = [x for x in self._git_file_prefix_entries() if not x.startswith("/")]
        if relative:
            raise SettingsError(f"MOORAGE_GIT_FILE_PREFIXES must be absolute directories, got {relative[0]!r}")
        from control.domain.image_refs import BadReference, parse

        try:
            [parse(entry) for entry in self.allowed_images]
        except BadReference as exc:
            raise SettingsError(f"MOORAGE_BUILD_ALLOWED_IMAGES: {exc}") from None
        if min(self.registration_window_s, self.recovery_window_s, self.recovery_lock_s) < 1:
            raise SettingsError(
                "MOORAGE_REGISTRATION_WINDOW_S, MOORAGE_RECOVERY_WINDOW_S and MOORAGE_RECOVERY_LOCK_S must be at least 1"
            )
        if not 1 <= self.preview_ttl_default_s <= self.preview_ttl_max_s:
            raise SettingsError("MOORAGE_PREVIEW_TTL_DEFAULT_S must be at least 1 and at most MOORAGE_PREVIEW_TTL_MAX_S")
        for item in fields(self):  # counts, sizes and durations: a negative one is always a mistake
            value = getattr(self, item.name)
            if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
                raise SettingsError(f"MOORAGE_{item.name.upper()} must not be negative, got {value}")

    @property
    def domain_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(x.strip(), strict=False) for x in self.domain_internal_networks.split(",") if x.strip())

    @property
    def git_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(x.strip(), strict=False) for x in self.git_allowed_networks.split(",") if x.strip())

    def _git_file_prefix_entries(self) -> list[str]:
        return [x.strip() for x in self.git_file_prefixes.split(",") if x.strip()]

    @property
    def ca_bundle_file(self) -> Path | None:
        """Where the bundle containers get is kept: certificates only, the host's roots first."""
        return self.data_dir / "ca" / "ca-certificates.crt" if self.build_ca_bundle else None

    @property
    def git_file_roots(self) -> tuple[Path, ...]:
        """The file:// prefixes with their own symlinks resolved, as paths are compared to them."""
        return tuple(Path(os.path.realpath(x)) for x in self._git_file_prefix_entries())

    @property
    def allowed_images(self) -> tuple[str, ...]:
        return tuple(x.strip() for x in self.build_allowed_images.split(",") if x.strip())

    @property
    def environment_image_list(self) -> tuple[str, ...]:
        """The images an environment may name: the operator's list, or the build base images
        that are not database images."""
        if self.environment_images.strip():
            return tuple(x.strip() for x in self.environment_images.split(",") if x.strip())
        databases = ("moorage/postgres", "moorage/redis")
        return tuple(image for image in self.allowed_images if not image.startswith(databases))

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def with_overrides(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for name, kind in _env_fields().items():
            raw = env.get(f"MOORAGE_{name.upper()}")
            if raw is None:
                continue
            values[name] = _parse(name, raw, kind)
        return cls(**values)  # type: ignore[arg-type]


def _env_fields() -> dict[str, type]:
    """Every field is a MOORAGE_<NAME> variable; its annotation says how to parse it."""
    hints = get_type_hints(Settings)
    kinds: dict[str, type] = {}
    for item in fields(Settings):
        kind = hints[item.name]
        args = [a for a in get_args(kind) if a is not type(None)]  # `Path | None` parses as Path
        kinds[item.name] = args[0] if args else kind
    return kinds


def _parse(name: str, raw: str, kind: type) -> object:
    var = f"MOORAGE_{name.upper()}"
    if kind is bool:
        lowered = raw.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise SettingsError(f"{var} must be true or false, got {raw!r}")
    if kind is int:
        try:
            return int(raw)
        except ValueError:
            raise SettingsError(f"{var} must be an integer, got {raw!r}") from None
    if kind is float:
        try:
            return float(raw)
        except ValueError:
            raise SettingsError(f"{var} must be a number, got {raw!r}") from None
    if kind is Path:
        return Path(raw).expanduser()
    return raw
