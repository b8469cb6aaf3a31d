"""The deploy pipeline and its swap on the runtime port's fake: cancels at every step, failed
health checks, workers dying between steps, rollback. Everything but the runtime is real
(SQLite store, queue, services, the workers' run loop, the reconciler); tests/e2e runs the
same pipeline on Docker."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from control.domain.records import Release
from control.jobs.runtime_fake import FakeContainer, SimulatedCrash
from control.settings import Settings
from tests.control.deploy_world import DeployWorld, world_on


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # A build that hangs ends at its time limit: a cancel that is not seen fails in seconds.
    return settings.with_overrides(swap_drain_ms=0, build_timeout_s=5)


@pytest.fixture
def world(settings: Settings) -> Iterator[DeployWorld]:
    yield from world_on(settings)


@dataclass(frozen=True)
class Serving:
    """v1, deployed and serving: what a later deployment must leave alone when it does not complete."""

    deployment_id: str
    release: Release
    container: FakeContainer


@pytest.fixture
def v1(world: DeployWorld) -> Serving:
    deployment_id = world.deploy()
    assert world.deployment(deployment_id).status == "running"
    release = world.release_of(deployment_id)
    [container] = world.running()
    assert release is not None and world.serving() == container
    return Serving(deployment_id, release, container)


def assert_still_serving(world: DeployWorld, v1: Serving) -> None:
    """v1 serves as before: its container is the app's only one, the route and the current
    release point at it."""
    assert [c.id for c in world.running()] == [v1.container.id]
    assert world.serving() == v1.container
    route = world.route()
    assert route is not None and route.release == "v1"
    assert world.current() == (v1.release, v1.container.id)


def assert_no_build_leftovers(world: DeployWorld) -> None:
    assert world.runtime.step_containers == {}


def cancel_of(world: DeployWorld, deployment_id: str) -> Callable[[], None]:
    return lambda: world.cancel(deployment_id)


# -- the happy path ---------------------------------------------------------------------------
def test_a_deploy_builds_starts_routes_and_records_its_release(world: DeployWorld) -> None:
    world.set_env("GREETING", "hello")
    deployment_id = world.deploy()
    done = world.deployment(deployment_id)
    assert done.status == "running" and done.builder == "dockerfile"
    assert [t["status"] for t in done.transitions] == ["queued", "building", "releasing", "running"]
    release = world.release_of(deployment_id)
    assert release is not None and release.name == "v1" and release.image_id in world.runtime.images
    [container] = world.running()
    assert container.env == {"GREETING": "hello", "PORT": "8080"}
    assert world.serving() == container and world.current() == (release, container.id)
    assert_no_build_leftovers(world)
    assert not (world.deployments.workdir(deployment_id) / "src").exists()  # the source goes, the log stays
    assert "running v1" in world.log(deployment_id)


def test_a_redeploy_replaces_the_old_container(world: DeployWorld, v1: Serving) -> None:
    deployment_id = world.deploy()
    assert world.deployment(deployment_id).status == "running"
    [container] = world.running()
    assert container.id != v1.container.id and container.release == "v2"
    assert world.serving() == container
    assert f"stopped the previous container {v1.container.name}" in world.log(deployment_id)


# -- cancel at every step ---------------------------------------------------------------------
def test_a_deployment_cancelled_while_queued_never_starts(world: DeployWorld, v1: Serving) -> None:
    calls_before = len(world.runtime.calls)
    deployment_id = world.upload()
    world.cancel(deployment_id)
    assert world.deployment(deployment_id).status == "cancelled"
    assert world.queue.claim("worker-1") is None  # its job went with it
    assert world.runtime.calls[calls_before:] == []
    assert_still_serving(world, v1)


def test_a_deployment_cancelled_just_after_a_worker_claimed_it_never_starts(world: DeployWorld, v1: Serving) -> None:
    calls_before = len(world.runtime.calls)
    deployment_id = world.upload()
    job = world.claim()
    world.cancel(deployment_id)  # the worker holds it: it honours the cancel at its first check
    assert world.deployment(deployment_id).status == "queued"
    world.run(job)
    done = world.deployment(deployment_id)
    assert (done.status, done.reason) == ("cancelled", "cancelled by request")
    assert world.runtime.calls[calls_before:] == ["remove_build_leftovers"]  # the clean-up, nothing built or started
    assert world.job_state(job.id) == "succeeded"
    assert_still_serving(world, v1)


def test_a_cancel_stops_a_build_that_hangs(world: DeployWorld, v1: Serving) -> None:
    world.runtime.hang_builds()
    deployment_id = world.upload()
    job = world.claim()
    threading.Timer(0.1, cancel_of(world, deployment_id)).start()  # while the build prints
    world.run(job)
    done = world.deployment(deployment_id)
    assert (done.status, done.reason) == ("cancelled", "cancelled by request")
    assert "building" in [t["status"] for t in done.transitions]
    assert world.release_of(deployment_id) is None
    assert_no_build_leftovers(world)
    assert_still_serving(world, v1)


def test_a_cancel_right_after_the_build_ends_it_before_any_release(world: DeployWorld, v1: Serving) -> None:
    deployment_id = world.upload()
    world.runtime.after("build_image", cancel_of(world, deployment_id))
    calls_before = len(world.runtime.calls)
    world.run_next()
    assert world.deployment(deployment_id).status == "cancelled"
    assert world.release_of(deployment_id) is None
    assert "build_image" in world.runtime.calls[calls_before:]
    assert "start_app" not in world.runtime.calls[calls_before:]
    assert_still_serving(world, v1)


def test_a_cancel_after_the_release_is_made_ends_it_before_the_swap(world: DeployWorld, v1: Serving) -> None:
    world.deploy()  # v2 serving: roll back to v1
    [v2_container] = world.running()
    deployment_id = world.roll_back_to(v1.release)
    world.runtime.before("image_exists", cancel_of(world, deployment_id))
    world.run_next()
    done = world.deployment(deployment_id)
    assert done.status == "cancelled"
    assert world.release_of(deployment_id) is None, "made, never live: its number is given back"
    assert done.release_id is None
    current = world.current()
    assert current is not None and current[0].name == "v2"
    assert world.running() == [v2_container] and world.serving() == v2_container
    world.deploy()
    assert [r.name for r in world.app_releases()] == ["v1", "v2", "v3"], "the next release that serves is v3"


def test_a_cancel_during_the_health_wait_removes_the_new_container(world: DeployWorld, v1: Serving) -> None:
    deployment_id = world.upload()
    world.runtime.before("wait_healthy", cancel_of(world, deployment_id))
    world.run_next()
    assert world.deployment(deployment_id).status == "cancelled"
    assert world.container_of(deployment_id) is None
    assert_still_serving(world, v1)


def test_a_cancel_after_the_route_switched_is_too_late_and_the_swap_completes(world: DeployWorld, v1: Serving) -> None:
    deployment_id = world.upload()
    world.runtime.after("write_route", cancel_of(world, deployment_id))
    world.run_next()
    done = world.deployment(deployment_id)
    assert done.status == "running" and done.cancel_requested
    new = world.container_of(deployment_id)
    assert new is not None and world.running() == [new] and world.serving() == new
    release = world.release_of(deployment_id)
    assert release is not None and world.current() == (release, new.id)


# -- failures ---------------------------------------------------------------------------------
def test_a_failed_health_check_keeps_the_old_release_serving(world: DeployWorld, v1: Serving) -> None:
    world.runtime.never_healthy("HTTP 503")
    deployment_id = world.deploy()
    done = world.deployment(deployment_id)
    assert done.status == "failed"
    assert done.reason is not None
    assert "health check GET /healthz on port 8080 did not pass" in done.reason and "HTTP 503" in done.reason
    assert "the previous release keeps serving" in done.reason
    assert "web v2 listening on port 8080" in done.reason  # the new container's last log lines
    assert world.container_of(deployment_id) is None
    assert_still_serving(world, v1)


def test_a_container_that_dies_fails_its_deployment_with_its_last_words(world: DeployWorld, v1: Serving) -> None:
    world.runtime.die_after_start("ZeroDivisionError: division by zero")
    deployment_id = world.deploy()
    done = world.deployment(deployment_id)
    assert done.status == "failed" and done.reason is not None
    assert "the container exited" in done.reason and "ZeroDivisionError" in done.reason
    assert "[v2] ZeroDivisionError: division by zero" in world.log(deployment_id)
    assert world.container_of(deployment_id) is None
    assert_still_serving(world, v1)


def test_a_failed_build_fails_the_deployment_and_starts_nothing(world: DeployWorld, v1: Serving) -> None:
    world.runtime.fail_builds("The command '/bin/sh -c pip install' returned a non-zero code: 1")
    deployment_id = world.deploy()
    done = world.deployment(deployment_id)
    assert done.status == "failed" and done.reason is not None and done.reason.startswith("the build failed: ")
    assert world.release_of(deployment_id) is None
    assert_no_build_leftovers(world)
    assert_still_serving(world, v1)


def test_a_dockerfile_the_build_policy_refuses_is_never_built(world: DeployWorld) -> None:
    deployment_id = world.upload(dockerfile="FROM someone-else/miner:latest\n")
    world.run_next()
    done = world.deployment(deployment_id)
    assert done.status == "failed" and done.reason is not None and "someone-else/miner" in done.reason
    assert world.runtime.images == {} and world.running() == []


def test_traefik_not_answering_is_a_warning_not_a_failure(world: DeployWorld, v1: Serving) -> None:
    world.runtime.traefik_never_serves()
    deployment_id = world.deploy()
    assert world.deployment(deployment_id).status == "running"
    assert "warning: Traefik did not answer with v2" in world.log(deployment_id)
    new = world.container_of(deployment_id)
    assert new is not None and world.serving() == new


# -- a worker dies between steps; another resumes the job ------------------------------------
CRASHES = [
    ("crash_after", "build_image"),
    ("crash_before", "start_app"),
    ("crash_after", "start_app"),
    ("crash_after", "wait_healthy"),
    ("crash_before", "write_route"),
    ("crash_after", "write_route"),
    ("crash_before", "stop_and_remove"),
]


@pytest.mark.parametrize(("when", "step"), CRASHES, ids=[f"{when}-{step}" for when, step in CRASHES])
def test_a_deploy_whose_worker_died_is_resumed_and_completes_exactly_once(
    world: DeployWorld, v1: Serving, when: str, step: str
) -> None:
    getattr(world.runtime, when)(step)
    deployment_id = world.upload()
    job = world.claim("worker-1")
    with pytest.raises(SimulatedCrash):
        world.run(job, "worker-1")
    assert not world.deployment(deployment_id).is_terminal
    assert [(j.id, gave_up) for j, gave_up in world.lapse_lease()] == [(job.id, False)]  # requeued

    again = world.claim("worker-2")
    assert (again.id, again.attempts) == (job.id, 2)
    world.run(again, "worker-2")

    assert world.deployment(deployment_id).status == "running"
    assert [r.name for r in world.app_releases()] == ["v1", "v2"]  # one release for this deployment
    new = world.container_of(deployment_id)
    assert new is not None and world.running() == [new]
    assert world.serving() == new
    release = world.release_of(deployment_id)
    assert release is not None and world.current() == (release, new.id)
    assert world.job_state(job.id) == "succeeded"
    assert "retrying: attempt 2 of 2" in world.log(deployment_id)


def test_a_build_cut_off_by_a_dying_worker_leaves_nothing_after_the_retry(world: DeployWorld) -> None:
    world.runtime.crash_mid_build()
    deployment_id = world.upload()
    with pytest.raises(SimulatedCrash):
        world.run_next("worker-1")
    assert len(world.runtime.step_containers) == 1  # the cut-off step's container
    world.lapse_lease()
    world.run_next("worker-2")
    assert world.deployment(deployment_id).status == "running"
    assert_no_build_leftovers(world)
    assert "removed 1 step container(s) the interrupted attempt left" in world.log(deployment_id)


def test_the_reconciler_sweeps_a_cut_off_builds_network_once_its_deployment_is_over(world: DeployWorld) -> None:
    world.runtime.crash_mid_build()
    deployment_id = world.upload()
    with pytest.raises(SimulatedCrash):
        world.run_next("worker-1")
    [leaked] = world.runtime.build_networks
    assert world.runtime.build_networks[leaked] == deployment_id
    report = world.reconciler.run_once()
    assert not report.errors and leaked in world.runtime.build_networks  # its deployment is still in flight
    world.lapse_lease()
    world.run_next("worker-2")
    assert world.deployment(deployment_id).status == "running"
    assert list(world.runtime.build_networks) == [leaked]  # the retry's own network went with its build
    report = world.reconciler.run_once()
    assert not report.errors, report.errors
    assert world.runtime.build_networks == {}
    assert f"removed orphan build network {leaked} (deployment {deployment_id})" in report.actions


def test_a_deploy_whose_workers_all_die_is_given_up_and_the_reconciler_sweeps_its_container(
    world: DeployWorld, v1: Serving
) -> None:
    deployment_id = world.upload()
    for worker in ("worker-1", "worker-2"):
        world.runtime.crash_after("start_app")
        with pytest.raises(SimulatedCrash):
            world.run_next(worker)
        outcomes = world.lapse_lease()
    assert [gave_up for _, gave_up in outcomes] == [True]
    done = world.deployment(deployment_id)
    assert done.status == "failed" and done.reason is not None and done.reason.startswith("gave up after 2 attempt(s)")
    assert world.container_of(deployment_id) is not None  # the dead worker's container, not serving
    report = world.reconciler.run_once()
    assert not report.errors, report.errors
    assert world.container_of(deployment_id) is None
    assert_still_serving(world, v1)


# -- rollback ---------------------------------------------------------------------------------
def test_a_rollback_switches_the_route_back_to_the_earlier_image(world: DeployWorld, v1: Serving) -> None:
    v2 = world.deploy()
    [v2_container] = world.running()
    calls_before = len(world.runtime.calls)
    deployment_id = world.roll_back_to(v1.release)
    world.run_next()

    done = world.deployment(deployment_id)
    assert done.status == "running"
    assert [t["status"] for t in done.transitions] == ["queued", "releasing", "running"]  # no build
    assert "build_image" not in world.runtime.calls[calls_before:]
    release = world.release_of(deployment_id)
    assert release is not None and release.name == "v3" and release.rollback_of == v1.release.id
    assert release.image_id == v1.release.image_id
    [container] = world.running()
    assert container.image == v1.release.image_id and container.release == "v3"
    assert world.serving() == container and world.current() == (release, container.id)
    assert world.container_of(v2) is None and v2_container.id not in world.runtime.containers


def test_a_rollback_to_an_image_no_longer_on_the_host_fails_and_keeps_serving(world: DeployWorld, v1: Serving) -> None:
    world.deploy()
    [v2_container] = world.running()
    del world.runtime.images[v1.release.image_id]
    deployment_id = world.roll_back_to(v1.release)
    world.run_next()
    done = world.deployment(deployment_id)
    assert done.status == "failed" and done.reason is not None and "was removed from this host" in done.reason
    assert world.running() == [v2_container] and world.serving() == v2_container


# -- releases carry their config ---------------------------------------------------------------
def test_a_rollback_runs_with_its_releases_config_and_makes_it_the_apps(world: DeployWorld) -> None:
    world.set_env("GREETING", "v1-hello")
    world.set_env("ONLY_IN_V1", "yes")
    first = world.deploy()
    v1 = world.release_of(first)
    assert v1 is not None and v1.config is not None
    assert [(v.name, v.version) for v in v1.config.vars] == [("GREETING", 1), ("ONLY_IN_V1", 1)]
    world.set_env("GREETING", "v2-hello")
    world.env_vars.unset(world.tenant.id, world.app.id, "ONLY_IN_V1")
    world.set_env("ADDED_LATER", "new")
    world.deploy()
    [v2_container] = world.running()
    assert v2_container.env == {"GREETING": "v2-hello", "ADDED_LATER": "new", "PORT": "8080"}

    rollback = world.roll_back_to(v1)
    world.run_next()
    assert world.deployment(rollback).status == "running", world.log(rollback)
    [v3_container] = world.running()
    assert v3_container.env == {"GREETING": "v1-hello", "ONLY_IN_V1": "yes", "PORT": "8080"}, "v1's config, not today's"
    v3 = world.release_of(rollback)
    assert v3 is not None and v3.rollback_of == v1.id and v3.config == v1.config
    today = world.env_vars.list(world.tenant.id, world.app.id, reveal=True)
    assert {v.name: v.value for v in today.vars} == {"GREETING": "v1-hello", "ONLY_IN_V1": "yes"}, "the app's config is v1's now"
    assert "restoring the config of v1 (GREETING v1, ONLY_IN_V1 v1)" in world.log(rollback)


def test_a_rollback_that_never_goes_live_leaves_the_apps_config_as_it_was(world: DeployWorld) -> None:
    world.set_env("GREETING", "v1-hello")
    v1 = world.release_of(world.deploy())
    world.set_env("GREETING", "v2-hello")
    world.deploy()
    world.runtime.never_healthy()
    rollback = world.roll_back_to(v1)  # type: ignore[arg-type]
    world.run_next()
    assert world.deployment(rollback).status == "failed"
    today = world.env_vars.list(world.tenant.id, world.app.id, reveal=True)
    assert {v.name: v.value for v in today.vars} == {"GREETING": "v2-hello"}
    assert [r.name for r in world.app_releases()] == ["v1", "v2"]
