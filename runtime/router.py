"""Traefik dynamic configuration through its file provider: one YAML file per app.

A route's file, router, service and middleware names come from its *key*, the app's id: unique,
never reused and free of any separator a tenant or app name may hold (`tenant--app` let tenant
`rt-v`'s app `w--app` overwrite tenant `rt-v--w`'s app `app`). The file's first line names the
control plane that wrote it, so a reconciler removes only its own orphans.

Besides apps, a route of moorage's own (`write_upstream`): one hostname to one URL, such as
`api.<base-domain>` to the control plane, so tenants' code reaches the API through Traefik's
entrypoint, the one port of the host containers may reach. Its file carries no owner line
(no reconciler takes it for an app's orphan) and is keyed by its hostname.

Files are written atomically (temp file, fsync, os.replace, fsync of the directory):
Traefik, which reloads on every change in the watched directory, only ever sees the old file
or the new one. The temp file is written in a staging directory beside the watched one (on
the same filesystem, so the rename stays atomic), not in it: Traefik answers the first event
at once but then waits out its providersThrottleDuration before it looks again, so a temp
file created in the watched directory made the rename that matters wait a whole throttle
period. Where the staging directory cannot be used, the temp file goes beside the target,
as before. Temp files end in `.tmp`, an extension Traefik ignores.
"""

from __future__ import annotations

import builtins  # `list` in a class body with a list() method names the method, not the type
import contextlib
import errno
import hashlib
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from runtime.labels import dns_label, is_dns_label
from runtime.resilience import BreakerRegistry, CircuitBreaker, Guard, RetryPolicy, default_registry, guarded
from runtime.settings import RuntimeSettings


@dataclass(frozen=True)
class Backend:
    host: str  # container IP on its tenant network (or a hostname Traefik can resolve)
    port: int
    scheme: str = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


@dataclass(frozen=True)
class AppRoute:
    tenant: str
    app: str
    backends: Sequence[Backend]
    key: str = field(kw_only=True)  # the app's id: names the file and the Traefik objects
    extra_hosts: Sequence[str] = ()  # custom domains
    health_path: str | None = None  # Traefik active health check of backends
    middlewares: Sequence[str] = field(default_factory=tuple)


@dataclass(frozen=True)
class DomainRoute:
    """A custom hostname sent to an app's service (the one its own route file defines)."""

    key: str  # the domain's id
    hostname: str
    service: str  # the app's route key
    hsts: bool = False


# A replica that has just died (or an address the route still names) would otherwise hold a
# request for the kernel's neighbour timeouts, 8 s and more on a bridge. A connect on the
# host's own bridge takes well under a millisecond, so 1 s only ever cuts off a dead backend;
# Traefik's retry, which acts only where no connection was made, then tries the next one.
DIAL_TIMEOUT = "1s"
RETRY_ATTEMPTS = 3
VERIFY_KEY = "moorage_verify"
VERIFY_PATH_RULE = r"PathRegexp(`^/\.well-known/moorage-verify/[A-Za-z0-9_-]{16,64}$`)"
HSTS_SECONDS = 31536000


# No '-', '.' or '/': a key can neither be built from names nor step out of the directory.
_ROUTE_KEY = re.compile(r"[a-z0-9][a-z0-9_]{0,99}")
_OWNER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
OWNER_LINE = "# moorage-owner: "
LEGACY_SEPARATOR = "--"  # keys of files written before routes were keyed by app id


def route_key(key: str) -> str:
    if not _ROUTE_KEY.fullmatch(key):
        raise ValueError(f"route key {key!r} must be an id (a-z, 0-9, '_'; no '-', '.' or '/')")
    return key


def retry_middleware(key: str) -> str:
    """The name of the retry middleware an app's route file defines, for its domains' routers too."""
    return f"{route_key(key)}_retry"


def _is_hostname(host: str) -> bool:
    """Strict: the name is spliced into a Traefik rule, so nothing but DNS labels gets in."""
    return len(host) <= 253 and all(is_dns_label(p) for p in host.split("."))


