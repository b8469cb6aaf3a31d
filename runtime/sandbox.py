"""Sandbox policy: which runtime a container gets, and the hardening every container gets.

Pure functions from a `ContainerSpec` + the tenant's `SandboxPolicy` to docker SDK
`containers.create` keyword arguments, so the rules are testable without an engine and
`runtime/containers.py` cannot create a container that skipped them.

Every container made here names its runtime (``runtime`` is always set), so it gets what it
asks for whatever dockerd's ``default-runtime``: deploy/host-setup.sh makes that runsc for
the containers moorage does not create itself, the classic builder's ``RUN`` steps.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from runtime import ca_bundle
from runtime.labels import moorage_labels
from runtime.settings import Limits, RuntimeSettings

# Sockets that hand out root on the host; never reachable from a container.
HOST_CONTROL_SOCKETS = (
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/run/containerd/containerd.sock",
    "/var/run/containerd/containerd.sock",
)


class SandboxPolicyError(ValueError):
    """The spec asks for something the sandbox policy forbids (maps to a 4xx, never retried)."""


@dataclass(frozen=True)
class SandboxPolicy:
    """Per-tenant decisions the control plane makes; the defaults are the safe ones."""

    allow_unsandboxed: bool = False  # runc etc.: an operator's explicit per-tenant choice
    allow_host_binds: bool = False
    cap_add: tuple[str, ...] = ()
    read_only_rootfs: bool = False
    limits: Limits | None = None  # None = settings.default_limits


@dataclass(frozen=True)
class Mount:
    source: str  # a named volume, or an absolute host path (a bind: policy must allow it)
    target: str
    read_only: bool = False

    @property
    def is_bind(self) -> bool:
        return self.source.startswith("/")


@dataclass(frozen=True)
class ContainerSpec:
    tenant: str
    app: str
    image: str
    network: str  # the tenant's network (runtime.networks.TenantNetworks.name_for)
    release: str | None = None
    role: str = "app"
    name: str | None = None
    command: Sequence[str] | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    mounts: tuple[Mount, ...] = ()
    runtime: str | None = None  # None = settings.sandbox_runtime
    aliases: tuple[str, ...] = ()  # extra DNS names on the tenant network (the app name is one)
    # Whether the app name is one of its DNS names: not for a one-off run, which must never
    # answer for the app it was started from.
    app_alias: bool = True
    labels: Mapping[str, str] = field(default_factory=dict)
    user: str | None = None
    working_dir: str | None = None
    restart: str = "no"  # the reconciler restarts; "unless-stopped" for long-lived services


def resolve_runtime(requested: str | None, policy: SandboxPolicy, settings: RuntimeSettings) -> str:
    runtime = requested or settings.sandbox_runtime
    if runtime not in settings.runtime_allowlist | {settings.sandbox_runtime}:
        raise SandboxPolicyError(f"runtime {runtime!r} is not in the allowlist {sorted(settings.runtime_allowlist)}")
    if runtime not in settings.sandboxed_runtimes and not policy.allow_unsandboxed:
        raise SandboxPolicyError(
            f"runtime {runtime!r} does not sandbox the host kernel; it needs "
            "an operator's allow_unsandboxed policy for this tenant"
        )
    return runtime


def exposes_host_socket(host_path: str, settings: RuntimeSettings) -> bool:
    """True when binding `host_path` would expose a control socket: the socket itself or any
    directory above it (binding /run or / exposes it too). Symlinks are resolved."""
    src = os.path.realpath(host_path).rstrip("/") or "/"
    sockets = {settings.docker_socket_path, *HOST_CONTROL_SOCKETS}
    return any(
        src == sock or src == "/" or sock.startswith(src + "/") for sock in sockets | {os.path.realpath(s) for s in sockets}
    )


def check_mounts(mounts: Sequence[Mount], policy: SandboxPolicy, settings: RuntimeSettings) -> None:
    for m in mounts:
        if not m.target.startswith("/"):
            raise SandboxPolicyError(f"mount target {m.target!r} must be an absolute path")
        if not m.is_bind:
            continue
        if exposes_host_socket(m.source, settings):
            raise SandboxPolicyError(
                f"refusing to mount {m.source!r}: it exposes the Docker/containerd socket (root on the host)"
            )
        if not policy.allow_host_binds:
            raise SandboxPolicyError(f"host bind {m.source!r} needs allow_host_binds; use a volume")


def check_caps(policy: SandboxPolicy, settings: RuntimeSettings) -> list[str]:
    caps = [c.upper().removeprefix("CAP_") for c in policy.cap_add]
    forbidden = sorted(set(caps) - settings.allowed_cap_add)
    if forbidden:
        raise SandboxPolicyError(f"capabilities not allowed by the operator: {forbidden}")
    return caps


def create_kwargs(spec: ContainerSpec, policy: SandboxPolicy, settings: RuntimeSettings) -> dict[str, Any]:
    """Keyword arguments for `docker.DockerClient.containers.create`, hardened."""
    runtime = resolve_runtime(spec.runtime, policy, settings)
    check_mounts(spec.mounts, policy, settings)
    cap_add = check_caps(policy, settings)
    limits = policy.limits or settings.default_limits
    labels = moorage_labels(spec.tenant, spec.app, spec.release, spec.role, spec.labels)
    kwargs: dict[str, Any] = {
        "image": spec.image,
        "command": list(spec.command) if spec.command is not None else None,
        "name": spec.name,
        "hostname": spec.app,
        "environment": {**ca_bundle.container_env(settings.ca_bundle), **spec.env},  # the app's own vars win
        "labels": labels,
        "runtime": runtime,
        "mem_limit": limits.memory_bytes,
        "memswap_limit": limits.memory_bytes,  # no swap beyond the memory limit
        "nano_cpus": limits.nano_cpus,
        "pids_limit": limits.pids,
        "cap_drop": ["ALL"],
        "cap_add": cap_add or None,
        "security_opt": ["no-new-privileges:true"],
        "read_only": policy.read_only_rootfs,
        "network": spec.network,
        "restart_policy": {"Name": spec.restart},
        # Bounded logs: a chatty app cannot fill the host disk.
        "log_config": {"Type": "json-file", "Config": {"max-size": "10m", "max-file": "3"}},
        "volumes": {m.source: {"bind": m.target, "mode": "ro" if m.read_only else "rw"} for m in spec.mounts} or None,
    }
    if settings.ca_bundle is not None:  # moorage's own certificate file, not a tenant's bind
        kwargs["volumes"] = {**(kwargs["volumes"] or {}), str(settings.ca_bundle): {"bind": ca_bundle.TARGET, "mode": "ro"}}
    if policy.read_only_rootfs:  # apps still need a scratch dir; bounded and noexec
        kwargs["tmpfs"] = {"/tmp": f"rw,noexec,nosuid,size={limits.tmpfs_bytes}"}
    if spec.user:
        kwargs["user"] = spec.user
    if spec.working_dir:
        kwargs["working_dir"] = spec.working_dir
    return {k: v for k, v in kwargs.items() if v is not None}
