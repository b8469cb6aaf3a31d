"""Step containers of a cut-off build are removed on retry, and a build cannot name any
other container into that removal: the ids come from the same stream as the tenant's own
RUN output, so a forged `` ---> Running in <id>`` line must not remove an app container
or one that existed before the build."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from control.jobs import runtime_docker
from control.jobs.runtime_docker import noting_step_containers, remove_leftovers
from runtime.containers import Containers
from runtime.docker_engine import DockerEngine
from runtime.resilience import BreakerRegistry
from runtime.settings import RuntimeSettings
from tests.runtime.helpers import BUSYBOX, RUN_ID, RUN_LABEL

pytestmark = pytest.mark.docker


@pytest.fixture
def client() -> Iterator[docker.DockerClient]:
    c = docker.from_env()
    yield c
    for leftover in c.containers.list(all=True, filters={"label": f"{RUN_LABEL}={RUN_ID}"}):
        leftover.remove(force=True)
    c.close()


def _container(client: docker.DockerClient, **labels: str) -> str:
    made = client.containers.create(BUSYBOX, ["true"], labels={RUN_LABEL: RUN_ID, **labels})  # never started: like a step cut off
    return made.id


def test_only_step_containers_created_during_that_build_are_removed(
    client: docker.DockerClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    containers = Containers(DockerEngine(RuntimeSettings(), registry=BreakerRegistry()))
    # A smaller slack: the same rule, checked without waiting out the real five seconds.
    monkeypatch.setattr(runtime_docker, "CLOCK_SLACK_S", 1.0)
    older = _container(client)  # existed before the build: a forged line must not remove it
    time.sleep(2)  # beyond the clock slack
    app = _container(client, **{"moorage.managed": "true", "moorage.role": "app"})
    shown: list[str] = []
    line = noting_step_containers(tmp_path, shown.append)
    step = _container(client)  # the build's own step container
    for container_id in (step, app[:12], older):
        line(f" ---> Running in {container_id}")
    line("Step 3/4 : RUN echo hi")  # ordinary lines are passed on, not noted
    line(" ---> Running in 0123456789ab")  # a step container the build already removed

    assert len(shown) == 5
    assert remove_leftovers(tmp_path, containers) == [step[:12]]
    remaining = {c.id for c in client.containers.list(all=True, filters={"label": f"{RUN_LABEL}={RUN_ID}"})}
    assert remaining == {older, app}
    assert not (tmp_path / "build-containers").exists()  # handled once: the next attempt starts clean
    assert remove_leftovers(tmp_path, containers) == []
