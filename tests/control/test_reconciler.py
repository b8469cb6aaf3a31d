"""The reconciler on the runtime port's fake: what it brings back, what it removes, and what it
leaves alone (tests/e2e and tests/security run it on Docker)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from control.jobs.runtime_port import Route
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
    world.runtime.networks.add("gone-tenant")  # a tenant deleted while this control plane was down
    report = world.reconciler.run_once()
    assert not report.errors, report.errors
    assert world.runtime.owned_networks() == ["acme"]
    assert "removed orphan network of gone-tenant" in report.actions

    world.apps.delete(world.tenant.id, "web")
    world.teardown.drain()
    world.tenants.delete(world.tenant.id)
    world.teardown.drain()
    assert world.runtime.owned_networks() == [] and world.runtime.images == {}
