"""Images (streamed build, inspect, prune) and tenant networks against the real engine."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from runtime.containers import Containers
from runtime.docker_engine import DockerEngine
from runtime.images import BuildError, Images
from runtime.networks import TenantNetworks
from tests.runtime.helpers import RUN_ID, RUN_LABEL, run, spec, tenant_name

pytestmark = pytest.mark.docker


def context(tmp_path: Path, dockerfile: str) -> Path:
    (tmp_path / "Dockerfile").write_text(dockerfile)
    (tmp_path / "hello.txt").write_text("hi\n")
    return tmp_path


def test_engine_health_lists_runsc(engine: DockerEngine) -> None:
    health = engine.health()
    assert health.ok, health.error
    assert "runsc" in health.runtimes and health.version


def test_build_streams_lines_labels_and_prunes(
    images: Images, containers: Containers, networks: TenantNetworks, tmp_path: Path
) -> None:
    tenant = tenant_name("img")
    ctx = context(
        tmp_path,
        "FROM moorage/busybox:latest\nCOPY hello.txt /hello.txt\n"
        f'LABEL {RUN_LABEL}={RUN_ID}\nRUN echo built-step-output\nCMD ["cat", "/hello.txt"]\n',
    )
    lines: list[str] = []
    used = images.build(ctx, f"moorage-test/{tenant}:used", tenant=tenant, app="api", release="r1", on_line=lines.append)
    assert any("built-step-output" in line for line in lines), lines
    assert any(line.startswith("Step 1/") for line in lines)
    info = images.inspect(used.tag)
    assert info.id == used.image_id
    assert info.labels["moorage.tenant"] == tenant and info.labels["moorage.release"] == "r1"

    # A second, different image nothing runs; only it is pruned.
    (ctx / "hello.txt").write_text("other\n")
    unused = images.build(ctx, f"moorage-test/{tenant}:unused", tenant=tenant, app="api", release="r2")
    net = networks.ensure(tenant).name
    c = run(containers, spec(tenant, "api", net, image=used.tag, command=["sleep", "60"]))
    try:
        removed = images.prune_unreferenced(tenant=tenant)
        assert removed == [unused.image_id]
        assert images.exists(used.tag) and not images.exists(unused.tag)
        assert images.exists("moorage/busybox:latest"), "base images are never pruned"
    finally:
        containers.remove(c.id, force=True)
        networks.remove(tenant)
        images.remove(used.tag, force=True)


def test_failed_build_raises_with_log(images: Images, tmp_path: Path) -> None:
    ctx = context(tmp_path, f"FROM moorage/busybox:latest\nLABEL {RUN_LABEL}={RUN_ID}\nRUN echo about-to-fail && false\n")
    with pytest.raises(BuildError) as err:
        images.build(ctx, f"moorage-test/{tenant_name('bad')}:x", tenant=tenant_name("bad"), app="api")
    assert any("about-to-fail" in line for line in err.value.log)
    assert images.guard.breaker.state.value == "closed", "a tenant's broken build is not an outage"


def test_tenant_network_is_idempotent_and_labelled(networks: TenantNetworks, engine: DockerEngine) -> None:
    tenant = tenant_name("net")
    first = networks.ensure(tenant)
    try:
        assert networks.ensure(tenant) == first
        raw = engine.client.networks.get(first.id).attrs
        assert raw["Driver"] == "bridge"
        assert raw["Labels"]["moorage.tenant"] == tenant
        assert first.name == f"moorage-t-{tenant}"
    finally:
        assert networks.remove(tenant)
    assert networks.get(tenant) is None
    assert not networks.remove(tenant)


def test_concurrent_ensure_makes_one_network(networks: TenantNetworks, engine: DockerEngine) -> None:
    # Regression: a deploy and a database job of a new tenant raced and made two networks.
    tenant = tenant_name("race")
    with ThreadPoolExecutor(max_workers=6) as pool:
        made = list(pool.map(lambda _: networks.ensure(tenant).id, range(6)))
    try:
        same_name = [
            n for n in engine.client.networks.list(names=[networks.name_for(tenant)]) if n.name == networks.name_for(tenant)
        ]
        assert len(same_name) == 1 and set(made) == {same_name[0].id}
    finally:
        for net in engine.client.networks.list(names=[networks.name_for(tenant)]):
            net.remove()


def test_containerised_traefik_is_attached_to_tenant_networks(engine: DockerEngine) -> None:
    """With `traefik_container` set, ensure() attaches it (a stand-in sleeper plays Traefik)."""
    from dataclasses import replace

    from runtime.docker_engine import DockerEngine as Engine
    from runtime.resilience import BreakerRegistry

    stand_in = f"moorage-test-{RUN_ID}-traefik-stand-in"
    c = engine.client.containers.run(
        "moorage/busybox:latest", ["sleep", "60"], name=stand_in, detach=True, labels={RUN_LABEL: RUN_ID}, runtime="runsc"
    )
    eng = Engine(replace(engine.settings, traefik_container=stand_in), client=engine.client, registry=BreakerRegistry())
    nets = TenantNetworks(eng)
    tenant = tenant_name("tfk")
    try:
        net = nets.ensure(tenant)
        nets.ensure(tenant)  # idempotent: attaching twice is fine
        c.reload()
        assert net.name in c.attrs["NetworkSettings"]["Networks"]
        assert nets.remove(tenant)  # detaches first, then removes
    finally:
        c.remove(force=True)