class Router:
    def __init__(
        self,
        settings: RuntimeSettings,
        *,
        dynamic_dir: Path | None = None,
        guard: Guard | None = None,
        registry: BreakerRegistry | None = default_registry,
    ) -> None:
        self.settings = settings
        self.dynamic_dir = Path(dynamic_dir or settings.traefik_dynamic_dir)
        # A full-file replace is idempotent: retrying a failed write is always safe.
        self.guard = guard or Guard(
            CircuitBreaker(
                "traefik-config",
                failure_threshold=settings.breaker_failure_threshold,
                reset_timeout=settings.breaker_reset_timeout,
                registry=registry,
                is_failure=lambda e: isinstance(e, OSError),
            ),
            RetryPolicy(is_retryable=lambda e, _: isinstance(e, OSError)),
            is_failure=lambda e, _: isinstance(e, OSError),
        )

    def hostname(self, tenant: str, app: str) -> str:
        return f"{dns_label(app, 'app')}.{dns_label(tenant, 'tenant')}.{self.settings.base_domain}"

    def path_for(self, key: str) -> Path:
        return self.dynamic_dir / f"{route_key(key)}.yml"

    def legacy_path_for(self, tenant: str, app: str) -> Path:
        """Where code before id keys wrote this app's route (`tenant--app.yml`)."""
        return self.dynamic_dir / f"{dns_label(tenant, 'tenant')}{LEGACY_SEPARATOR}{dns_label(app, 'app')}.yml"

    def render(self, route: AppRoute) -> dict[str, Any]:
        if not route.backends:
            raise ValueError("a route needs at least one backend")
        hosts = [self.hostname(route.tenant, route.app), *route.extra_hosts]
        for h in hosts:
            if not _is_hostname(h):
                raise ValueError(f"invalid hostname {h!r}")
        key = route_key(route.key)
        router: dict[str, Any] = {
            "rule": " || ".join(f"Host(`{h}`)" for h in hosts),
            "service": key,
            "entryPoints": list(self.settings.traefik_entrypoints),
            "middlewares": [retry_middleware(key), *route.middlewares],
        }
        lb: dict[str, Any] = {
            "servers": [{"url": b.url} for b in route.backends],
            "passHostHeader": True,
            "serversTransport": key,
        }
        if route.health_path:
            # A replica that dies leaves the balance within a second or two, before the
            # reconciler has even noticed it.
            lb["healthCheck"] = {"path": route.health_path, "interval": "1s", "timeout": "1s"}
        return {
            "http": {
                "routers": {key: router, **self._secure_twin(key, router)},
                "services": {key: {"loadBalancer": lb}},
                "middlewares": {retry_middleware(key): {"retry": {"attempts": RETRY_ATTEMPTS}}},
                "serversTransports": {key: {"forwardingTimeouts": {"dialTimeout": DIAL_TIMEOUT}}},
            }
        }

    def _secure_twin(self, key: str, router: dict[str, Any]) -> dict[str, Any]:
        """The same router on the HTTPS entrypoint, where the platform's hostnames have TLS."""
        tls: dict[str, Any] | None = None
        if self.settings.tls_cert_resolver:
            tls = {"certResolver": self.settings.tls_cert_resolver}
        elif self.settings.tls_wildcard:
            tls = {}  # Traefik's default certificate: the operator's wildcard
        if tls is None:
            return {}
        twin = {**router, "entryPoints": [self.settings.websecure_entrypoint], "tls": tls}
        if "middlewares" in router:  # a list of its own: a shared one would be written as a YAML alias
            twin["middlewares"] = list(router["middlewares"])
        return {f"{key}_tls": twin}

    @staticmethod
    def render_platform_tls(cert_file: Path, key_file: Path) -> dict[str, Any]:
        """The operator's certificate (a wildcard for the base domain) as Traefik's default."""
        pair = {"certFile": str(cert_file), "keyFile": str(key_file)}
        return {"tls": {"certificates": [pair], "stores": {"default": {"defaultCertificate": pair}}}}

    def render_domain(self, route: DomainRoute, *, cert_resolver: str | None, web: str, websecure: str) -> dict[str, Any]:
        """With a certificate resolver: HTTPS on ``websecure`` (the resolver obtains and renews
        the certificate) and a permanent redirect on ``web``, HSTS if asked. Without one: the
        name on ``web`` only, as the platform's own hostnames."""
        if not _is_hostname(route.hostname):
            raise ValueError(f"invalid hostname {route.hostname!r}")
        key, service, rule = route_key(route.key), route_key(route.service), f"Host(`{route.hostname}`)"
        retry = retry_middleware(route.service)  # defined in the app's own route file
        if cert_resolver is None:
            return {"http": {"routers": {key: {"rule": rule, "service": service, "entryPoints": [web], "middlewares": [retry]}}}}
        secure: dict[str, Any] = {
            "rule": rule,
            "service": service,
            "entryPoints": [websecure],
            "tls": {"certResolver": cert_resolver, "domains": [{"main": route.hostname}]},
            "middlewares": [retry],
        }
        middlewares: dict[str, Any] = {f"{key}_https": {"redirectScheme": {"scheme": "https", "permanent": True}}}
        if route.hsts:
            middlewares[f"{key}_hsts"] = {"headers": {"stsSeconds": HSTS_SECONDS}}
            secure["middlewares"].append(f"{key}_hsts")
        redirect = {"rule": rule, "service": service, "entryPoints": [web], "middlewares": [f"{key}_https"]}
        return {"http": {"routers": {key: secure, f"{key}_http": redirect}, "middlewares": middlewares}}

    def render_verify(self, upstream_url: str, *, web: str) -> dict[str, Any]:
        """Ownership tokens: on any hostname, ``/.well-known/moorage-verify/<token>`` goes to the
        control plane, which answers only the token of a domain waiting for its proof."""
        router = {"rule": VERIFY_PATH_RULE, "service": VERIFY_KEY, "entryPoints": [web], "priority": 10_000}
        service = {"loadBalancer": {"servers": [{"url": upstream_url}], "passHostHeader": True}}
        return {"http": {"routers": {VERIFY_KEY: router}, "services": {VERIFY_KEY: service}}}

    @guarded(idempotent=True)
    def write_doc(self, key: str, doc: dict[str, Any], owner: str) -> Path:
        target = self.path_for(key)
        atomic_write(target, self.file_body(doc, owner))
        return target

    @staticmethod
    def file_body(doc: dict[str, Any], owner: str | None = None) -> str:
        body = yaml.safe_dump(doc, sort_keys=True)
        if owner is None:
            return body
        if not _OWNER.fullmatch(owner):
            raise ValueError(f"route owner {owner!r} is not a plain identifier")
        return f"{OWNER_LINE}{owner}\n{body}"

    @guarded(idempotent=True)
    def write(self, route: AppRoute, owner: str | None = None) -> Path:
        """Create or replace the app's route file, atomically."""
        target = self.path_for(route.key)
        atomic_write(target, self.file_body(self.render(route), owner))
        return target

    @staticmethod
    def upstream_key(hostname: str) -> str:
        return f"upstream_{hashlib.sha256(hostname.encode()).hexdigest()[:16]}"

    def render_upstream(self, hostname: str, url: str) -> dict[str, Any]:
        if not _is_hostname(hostname):
            raise ValueError(f"invalid hostname {hostname!r}")
        key = self.upstream_key(hostname)
        router: dict[str, Any] = {
            "rule": f"Host(`{hostname}`)",
            "service": key,
            "entryPoints": list(self.settings.traefik_entrypoints),
        }
        lb = {"servers": [{"url": url}], "passHostHeader": True}
        return {"http": {"routers": {key: router, **self._secure_twin(key, router)}, "services": {key: {"loadBalancer": lb}}}}

    @guarded(idempotent=True)
    def write_upstream(self, hostname: str, url: str) -> Path:
        """Route ``hostname`` to ``url`` (a service of moorage's own), unless it already does.
        The directory is never made here: Traefik watches the one host setup made, and making
        it would hide a host that lacks it (FileNotFoundError instead)."""
        target = self.path_for(self.upstream_key(hostname))
        if not self.dynamic_dir.is_dir():
            raise FileNotFoundError(f"no route directory {self.dynamic_dir} (Traefik's file provider watches it)")
        body = self.file_body(self.render_upstream(hostname, url))
        with contextlib.suppress(FileNotFoundError):
            if target.read_text() == body:
                return target  # every Traefik reload is one too many for a file that did not change
        atomic_write(target, body)
        return target

    @guarded(idempotent=True)
    def remove_upstream(self, hostname: str, url: str) -> bool:
        """Remove the route of ``hostname`` if it still sends it to ``url`` (not if another
        server has routed it to itself since)."""
        target = self.path_for(self.upstream_key(hostname))
        try:
            if target.read_text() != self.file_body(self.render_upstream(hostname, url)):
                return False
        except FileNotFoundError:
            return False
        return self._unlink(target)

    @guarded(idempotent=True)
    def remove(self, key: str) -> bool:
        return self._unlink(self.path_for(key))

    def remove_legacy(self, tenant: str, app: str) -> bool:
        return self.remove_legacy_stem(self.legacy_path_for(tenant, app).stem)

    @guarded(idempotent=True)
    def remove_legacy_stem(self, stem: str) -> bool:
        """Remove one of the files `legacy()` lists (its name is never built from input)."""
        if LEGACY_SEPARATOR not in stem or "/" in stem or stem.startswith("."):
            raise ValueError(f"{stem!r} is not a legacy route file")
        return self._unlink(self.dynamic_dir / f"{stem}.yml")

    def _unlink(self, path: Path) -> bool:
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        _fsync_dir(self.dynamic_dir)
        return True

    @guarded(idempotent=True)
    def list(self) -> list[str]:
        """Keys of the id-keyed routes on disk."""
        return sorted(p.stem for p in self.dynamic_dir.glob("*.yml") if _ROUTE_KEY.fullmatch(p.stem))

    @guarded(idempotent=True)
    def owned(self, owner: str) -> builtins.list[str]:
        """Keys of the routes on disk that `owner` wrote (first line), for the reconciler."""
        mark = f"{OWNER_LINE}{owner}\n"
        keys = []
        for key in self.list():
            try:
                with self.path_for(key).open() as f:
                    first = f.readline()
            except FileNotFoundError:  # removed meanwhile
                continue
            if first == mark:
                keys.append(key)
        return keys

    @guarded(idempotent=True)
    def legacy(self) -> builtins.list[str]:
        """Stems (`tenant--app`) of route files written before id keys."""
        return sorted(p.stem for p in self.dynamic_dir.glob("*.yml") if LEGACY_SEPARATOR in p.stem)


