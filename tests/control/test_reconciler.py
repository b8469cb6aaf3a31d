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
