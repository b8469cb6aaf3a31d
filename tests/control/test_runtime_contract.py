"""The app runtime port's contract: the same behaviour asked of its fake (InMemoryAppRuntime)
and of its Docker adapter (DockerAppRuntime, against the real engine, runsc and a test
Traefik: marked ``docker``). The pipeline's tests run on the fake; this is what lets them
stand for what Docker does."""

from __future__ import annotations

import errno
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from control.domain.build_policy import BuildPolicy
from control.jobs.runtime_docker import DockerAppRuntime
from control.jobs.runtime_fake import InMemoryAppRuntime
from control.jobs.runtime_port import AppContainer, AppRuntime, RemovalRefused, Route, RunOutcome, VolumeMount
from control.settings import Settings
from runtime.builders import BuildCancelled, BuildError, BuildRequest
from runtime.resilience import BreakerRegistry
from runtime.traefik import TraefikProcess
from runtime.volumes import VolumeInUse, VolumeStorageMissing
from tests.runtime.helpers import BUSYBOX, RUN_ID, SETUP_HINT

TENANT = f"contract-{RUN_ID}"
APP = "web"
APP_ID = f"app_contract{RUN_ID}"
# busybox httpd on $PORT, as every app listens on the PORT it is given; a first log line.
DOCKERFILE = (
    f"FROM {BUSYBOX}\n"
    'CMD ["sh", "-c", "echo ready; mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p $PORT -h /www"]\n'
)


@dataclass
class Subject:
    runtime: AppRuntime
    image_id: str
    source: Path  # a source tree with DOCKERFILE
    stop_behind_our_back: Callable[[str], None]
    plant_legacy_route: Callable[[str, str], None]  # a route file written before id keys
    # What the app in a container does with its files, and what a host reboot does to volumes.
    write_file: Callable[[str, str, str], None]  # container id, path, text
    read_file: Callable[[str, str], str | None]
    fill: Callable[[str, str, int], None]  # container id, path, bytes: OSError(ENOSPC) when it does not fit
    reboot_volumes: Callable[[], None]
    # A build network a killed build left (for its deployment id): its name.
    leave_build_network: Callable[[str], str]
    # What the next one-off runs print and how they end: the fake is told; Docker runs the command itself.
    script_runs: Callable[..., None] = lambda **_: None
    # Builds from now on fail at a step: the fake is told; Docker runs the failing step itself.
    fail_builds: Callable[[], None] = lambda: None
    # The app in the container burns some CPU: the fake is told; in Docker a busy loop runs in it.
    burn: Callable[[str], None] = lambda _: None


def _source(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "Dockerfile").write_text(DOCKERFILE)
    return root


def _request(source: Path, **fields: object) -> BuildRequest:
    return BuildRequest(
        source=source,
        tag=f"moorage-apps/{TENANT}/{APP}:contract",
        tenant=TENANT,
        app=APP,
        timeout=120.0,
        work_dir=source.parent,
        **fields,
    )  # type: ignore[arg-type]


@dataclass
class DockerWorld:
    traefik: TraefikProcess
    image_id: str
    data_root: Path


@pytest.fixture(scope="module")
def docker_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockerWorld]:
    try:
        traefik = TraefikProcess().start()
    except (FileNotFoundError, RuntimeError, TimeoutError) as exc:
        pytest.fail(f"could not start Traefik ({exc}): {SETUP_HINT}", pytrace=False)
    root = tmp_path_factory.mktemp("contract")
    builder = DockerAppRuntime(_docker_settings(root / "builder", traefik), BreakerRegistry())
    try:
        image_id = builder.build_image("dockerfile", _request(_source(root / "build" / "src"))).image_id
    except Exception as exc:  # noqa: BLE001 (no engine or no base image: one line saying how to set it up)
        traefik.stop()
        pytest.fail(f"could not build the contract's image from {BUSYBOX} ({exc}): {SETUP_HINT}", pytrace=False)
    yield DockerWorld(traefik, image_id, root)
    traefik.stop()
    builder.networks.remove(TENANT)
    builder.images.remove(image_id, force=True)


def _docker_settings(data_dir: Path, traefik: TraefikProcess) -> Settings:
    return Settings(data_dir=data_dir, base_domain="apps.test", traefik_dynamic_dir=traefik.dynamic_dir, traefik_url=traefik.url)


