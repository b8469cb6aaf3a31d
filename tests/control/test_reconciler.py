"""The reconciler on the runtime port's fake: what it brings back, what it removes, and what it
leaves alone (tests/e2e and tests/security run it on Docker)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from control.jobs.runtime_port import BuildLayer, Route
from control.settings import Settings
from tests.control.deploy_world import DeployWorld, world_on


@pytest.fixture
def world(settings: Settings) -> Iterator[DeployWorld]:
    yield from world_on(settings.with_overrides(swap_drain_ms=0))


def test_a_control_plane_that_never_started_anything_does_not_call_the_runtime(world: DeployWorld) -> None:
    report = world.reconciler.run_once()
    assert report.skipped
    assert world.runtime.calls == ["ever_started_anything"]


def test_a_container_stopped_behind_its_back_is_restarted_and_its_route_follows_its_address(world: DeployWorld) -> None:
    world.deploy()
    [container] = world.running()
    old_ip = container.ip
    world.runtime.stop_behind_our_back(container.id)
    report = world.reconciler.run_once()
    assert not report.errors, report.errors
    assert world.running() == [container]  # the same container, started again
    assert container.ip != old_ip and world.serving() == container
    assert any(action.startswith("restarted acme/web") for action in report.actions)


def test_a_missing_container_is_recreated_from_its_release_with_the_env(world: DeployWorld) -> None:
    world.set_env("GREETING", "hello")
    deployment_id = world.deploy()
    [gone] = world.running()
    world.runtime.remove(gone.id)
    report = world.reconciler.run_once()
    assert not report.errors, report.errors
    [back] = world.running()
    release = world.release_of(deployment_id)
    assert release is not None and (back.image, back.release) == (release.image_id, "v1")
    assert back.env == {"GREETING": "hello", "PORT": "8080"}
    assert world.current() == (release, back.id) and world.serving() == back


def test_orphans_go_and_what_a_live_app_owns_stays(world: DeployWorld) -> None:
    world.deploy()
    [live] = world.running()
    live_route = world.route()
    orphan = world.runtime.start_app(
        tenant="acme", app="gone", release="v4", image=live.image, env={"PORT": "8080"}, name="moorage-acme-gone-dep_gone"
    )
    world.runtime.write_route(Route("app_gone", "acme", "gone", orphan.address(), 8080, "v4"))
    world.runtime.legacy |= {"acme--gone", "acme--web", "stranger--app"}
    report = world.reconciler.run_once()
    assert not report.errors, report.errors
    assert world.runtime.inspect(orphan.id) is None
    assert world.runtime.owned_routes() == [world.app.id]
    assert world.running() == [live]
    # A deleted app's old-style file goes; a live app's is replaced by its converge; another
    # installation's tenant's file is not ours to touch.
    assert world.runtime.legacy == {"stranger--app"}
    assert world.route() == live_route


def test_an_app_with_a_deployment_in_flight_is_left_to_its_swap(world: DeployWorld) -> None:
    world.deploy()
    [container] = world.running()
    world.runtime.stop_behind_our_back(container.id)
    world.upload()  # queued: the swap will own the app
    report = world.reconciler.run_once()
    assert not report.errors, report.errors
    assert world.running() == []  # not restarted under the swap's feet


# -- what deletes leave behind, and what old releases hold -----------------------------------
def _images(world: DeployWorld) -> set[str]:
    return {image.id for image in world.runtime.tenant_images(world.tenant.id)}


@pytest.fixture
def keeping_two(settings: Settings) -> Iterator[DeployWorld]:
    yield from world_on(settings.with_overrides(swap_drain_ms=0, kept_releases=2))


def test_images_past_the_kept_releases_go_and_the_current_and_in_flight_ones_stay(keeping_two: DeployWorld) -> None:
    world = keeping_two
    deployments = [world.deploy() for _ in range(4)]
    images = [world.release_of(dep).image_id for dep in deployments]  # type: ignore[union-attr]
    assert _images(world) == set(images)
    report = world.reconciler.run_once()
    assert not report.errors, report.errors
    assert _images(world) == set(images[2:]), "the two newest releases keep their images"

    # A rollback to v3 makes v5 from v3's image; v4's image is still among the two newest.
    world.roll_back_to(world.release_of(deployments[2]))  # type: ignore[arg-type]
    world.run_next()
    world.reconciler.run_once()
    assert _images(world) == set(images[2:])

    # A sweep between a build and its release keeps the image the deployment just built.
    in_flight = world.upload()
    swept: list[object] = []
    world.runtime.before("start_app", lambda: swept.append(world.reconciler.run_once()))
    world.run_next()
    assert world.deployment(in_flight).status == "running", world.log(in_flight)
    assert swept and not swept[0].errors  # type: ignore[attr-defined]
    assert world.release_of(in_flight).image_id in _images(world)  # type: ignore[union-attr]


def test_build_layers_go_once_old_while_their_tenant_builds_nothing_and_never_another_installations(
    settings: Settings,
) -> None:
    for world in world_on(settings.with_overrides(swap_drain_ms=0, build_layer_grace_s=60)):
        world.deploy()
        world.runtime.fail_builds()
        failed = world.deploy()
        assert world.deployment(failed).status == "failed"
        [layer] = world.runtime.layers.values()  # the steps the failed build committed
        assert layer.tenant_id == world.tenant.id
        stranger = BuildLayer("sha256:" + "ee" * 32, "ten_another_installation", 0.0)
        world.runtime.layers[stranger.id] = stranger

        report = world.reconciler.run_once()
        assert not report.errors, report.errors
        assert set(world.runtime.layers) == {layer.id, stranger.id}, "younger than the grace period: a retry reuses it"

        world.clock.advance(120)
        world.runtime.builds_succeed()
        in_flight = world.upload()
        world.reconciler.run_once()
        assert layer.id in world.runtime.layers, "its tenant has a build in flight, which may build on it"

        world.run_next()
        assert world.deployment(in_flight).status == "running"
        report = world.reconciler.run_once()
        assert f"removed build layer {layer.id[:19]} of tenant {world.tenant.id}" in report.actions
        assert set(world.runtime.layers) == {stranger.id}, "another tenant id's layer is not this plane's"
        assert world.release_of(in_flight).image_id in _images(world)  # type: ignore[union-attr]


def test_a_deleted_apps_route_goes_before_the_delete_returns_and_its_containers_and_images_right_after(
    world: DeployWorld,
) -> None:
    world.deploy()
    world.deploy()
    assert world.route() is not None and world.running() and len(_images(world)) == 2
    other = world.apps.create(world.tenant.id, "other", port=8080, health_check_path="/healthz")
    world.runtime.images["sha256:other"] = f"moorage-apps/{world.tenant.id}/other:dep_x"
    world.runtime.start_app(
        tenant="acme", app="other", release="v1", image="sha256:other", env={}, name="moorage-acme-other-dep_x"
    )

    world.apps.delete(world.tenant.id, "web")
    assert world.route() is None, "the hostname is off the router when the delete answers"
    world.teardown.drain()
    assert world.running() == [] and _images(world) == {"sha256:other"}
    assert [c.app for c in world.runtime.containers.values()] == ["other"], "another app's container stays"
    assert world.apps.get(world.tenant.id, other.id)


def test_an_app_made_again_under_a_deleted_ones_name_keeps_its_containers(world: DeployWorld) -> None:
    world.deploy()
    [old] = world.running()
    world.apps.delete(world.tenant.id, "web")
    world.app = world.apps.create(world.tenant.id, "web", port=8080, health_check_path="/healthz")
    world.deploy()  # may race the old app's teardown: it matches containers by deployment id
    world.teardown.drain()
    [new] = world.running()
    assert new.id != old.id and world.serving() == new


def test_a_deleted_tenants_network_goes_and_a_live_ones_stays(world: DeployWorld) -> None:
    world.deploy()
    world.runtime.fail_builds()
    world.deploy()
    world.runtime.builds_succeed()
    assert world.runtime.layers, "the failed build's layers"
    world.runtime.networks.add("gone-tenant")  # a tenant deleted while this control plane was down
    report = world.reconciler.run_once()
    assert not report.errors, report.errors
    assert world.runtime.owned_networks() == ["acme"]
    assert "removed orphan network of gone-tenant" in report.actions

    world.apps.delete(world.tenant.id, "web")
    world.teardown.drain()
    world.tenants.delete(world.tenant.id)
    world.teardown.drain()
    assert world.runtime.owned_networks() == [] and world.runtime.images == {} and world.runtime.layers == {}


def test_a_deleted_tenants_image_its_teardown_left_is_removed_by_the_reconciler(world: DeployWorld) -> None:
    world.deploy()
    world.runtime.images["sha256:left"] = "moorage-apps/ten_gone/web:dep_old"  # its tenant's teardown was cut short
    report = world.reconciler.run_once()
    assert not report.errors, report.errors
    assert "sha256:left" not in world.runtime.images
    assert "removed image moorage-apps/ten_gone/web:dep_old (its tenant is gone)" in report.actions
    assert len(world.runtime.tenant_images(world.tenant.id)) == 1, "a live tenant's current image stays"


# -- replicas ---------------------------------------------------------------------------------
def _scale(world: DeployWorld, replicas: int) -> None:
    world.app = world.apps.update(world.tenant.id, world.app.id, replicas=replicas)


def test_a_release_runs_in_every_replica_and_the_route_balances_over_them(world: DeployWorld) -> None:
    _scale(world, 3)
    world.deploy()
    running = world.running()
    assert len(running) == 3 and len({c.ip for c in running}) == 3
    assert {c.id for c in world.runtime.serving_all(world.app.id)} == {c.id for c in running}
    [desired] = world.releases.desired(world.app.id)
    assert {cid for cid, _ in desired.replica_containers} == {c.id for c in running}
    assert world.reconciler.run_once().actions == [], "a converged app needs nothing"


def test_a_killed_replica_is_recreated_and_rejoins_the_route(world: DeployWorld) -> None:
    _scale(world, 3)
    world.deploy()
    victim = world.running()[1]
    world.runtime.remove(victim.id)
    report = world.reconciler.run_once()
    assert not report.errors, report.errors
    running = world.running()
    assert len(running) == 3 and victim.id not in {c.id for c in running}
    assert {c.id for c in world.runtime.serving_all(world.app.id)} == {c.id for c in running}
    assert any(a.startswith("recreated acme/web (v1) as ") for a in report.actions)


def test_a_changed_replica_count_is_applied_without_a_deploy(world: DeployWorld) -> None:
    world.deploy()
    [first] = world.running()
    _scale(world, 3)
    world.reconciler.run_once()
    assert len(world.running()) == 3 and first in world.running(), "scaling up keeps the running one"
    assert len(world.runtime.serving_all(world.app.id)) == 3
    _scale(world, 1)
    report = world.reconciler.run_once()
    assert world.running() == [first] and world.runtime.serving_all(world.app.id) == [first]
    assert sum(a.startswith("removed replica") for a in report.actions) == 2
    assert world.reconciler.run_once().actions == []


def test_a_redeploy_of_replicas_switches_only_once_every_new_one_is_healthy(world: DeployWorld) -> None:
    _scale(world, 3)
    world.deploy()
    old = {c.id for c in world.running()}
    routes: list[tuple[str, ...]] = []
    world.runtime.before("stop_and_remove", lambda: routes.append(world.route().ips))  # type: ignore[union-attr]
    world.deploy()
    new = {c.id for c in world.running()}
    assert len(new) == 3 and not new & old, "every old replica replaced"
    new_ips = {c.ip for c in world.running()}
    assert routes and all(set(r) == new_ips for r in routes), "the old ones leave only once the route has all new ones"


def test_a_replica_failing_its_health_check_leaves_the_old_release_and_no_new_container(world: DeployWorld) -> None:
    _scale(world, 2)
    world.deploy()
    before = {c.id for c in world.running()}
    route = world.route()
    world.runtime.never_healthy()
    failed = world.deploy()
    assert world.deployment(failed).status == "failed"
    assert {c.id for c in world.running()} == before and world.route() == route
    assert world.release_of(failed) is None


def test_replicas_are_bounded_by_the_setting(world: DeployWorld) -> None:
    from control.domain.errors import Invalid

    with pytest.raises(Invalid, match="between 1 and 10"):
        world.apps.update(world.tenant.id, world.app.id, replicas=11)
    with pytest.raises(Invalid):
        world.apps.update(world.tenant.id, world.app.id, replicas=0)


def test_an_app_with_a_volume_runs_one_replica(world: DeployWorld) -> None:
    from control.domain.errors import Conflict

    world.volumes.create(world.tenant.id, world.app.id, "data", "/data", 4)
    with pytest.raises(Conflict) as refused:
        world.apps.update(world.tenant.id, world.app.id, replicas=2)
    assert refused.value.code == "replicas-with-volume" and "data" in refused.value.detail
    world.apps.update(world.tenant.id, world.app.id, replicas=1)  # what it runs already: fine
    other = world.apps.create(world.tenant.id, "many", port=8080, replicas=3)
    with pytest.raises(Conflict) as refused:
        world.volumes.create(world.tenant.id, other.id, "data", "/data", 4)
    assert refused.value.code == "replicas-with-volume"
