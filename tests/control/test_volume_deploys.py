"""App volumes through the deploy pipeline, its swap and the reconciler, on the runtime port's
fake (whose volumes hold files: what the app in a container wrote is there, or not, in the
next one). tests/e2e/test_volumes.py runs the same story on Docker, runsc and Traefik."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from control.domain.errors import Conflict
from control.domain.volumes import VolumeConfig
from control.settings import Settings
from tests.control.deploy_world import DeployWorld, world_on


@pytest.fixture
def world(settings: Settings) -> Iterator[DeployWorld]:
    for world in world_on(settings.with_overrides(swap_drain_ms=0)):
        world.reconciler.base_backoff_s = 0.0  # each pass may act again at once
        yield world


def _serving_id(world: DeployWorld) -> str:
    serving = world.serving()
    assert serving is not None, "nothing serves"
    return serving.id


def test_the_apps_files_survive_redeploys_rollbacks_restarts_and_recreation(world: DeployWorld) -> None:
    volume_id = world.add_volume("data", "/app/instance")
    world.deploy()
    [v1] = world.app_releases()
    first = _serving_id(world)
    assert world.runtime.containers[first].mounts[0].volume_id == volume_id
    world.runtime.write_file(first, "/app/instance/flaskr.sqlite", "post 1")
    world.runtime.write_file(first, "/app/cache.txt", "the container's own")

    world.deploy()  # a redeploy: a new container, the same volume
    second = _serving_id(world)
    assert second != first and world.runtime.read_file(second, "/app/instance/flaskr.sqlite") == "post 1"
    assert world.runtime.read_file(second, "/app/cache.txt") is None

    world.roll_back_to(v1)
    world.run_next()
    third = _serving_id(world)
    assert world.runtime.read_file(third, "/app/instance/flaskr.sqlite") == "post 1"  # data is not rolled back

    world.runtime.stop_behind_our_back(third)
    assert not world.reconciler.run_once().errors
    assert world.runtime.read_file(_serving_id(world), "/app/instance/flaskr.sqlite") == "post 1"

    world.runtime.remove(_serving_id(world))
    report = world.reconciler.run_once()
    assert not report.errors, report.errors
    recreated = _serving_id(world)
    assert world.runtime.containers[recreated].mounts[0].volume_id == volume_id
    assert world.runtime.read_file(recreated, "/app/instance/flaskr.sqlite") == "post 1"


def test_a_volume_app_stops_its_old_container_before_the_new_one_starts(world: DeployWorld) -> None:
    world.add_volume()
    world.deploy()
    old = _serving_id(world)
    seen: list[str] = []
    world.runtime.before("start_app", lambda: seen.append(world.runtime.containers[old].status))
    deployment = world.deploy()
    assert seen == ["exited"], "the old container still ran when the new one started: two writers on one volume"
    assert world.deployment(deployment).status == "running"
    assert old not in world.runtime.containers
    assert "one writer at a time" in world.log(deployment)


def test_an_app_without_volumes_keeps_its_old_container_serving_until_the_new_one_does(world: DeployWorld) -> None:
    world.deploy()
    old = _serving_id(world)
    seen: list[str] = []
    world.runtime.before("start_app", lambda: seen.append(world.runtime.containers[old].status))
    world.deploy()
    assert seen == ["running"]


def test_a_failed_deploy_of_a_volume_app_starts_the_previous_release_again(world: DeployWorld) -> None:
    world.add_volume()
    world.deploy()
    old = _serving_id(world)
    world.runtime.write_file(old, "/data/notes", "kept")
    world.runtime.never_healthy()
    failed = world.deploy()
    body = world.deployment(failed)
    assert body.status == "failed" and "the previous release was started again and serves" in (body.reason or "")
    assert world.serving() is world.runtime.containers[old]  # running again, the route at its new address
    assert world.runtime.read_file(old, "/data/notes") == "kept"
    current = world.current()
    assert current is not None and current[1] == old


def test_a_deploy_whose_volume_storage_is_gone_fails_and_the_previous_release_serves_again(world: DeployWorld) -> None:
    volume_id = world.add_volume()
    world.deploy()
    old = _serving_id(world)
    world.runtime.stop(old)
    world.runtime.remove(old)  # the volume can go once nothing holds it
    world.runtime.remove_volume(volume_id)
    world.reconciler.run_once()  # the reconciler cannot bring it back either: the data is gone
    assert world.serving() is None
    failed = world.deploy()
    assert world.deployment(failed).status == "failed"
    assert "its data is lost" in (world.deployment(failed).reason or "")


def test_a_measured_volume_over_its_size_turns_full_and_refuses_deploys_until_it_is_under(world: DeployWorld) -> None:
    world.volumes.config = VolumeConfig(quota="measured")
    volume_id = world.add_volume(size_mb=1)
    world.deploy()
    container = _serving_id(world)
    world.runtime.write_file(container, "/data/big", "x" * (2 * 2**20))  # not enforced: it fits
    report = world.reconciler.run_once()
    assert any("full" in action for action in report.actions), report.actions
    [volume] = world.volumes.for_app(world.app.id)
    assert volume.status == "full" and volume.used_bytes == 2 * 2**20
    with pytest.raises(Conflict) as refused:
        world.upload()
    assert refused.value.code == "volume-full" and "over its size of 1 MiB" in refused.value.detail
    world.runtime.write_file(container, "/data/big", "small")
    world.reconciler.run_once()
    assert world.volumes.for_app(world.app.id)[0].status == "ready"
    assert world.runtime.volumes[volume_id].files["big"] == "small"
    world.deploy()


def test_an_enforced_volume_refuses_a_write_past_its_size(world: DeployWorld) -> None:
    world.add_volume(size_mb=1)
    world.deploy()
    with pytest.raises(OSError, match="No space left"):
        world.runtime.write_file(_serving_id(world), "/data/big", "x" * (2 * 2**20))
    world.reconciler.run_once()
    assert world.volumes.for_app(world.app.id)[0].status == "ready"  # the filesystem is the limit: never full


def test_a_mounted_volume_is_deleted_only_with_force_and_the_app_comes_back_without_it(world: DeployWorld) -> None:
    volume_id = world.add_volume()
    world.deploy()
    container = _serving_id(world)
    with pytest.raises(Conflict) as refused:
        world.volumes.delete(world.tenant.id, world.app.name, "data")
    assert refused.value.code == "volume-mounted"
    assert volume_id in world.runtime.volumes
    world.volumes.delete(world.tenant.id, world.app.name, "data", force=True)
    assert volume_id not in world.runtime.volumes and container not in world.runtime.containers
    assert world.volumes.for_app(world.app.id) == []
    assert not world.reconciler.run_once().errors
    assert world.runtime.containers[_serving_id(world)].mounts == ()


def test_a_volume_of_an_app_that_is_not_running_is_deleted_without_force(world: DeployWorld) -> None:
    volume_id = world.add_volume()
    world.volumes.delete(world.tenant.id, world.app.id, volume_id)
    assert world.runtime.volumes == {}


def test_an_app_with_volumes_is_deleted_only_with_purge_and_then_they_go_after_its_containers(world: DeployWorld) -> None:
    volume_id = world.add_volume()
    world.deploy()
    with pytest.raises(Conflict) as refused:
        world.apps.delete(world.tenant.id, "web")
    assert refused.value.code == "app-has-volumes" and "'data' (/data, 10 MiB)" in refused.value.detail
    assert "?purge=true" in refused.value.detail
    world.apps.delete(world.tenant.id, "web", purge=True)
    world.teardown.drain()
    assert world.runtime.containers == {} and volume_id not in world.runtime.volumes


def test_storage_no_volume_accounts_for_goes_once_past_the_grace(world: DeployWorld) -> None:
    kept = world.add_volume()
    world.runtime.create_volume(volume_id="vol_orphan0000000000000000000", tenant="acme", app="gone", size_mb=1, enforced=True)
    assert not world.reconciler.run_once().errors
    assert "vol_orphan0000000000000000000" in world.runtime.volumes  # young: maybe a create whose row is not committed yet
    world.clock.advance(601)
    report = world.reconciler.run_once()
    assert "removed orphan volume vol_orphan0000000000000000000 (app volumes)" in report.actions
    assert set(world.runtime.volumes) == {kept}
