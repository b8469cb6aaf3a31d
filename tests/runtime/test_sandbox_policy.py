"""Sandbox rules: the Docker socket is never mounted; runc only with an explicit policy flag.
Pure rules first (no Docker), then the same refusals through the real engine."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runtime.containers import Containers
from runtime.networks import TenantNetworks
from runtime.sandbox import (
    ContainerSpec,
    Mount,
    SandboxPolicy,
    SandboxPolicyError,
    create_kwargs,
    exposes_host_socket,
)
from runtime.settings import RuntimeSettings
from tests.runtime.helpers import RUN_LABEL, run, spec, tenant_name

SETTINGS = RuntimeSettings()


def make(**kw: object) -> ContainerSpec:
    base: dict[str, object] = dict(tenant="acme", app="web", image="moorage/busybox:latest", network="moorage-t-acme")
    base.update(kw)
    return ContainerSpec(**base)  # type: ignore[arg-type]


def test_defaults_are_sandboxed_and_hardened() -> None:
    kw = create_kwargs(make(release="r7"), SandboxPolicy(), SETTINGS)
    assert kw["runtime"] == "runsc"
    assert kw["cap_drop"] == ["ALL"] and "cap_add" not in kw
    assert kw["security_opt"] == ["no-new-privileges:true"]
    assert kw["mem_limit"] == kw["memswap_limit"] == SETTINGS.default_limits.memory_bytes
    assert kw["pids_limit"] == SETTINGS.default_limits.pids
    assert kw["nano_cpus"] == SETTINGS.default_limits.nano_cpus
    assert kw["labels"] == {
        "moorage.managed": "true",
        "moorage.tenant": "acme",
        "moorage.app": "web",
        "moorage.release": "r7",
        "moorage.role": "app",
    }
    assert "privileged" not in kw and "volumes" not in kw


@pytest.mark.parametrize(
    "source",
    [
        "/var/run/docker.sock",
        "/run/docker.sock",
        "/var/run",
        "/run",
        "/var",
        "/",
        "/run/containerd",
        "/run/containerd/containerd.sock",
        "/var/run/../run/docker.sock",
        "/var/run/",
    ],
)
def test_docker_socket_and_its_parents_are_refused(source: str) -> None:
    policy = SandboxPolicy(allow_host_binds=True)  # even an operator-allowed bind cannot
    with pytest.raises(SandboxPolicyError, match="socket"):
        create_kwargs(make(mounts=(Mount(source, "/x"),)), policy, SETTINGS)


def test_symlink_to_socket_is_refused(tmp_path: Path) -> None:
    link = tmp_path / "innocent"
    os.symlink("/var/run", link)
    assert exposes_host_socket(str(link), SETTINGS)
    assert exposes_host_socket(str(link / "docker.sock"), SETTINGS)


def test_binds_need_policy_and_volumes_are_fine() -> None:
    with pytest.raises(SandboxPolicyError, match="allow_host_binds"):
        create_kwargs(make(mounts=(Mount("/srv/data", "/data"),)), SandboxPolicy(), SETTINGS)
    kw = create_kwargs(
        make(mounts=(Mount("/srv/data", "/data", read_only=True),)), SandboxPolicy(allow_host_binds=True), SETTINGS
    )
    assert kw["volumes"] == {"/srv/data": {"bind": "/data", "mode": "ro"}}
    kw = create_kwargs(make(mounts=(Mount("pgdata", "/var/lib/postgresql"),)), SandboxPolicy(), SETTINGS)
    assert kw["volumes"] == {"pgdata": {"bind": "/var/lib/postgresql", "mode": "rw"}}


def test_runc_only_when_policy_allows() -> None:
    with pytest.raises(SandboxPolicyError, match="allow_unsandboxed"):
        create_kwargs(make(runtime="runc"), SandboxPolicy(), SETTINGS)
    assert create_kwargs(make(runtime="runc"), SandboxPolicy(allow_unsandboxed=True), SETTINGS)["runtime"] == "runc"
    with pytest.raises(SandboxPolicyError, match="allowlist"):
        create_kwargs(make(runtime="kata"), SandboxPolicy(allow_unsandboxed=True), SETTINGS)


def test_unsafe_caps_and_reserved_labels_refused() -> None:
    with pytest.raises(SandboxPolicyError, match="SYS_ADMIN"):
        create_kwargs(make(), SandboxPolicy(cap_add=("CAP_SYS_ADMIN",)), SETTINGS)
    assert create_kwargs(make(), SandboxPolicy(cap_add=("cap_net_bind_service",)), SETTINGS)["cap_add"] == ["NET_BIND_SERVICE"]
    with pytest.raises(ValueError, match="reserved"):
        create_kwargs(make(labels={"moorage.tenant": "victim"}), SandboxPolicy(), SETTINGS)
    with pytest.raises(ValueError, match="DNS label"):
        create_kwargs(make(tenant="Acme_Corp"), SandboxPolicy(), SETTINGS)


@pytest.mark.docker
def test_engine_refusals_create_nothing(containers: Containers, networks: TenantNetworks) -> None:
    tenant = tenant_name("pol")
    net = networks.ensure(tenant).name
    try:
        with pytest.raises(SandboxPolicyError):
            containers.create(
                spec(tenant, "sock", net, mounts=(Mount("/var/run/docker.sock", "/var/run/docker.sock"),)),
                SandboxPolicy(allow_host_binds=True),
            )
        with pytest.raises(SandboxPolicyError):
            containers.create(spec(tenant, "runc", net, runtime="runc"))
        assert containers.find(tenant=tenant) == []
        # Sandbox policy errors are the caller's, not the engine's: the breaker stays closed.
        assert containers.guard.breaker.state.value == "closed"
        # With the operator's flag, runc is used (and is visibly not gVisor).
        info = run(
            containers, spec(tenant, "runc", net, runtime="runc", command=["sleep", "60"]), SandboxPolicy(allow_unsandboxed=True)
        )
        assert containers.inspect(info.id).attrs["HostConfig"]["Runtime"] == "runc"
        assert info.labels[RUN_LABEL]
        assert "gVisor" not in containers.exec(info.id, ["dmesg"]).output
    finally:
        for c in containers.find(tenant=tenant):
            containers.remove(c.id, force=True)
        networks.remove(tenant)