def atomic_write(target: Path, body: str, mode: int = 0o644) -> None:
    """Replace ``target`` with ``body`` so that readers see the old file or the new one; the
    watched directory sees one event (the rename) when the staging directory can be used."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_dir(target.parent)
    try:
        _replace(staging or target.parent, target, body, mode)
    except OSError as exc:
        if staging is None or exc.errno != errno.EXDEV:  # EXDEV: the staging dir is on another filesystem
            raise
        _replace(target.parent, target, body, mode)
    _fsync_dir(target.parent)


def staging_dir(directory: Path) -> Path | None:
    """``.<name>.staging`` beside ``directory``, made on first use; None when it cannot be."""
    staging = directory.parent / f".{directory.name}.staging"
    try:
        staging.mkdir(mode=0o700, exist_ok=True)
    except OSError:
        return None
    return staging


def _replace(temp_dir: Path, target: Path, body: str, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=temp_dir, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def legacy_owners(stem: str) -> list[tuple[str, str]]:
    """Every (tenant, app) a legacy `tenant--app` stem could stand for: names may hold `--`."""
    parts = stem.split(LEGACY_SEPARATOR)
    return [(LEGACY_SEPARATOR.join(parts[:i]), LEGACY_SEPARATOR.join(parts[i:])) for i in range(1, len(parts))]