def _docker_subject(world: DockerWorld, tmp_path: Path) -> Iterator[Subject]:
    rt = DockerAppRuntime(_docker_settings(tmp_path / "data", world.traefik), BreakerRegistry())
    legacy = world.traefik.dynamic_dir / f"{TENANT}--{APP}.yml"

    def plant_legacy_route(tenant: str, app: str) -> None:
        (world.traefik.dynamic_dir / f"{tenant}--{app}.yml").write_text("http: {}\n")

    def sh(container_id: str, script: str, *args: str) -> tuple[int, str]:
        done = rt.containers.exec(container_id, ["sh", "-c", script, "sh", *args])
        if "No space left on device" in done.output:
            raise OSError(errno.ENOSPC, "No space left on device")
        return done.exit_code, done.output

    def read_file(container_id: str, path: str) -> str | None:
        code, out = sh(container_id, 'cat "$1"', path)
        return out if code == 0 else None

    def write_file(container_id: str, path: str, text: str) -> None:
        code, out = sh(container_id, 'printf %s "$1" > "$2"', text, path)
        assert code == 0, out

    def fill(container_id: str, path: str, n: int) -> None:
        code, out = sh(container_id, 'dd if=/dev/zero of="$2" bs=1024 count="$1"', str(n // 1024), path)
        assert code == 0, out

    def reboot_volumes() -> None:  # loop devices do not survive a reboot
        for device in rt.volumes.loops.attached():
            rt.volumes.loops.detach(device)

    yield Subject(
        rt,
        world.image_id,
        _source(tmp_path / "src"),
        stop_behind_our_back=lambda container_id: rt.containers.stop(container_id, timeout=1),
        plant_legacy_route=plant_legacy_route,
        write_file=write_file,
        read_file=read_file,
        fill=fill,
        reboot_volumes=reboot_volumes,
        leave_build_network=lambda deployment: rt.build_networks.create(TENANT, build=f"moorage-apps/t/{APP}:{deployment}"),
        burn=lambda container_id: sh(container_id, "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done"),
    )
    for name in rt.owned_build_networks():
        rt.remove_build_network(name)
    for container in [*rt.owned_apps(tenant=TENANT), *rt.owned_runs(tenant=TENANT)]:
        rt.remove(container.id)
    for volume_id in rt.owned_volumes():
        rt.remove_volume(volume_id)
    rt.remove_route(APP_ID)
    legacy.unlink(missing_ok=True)


def _fake_subject(tmp_path: Path) -> Iterator[Subject]:
    fake = InMemoryAppRuntime()
    source = _source(tmp_path / "src")
    image_id = fake.build_image("dockerfile", _request(source)).image_id
    yield Subject(
        fake,
        image_id,
        source,
        stop_behind_our_back=fake.stop_behind_our_back,
        plant_legacy_route=lambda tenant, app: fake.legacy.add(f"{tenant}--{app}"),
        script_runs=fake.script_runs,
        fail_builds=fake.fail_builds,
        write_file=fake.write_file,
        read_file=fake.read_file,
        fill=lambda container_id, path, n: fake.write_file(container_id, path, "\0" * n),
        reboot_volumes=lambda: None,
        leave_build_network=lambda deployment: _plant(fake.build_networks, f"left-{deployment}", deployment),
        burn=lambda container_id: fake.use(container_id, cpu_seconds=0.5, memory_bytes=2**20),
    )


def _plant(networks: dict[str, str], name: str, deployment: str) -> str:
    networks[name] = deployment
    return name


@pytest.fixture(params=["in-memory", pytest.param("docker", marks=pytest.mark.docker)])
def subject(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Subject]:
    if request.param == "docker":
        yield from _docker_subject(request.getfixturevalue("docker_world"), tmp_path)
    else:
        yield from _fake_subject(tmp_path)


def _start(
    subject: Subject,
    release: str = "v1",
    name: str = f"moorage-{TENANT}-{APP}-dep_contract",
    volumes: tuple[VolumeMount, ...] = (),
) -> Route:
    container = subject.runtime.start_app(
        tenant=TENANT,
        app=APP,
        release=release,
        image=subject.image_id,
        env={"PORT": "8080", "GREETING": "hello"},
        name=name,
        volumes=volumes,
    )
    return Route(APP_ID, TENANT, APP, container.address(), 8080, release)


def _container_id(subject: Subject, route: Route) -> str:
    [container] = [c for c in subject.runtime.owned_apps(tenant=TENANT, app=APP) if c.ip == route.ip]
    return container.id


# -- images -----------------------------------------------------------------------------------
def test_a_build_streams_its_log_and_leaves_an_image_and_no_step_containers(subject: Subject) -> None:
    lines: list[str] = []
    built = subject.runtime.build_image("dockerfile", _request(subject.source, on_line=lines.append))
    assert lines and built.builder == "dockerfile"
    assert subject.runtime.image_exists(built.image_id)
    assert not subject.runtime.image_exists("sha256:" + "0" * 64)
    assert subject.runtime.remove_build_leftovers(subject.source.parent) == []


def test_a_build_runs_on_a_network_of_its_own_that_goes_when_it_ends(subject: Subject) -> None:
    rt = subject.runtime
    during: list[dict[str, str]] = []
    rt.build_image("dockerfile", _request(subject.source, on_line=lambda _: during.append(rt.owned_build_networks())))
    assert list(during[0].values()) == ["contract"], during[0]  # named for its deployment (the tag's)
    assert rt.owned_build_networks() == {}
    with pytest.raises(BuildCancelled):
        rt.build_image("dockerfile", _request(subject.source, cancelled=lambda: True))
    assert rt.owned_build_networks() == {}


def test_a_left_build_network_is_listed_with_its_deployment_and_removed(subject: Subject) -> None:
    name = subject.leave_build_network("dep_gone")
    assert subject.runtime.owned_build_networks() == {name: "dep_gone"}
    assert subject.runtime.remove_build_network(name)
    assert not subject.runtime.remove_build_network(name)
    assert subject.runtime.owned_build_networks() == {}


def test_a_source_without_a_dockerfile_fails_its_build(subject: Subject, tmp_path: Path) -> None:
    empty = tmp_path / "empty" / "src"
    empty.mkdir(parents=True)
    with pytest.raises(BuildError, match="no Dockerfile"):
        subject.runtime.build_image("dockerfile", _request(empty))


def test_a_cancelled_build_stops(subject: Subject) -> None:
    with pytest.raises(BuildCancelled):
        subject.runtime.build_image("dockerfile", _request(subject.source, cancelled=lambda: True))


# -- app containers ---------------------------------------------------------------------------
def test_a_started_app_runs_is_listed_and_answers_its_health_check_on_its_port(subject: Subject) -> None:
    rt = subject.runtime
    assert not rt.ever_started_anything()
    container = rt.start_app(
        tenant=TENANT,
        app=APP,
        release="v1",
        image=subject.image_id,
        env={"PORT": "8080"},
        name=f"moorage-{TENANT}-{APP}-dep_contract",
    )
    assert container.running and container.ip
    assert (container.tenant, container.app, container.release, container.image) == (TENANT, APP, "v1", subject.image_id)
    assert rt.ever_started_anything()
    assert rt.inspect(container.id) == container
    assert [c.id for c in rt.owned_apps(tenant=TENANT, app=APP)] == [container.id]
    assert rt.owned_apps(tenant=TENANT, app="other") == []
    assert rt.wait_healthy(container, port=8080, path="/", timeout=20).ok
    assert len(rt.log_tail(container.id, 1)) == 1
    assert not rt.wait_healthy(container, port=8081, path="/", timeout=1.5).ok


def test_starting_under_a_taken_name_replaces_that_container(subject: Subject) -> None:
    first = _container_id(subject, _start(subject, "v1"))
    second = _container_id(subject, _start(subject, "v2"))
    assert subject.runtime.inspect(first) is None
    assert [(c.id, c.release) for c in subject.runtime.owned_apps(tenant=TENANT, app=APP)] == [(second, "v2")]


def test_a_container_stopped_behind_our_back_restarts(subject: Subject) -> None:
    rt = subject.runtime
    container_id = _container_id(subject, _start(subject))
    subject.stop_behind_our_back(container_id)
    stopped = rt.inspect(container_id)
    assert stopped is not None and not stopped.running and stopped.ip is None
    again = rt.restart(container_id)
    assert again.running and again.id == container_id
    assert rt.wait_healthy(again, port=8080, path="/", timeout=20).ok


def test_a_running_containers_counters_are_read_and_start_from_0_when_it_is_started_again(subject: Subject) -> None:
    rt = subject.runtime
    container_id = _container_id(subject, _start(subject))
    subject.burn(container_id)
    [before] = [u for u in rt.container_usage() if u.container_id == container_id]
    assert (before.tenant, before.role) == (TENANT, "app")
    assert before.cpu_seconds > 0 and before.memory_bytes > 0 and before.started_at
    subject.stop_behind_our_back(container_id)
    assert container_id not in {u.container_id for u in rt.container_usage()}  # stopped: nothing to read
    rt.restart(container_id)
    [after] = [u for u in rt.container_usage() if u.container_id == container_id]
    assert after.started_at != before.started_at  # a new incarnation: the sampler counts it from 0
    assert after.cpu_seconds < before.cpu_seconds


def test_removed_containers_are_gone_and_a_second_removal_is_refused(subject: Subject) -> None:
    rt = subject.runtime
    container_id = _container_id(subject, _start(subject))
    rt.stop_and_remove(container_id)
    assert rt.inspect(container_id) is None
    assert rt.owned_apps(tenant=TENANT) == []
    with pytest.raises(RemovalRefused):
        rt.stop_and_remove(container_id)
    assert rt.remove(container_id) is False
    other = _container_id(subject, _start(subject, name=f"moorage-{TENANT}-{APP}-dep_other"))
    assert rt.remove(other) is True
    assert rt.inspect(other) is None


# -- routes -----------------------------------------------------------------------------------
def test_a_route_is_written_served_checked_and_removed(subject: Subject) -> None:
    rt = subject.runtime
    route = _start(subject)
    assert not rt.route_is(route)
    rt.write_route(route)
    assert rt.route_is(route)
    assert not rt.route_is(replace(route, release="v2"))
    assert APP_ID in rt.owned_routes()
    assert rt.wait_served(route, 20) is not None
    assert rt.wait_served(replace(route, release="v9"), 1.0) is None
    assert rt.remove_route(APP_ID) is True
    assert not rt.route_is(route)
    assert APP_ID not in rt.owned_routes()
    assert rt.remove_route(APP_ID) is False


def test_a_route_from_before_id_keys_is_replaced_by_the_new_one(subject: Subject) -> None:
    rt, stem = subject.runtime, f"{TENANT}--{APP}"
    route = _start(subject)
    subject.plant_legacy_route(TENANT, APP)
    assert stem in rt.legacy_routes()
    rt.write_route(route)
    assert stem not in rt.legacy_routes()
    subject.plant_legacy_route(TENANT, APP)
    assert not rt.route_is(route)  # both files would answer for the hostname
    assert rt.remove_legacy_route(stem) is True
    assert rt.route_is(route)
    assert rt.remove_legacy_route(stem) is False


def test_a_missing_container_inspects_as_none(subject: Subject) -> None:
    assert subject.runtime.inspect("0" * 64) is None  # where the engine raises NotFound


# -- what a delete and the retention sweep remove -------------------------------------------
def test_a_tenants_images_are_listed_by_its_id_and_removed_only_once_unused(subject: Subject, tmp_path: Path) -> None:
    rt = subject.runtime
    source = tmp_path / "gc" / "src"
    source.mkdir(parents=True)
    (source / "Dockerfile").write_text(DOCKERFILE + f"LABEL contract.gc={RUN_ID}\n")  # an image of its own
    tag = f"moorage-apps/{TENANT}/{APP}:dep_gc"
    built = rt.build_image("dockerfile", replace(_request(source), tag=tag))
    assert any(image.id == built.image_id and tag in image.tags for image in rt.tenant_images(TENANT))
    assert all(image.id != built.image_id for image in rt.tenant_images(f"{TENANT}x"))
    assert "dep_gc" in next(i for i in rt.tenant_images(TENANT) if i.id == built.image_id).deployment_ids()
    container = rt.start_app(
        tenant=TENANT, app=APP, release="v1", image=built.image_id, env={"PORT": "8080"}, name=f"moorage-{TENANT}-{APP}-dep_gc"
    )
    assert rt.remove_image(built.image_id) is False  # a container uses it
    assert built.image_id not in {i.id for i in rt.orphan_images([TENANT])}, "its tenant is live"
    assert built.image_id in {i.id for i in rt.orphan_images([f"{TENANT}x"])}, "its tenant is gone: ours to remove"
    rt.remove(container.id)
    assert rt.remove_image(built.image_id) is True
    assert not rt.image_exists(built.image_id)
    assert rt.remove_image(built.image_id) is False  # gone already


def test_a_failed_builds_layers_are_listed_under_its_tenant_and_go_when_removed(subject: Subject, tmp_path: Path) -> None:
    rt = subject.runtime
    source = tmp_path / "failing" / "src"
    source.mkdir(parents=True)
    (source / "Dockerfile").write_text(f"FROM {BUSYBOX}\nRUN echo {RUN_ID} > /step-one\nRUN exit 3\n")
    policy = BuildPolicy(allowed_images=(BUSYBOX,), own_repository=f"moorage-apps/{TENANT}/", lineage=TENANT)
    subject.fail_builds()
    before = time.time()
    with pytest.raises(BuildError):
        rt.build_image(
            "dockerfile",
            replace(_request(source), tag=f"moorage-apps/{TENANT}/{APP}:dep_failed", prepare_dockerfile=policy.check),
        )
    layers = rt.build_layers(TENANT)
    assert layers and {layer.tenant_id for layer in layers} == {TENANT}
    assert all(before - 2 <= layer.created <= time.time() + 2 for layer in layers), layers
    assert rt.build_layers(f"{TENANT}x") == [] and rt.build_layers() == [], "another tenant's, or none asked for"
    assert all(rt.remove_image(layer.id) for layer in layers)
    assert rt.build_layers(TENANT) == []
    assert rt.image_exists(subject.image_id), "the tenant's built image (and the base under it) stay"


def test_a_tenant_network_is_ours_until_removed_and_never_removed_in_use(subject: Subject) -> None:
    rt, tenant = subject.runtime, f"{TENANT}-net"
    assert tenant not in rt.owned_networks()
    container = rt.start_app(
        tenant=tenant, app=APP, release="v1", image=subject.image_id, env={"PORT": "8080"}, name=f"moorage-{tenant}-{APP}-dep_net"
    )
    try:
        assert tenant in rt.owned_networks()
        assert rt.remove_network(tenant) is False  # a container is attached
    finally:
        rt.remove(container.id)
    assert rt.remove_network(tenant) is True
    assert tenant not in rt.owned_networks()
    assert rt.remove_network(tenant) is False


# -- one-off runs ---------------------------------------------------------------------------
RUN_NAME = f"moorage-run-contract{RUN_ID}"


def _run(
    subject: Subject, command: Sequence[str], *, timeout: float = 60.0, cancelled: Callable[[], bool] = lambda: False
) -> tuple[RunOutcome, list[str], float]:
    lines: list[str] = []
    started = time.monotonic()
    outcome = subject.runtime.run_command(
        tenant=TENANT,
        app=APP,
        release="v1",
        image=subject.image_id,
        env={"PORT": "8080", "GREETING": "hello"},
        command=command,
        name=RUN_NAME,
        timeout=timeout,
        on_output=lines.append,
        cancelled=cancelled,
    )
    return outcome, lines, time.monotonic() - started


def test_a_run_ends_with_its_exit_code_and_passes_on_each_line_it_prints(subject: Subject) -> None:
    subject.script_runs(output=["hello", "to stderr"], exit_code=3)
    outcome, lines, _ = _run(subject, ["sh", "-c", 'echo "$GREETING"; echo "to stderr" >&2; exit 3'])
    assert outcome == RunOutcome(3)
    assert sorted(lines) == ["hello", "to stderr"]  # stdout and stderr, the env given
    assert subject.runtime.owned_runs(tenant=TENANT) == []  # its container is gone
    assert subject.runtime.owned_apps(tenant=TENANT) == []  # and it never was an app's


def test_a_run_that_succeeds_exits_0(subject: Subject) -> None:
    outcome, lines, _ = _run(subject, ["true"])
    assert outcome == RunOutcome(0) and lines == []


def test_a_run_past_its_timeout_is_killed(subject: Subject) -> None:
    subject.script_runs(output=["started"], duration_s=math.inf)
    outcome, lines, elapsed = _run(subject, ["sh", "-c", "echo started; exec sleep 60"], timeout=2.0)
    assert outcome == RunOutcome(None, timed_out=True)
    assert lines == ["started"] and 2.0 <= elapsed < 15
    assert subject.runtime.owned_runs(tenant=TENANT) == []


def test_a_cancelled_run_is_killed_and_is_listed_while_it_runs(subject: Subject) -> None:
    subject.script_runs(duration_s=math.inf)
    seen: list[AppContainer] = []
    began = time.monotonic()

    def cancelled() -> bool:
        if not seen:
            seen.extend(subject.runtime.owned_runs(tenant=TENANT))
        return time.monotonic() - began > 1.5

    outcome, _, elapsed = _run(subject, ["sleep", "60"], cancelled=cancelled)
    assert outcome == RunOutcome(None, cancelled=True) and elapsed < 15
    assert [(c.name, c.tenant, c.app, c.release, c.image) for c in seen] == [(RUN_NAME, TENANT, APP, "v1", subject.image_id)]
    assert subject.runtime.owned_runs(tenant=TENANT) == []


# -- app volumes ----------------------------------------------------------------------------
VOLUME_ID = f"vol_{RUN_ID}000000000000000001"


def _volume(subject: Subject, *, enforced: bool, size_mb: int = 4, volume_id: str = VOLUME_ID) -> VolumeMount:
    subject.runtime.create_volume(volume_id=volume_id, tenant=TENANT, app=APP, size_mb=size_mb, enforced=enforced)
    return VolumeMount(volume_id, "/data", enforced)


@pytest.mark.parametrize("enforced", [True, False], ids=["enforced", "measured"])
def test_a_volume_keeps_its_files_from_one_container_to_the_next(subject: Subject, enforced: bool) -> None:
    rt, volume = subject.runtime, _volume(subject, enforced=enforced)
    assert VOLUME_ID in rt.owned_volumes()
    first = _container_id(subject, _start(subject, "v1", volumes=(volume,)))
    assert rt.inspect(first).volumes == (VOLUME_ID,)  # type: ignore[union-attr]
    subject.write_file(first, "/data/notes.txt", "kept")
    subject.write_file(first, "/tmp/scratch.txt", "not kept")
    second = _container_id(subject, _start(subject, "v2", volumes=(volume,)))  # same name: the first is replaced
    assert rt.inspect(first) is None
    assert subject.read_file(second, "/data/notes.txt") == "kept"
    assert subject.read_file(second, "/tmp/scratch.txt") is None
    used = rt.volume_usage([volume])[VOLUME_ID]
    assert used is None or used >= len("kept")  # an enforced volume counts its filesystem's blocks


def test_a_volume_in_use_is_not_removed_and_a_removed_one_is_gone(subject: Subject) -> None:
    rt, volume = subject.runtime, _volume(subject, enforced=True)
    container = _container_id(subject, _start(subject, volumes=(volume,)))
    assert rt.stop(container) is True  # stopped, kept: it still holds the volume
    assert rt.inspect(container) is not None
    with pytest.raises(VolumeInUse):
        rt.remove_volume(VOLUME_ID)
    rt.remove(container)
    assert rt.remove_volume(VOLUME_ID) is True
    assert VOLUME_ID not in rt.owned_volumes()
    assert rt.remove_volume(VOLUME_ID) is False
    assert rt.stop(container) is False
    with pytest.raises(VolumeStorageMissing):  # lost data is never replaced by an empty volume
        _start(subject, volumes=(volume,))


def test_an_enforced_volume_refuses_writes_past_its_size(subject: Subject) -> None:
    volume = _volume(subject, enforced=True, size_mb=1)
    container = _container_id(subject, _start(subject, volumes=(volume,)))
    subject.fill(container, "/data/small", 100 * 1024)
    with pytest.raises(OSError) as refused:
        subject.fill(container, "/data/big", 2 * 2**20)
    assert refused.value.errno == errno.ENOSPC


def test_a_container_restarted_after_a_reboot_has_its_volume_again(subject: Subject) -> None:
    rt, volume = subject.runtime, _volume(subject, enforced=True)
    container = _container_id(subject, _start(subject, volumes=(volume,)))
    subject.write_file(container, "/data/notes.txt", "before the reboot")
    subject.stop_behind_our_back(container)
    subject.reboot_volumes()
    again = rt.restart(container)
    assert again.running and again.volumes == (VOLUME_ID,)
    assert subject.read_file(container, "/data/notes.txt") == "before the reboot"
