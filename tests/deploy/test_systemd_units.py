"""deploy/systemd/: the units a production host runs, checked three ways: their key
directives (hardening, user, paths) read from the files; ``systemd-analyze verify`` where
it is installed; and deploy/install-units.sh run for real in a throwaway container (a fake
``systemctl`` records what it is asked), as on a fresh systemd host."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import docker
import pytest

from control.cli.main import build_parser
from inference.engine.policy import SupervisorPolicy
from tests.runtime.helpers import PYTHON, RUN_ID, RUN_LABEL

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "deploy" / "systemd"
DATA_DIR, ROUTE_DIR = "/var/lib/moorage/control", "/var/lib/moorage/traefik/dynamic"


def directives(unit: str) -> dict[str, dict[str, list[str]]]:
    """section -> key -> every value (keys like Environment= repeat), continuations joined."""
    text = re.sub(r"\\\n\s*", " ", (UNITS / unit).read_text())
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


def one(service: dict[str, list[str]], key: str) -> str:
    assert len(service.get(key, [])) == 1, f"{key}= should be set once: {service.get(key)}"
    return service[key][0]


def environment(service: dict[str, list[str]]) -> dict[str, str]:
    return dict(item.split("=", 1) for value in service.get("Environment", []) for item in shlex.split(value))


HARDENED = {"NoNewPrivileges": "true", "ProtectSystem": "strict", "ProtectHome": "true", "PrivateTmp": "true", "UMask": "0077"}


@pytest.mark.parametrize("unit", ["moorage.service", "moorage-node@.service"])
def test_units_run_as_moorage_and_are_hardened(unit: str) -> None:
    service = directives(unit)["Service"]
    assert one(service, "User") == "moorage" and one(service, "Group") == "moorage"
    for key, value in HARDENED.items():
        assert one(service, key) == value, key
    assert one(service, "CapabilityBoundingSet") == "" and one(service, "AmbientCapabilities") == ""
    assert directives(unit)["Install"]["WantedBy"] == ["multi-user.target"]


def test_the_control_plane_unit_serves_with_its_own_data_dir_and_the_docker_socket() -> None:
    service = directives("moorage.service")["Service"]
    command = shlex.split(one(service, "ExecStart"))
    assert command[0] == "/opt/moorage/venv/bin/moorage"
    assert build_parser().parse_args(command[1:]).command == "serve"
    env = environment(service)
    assert env["MOORAGE_DATA_DIR"] == DATA_DIR and env["MOORAGE_TRAEFIK_DYNAMIC_DIR"] == ROUTE_DIR
    # Writable: exactly its data and the route files; the Docker socket through the group.
    assert one(service, "ReadWritePaths").split() == [DATA_DIR, ROUTE_DIR]
    assert one(service, "SupplementaryGroups") == "docker"
    assert "root-equivalent" in (UNITS / "moorage.service").read_text()
    assert "docker.service" in one(directives("moorage.service")["Unit"], "After")


def test_the_node_unit_starts_the_named_node_and_lets_it_drain() -> None:
    service = directives("moorage-node@.service")["Service"]
    assert one(service, "EnvironmentFile") == "/etc/moorage/node-%i.env"  # the instance is the node's name
    sample = {"MOORAGE_NODE_ENGINE": "vllm", "MOORAGE_NODE_MODEL": "/srv/m", "MOORAGE_NODE_PORT": "8000"}
    sample |= {"MOORAGE_CONTROL_URL": "http://10.0.0.1:7800", "MOORAGE_NODE_ARGS": "--served-model-name q --max-model-len 4096"}
    expanded = re.sub(r"\$\{?(\w+)\}?", lambda m: sample[m.group(1)], one(service, "ExecStart"))
    command = shlex.split(expanded)
    assert command[0] == "/opt/moorage/venv/bin/moorage"
    args = build_parser().parse_args(command[1:])  # every flag is one `moorage node run` takes
    assert (args.engine, args.port, args.control_url, args.max_model_len) == ("vllm", 8000, "http://10.0.0.1:7800", 4096)
    # SIGTERM to the supervisor alone, and time for its whole drain before systemd's SIGKILL.
    assert one(service, "KillMode") == "mixed"
    policy = SupervisorPolicy()
    assert int(one(service, "TimeoutStopSec")) > policy.drain_grace_s + policy.terminate_timeout_s
    assert environment(service)["HOME"].startswith("%S/moorage/nodes/%i")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verifies_the_units(tmp_path: Path) -> None:
    """Unknown keys, bad values and missing sections are all reported; only the executables
    differ on a host not set up yet, so they point at one that exists."""
    for unit in UNITS.glob("*.service"):
        text = unit.read_text().replace("/opt/moorage/venv/bin/moorage", sys.executable)
        (tmp_path / unit.name).write_text(text.replace("/usr/local/bin/traefik", sys.executable))
    names = ["moorage.service", "moorage-node@gpu1.service", "moorage-traefik.service"]
    verified = subprocess.run(
        ["systemd-analyze", "verify", *names], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
    )
    assert verified.returncode == 0 and verified.stdout + verified.stderr == "", verified.stdout + verified.stderr


FAKE_SYSTEMCTL = """#!/bin/sh
echo "$*" >>/fake/systemctl.log
[ "$1" = is-active ] && exit 3
exit 0
"""


@pytest.mark.docker
def test_install_units_on_a_fresh_systemd_host() -> None:
    """The user, its 0700 data dir, the route dir handed to it, the units with this host's
    paths; nothing started unless asked; a second run changes nothing."""
    stamp = f"{hashlib.sha256((REPO / 'pyproject.toml').read_bytes()).hexdigest()} /src"
    script = f"""set -eu
mkdir -p /run/systemd/system /fake /opt/moorage/venv /etc/systemd/system
printf '%s' {shlex.quote(FAKE_SYSTEMCTL)} >/usr/local/bin/systemctl && chmod +x /usr/local/bin/systemctl
echo {shlex.quote(stamp)} >/opt/moorage/venv/.moorage-installed  # the venv is there: no pip
export MOORAGE_CONTROL_DATA_DIR=/srv/moorage
bash /src/deploy/install-units.sh >/fake/first.log
bash /src/deploy/install-units.sh >/fake/second.log
MOORAGE_START_CONTROL_PLANE=1 bash /src/deploy/install-units.sh >/fake/third.log
python3 - <<'PY'
import json, os, pwd, subprocess
owner = lambda p: (pwd.getpwuid(os.stat(p).st_uid).pw_name, oct(os.stat(p).st_mode & 0o777))
print(json.dumps({{
    "user": pwd.getpwnam("moorage").pw_shell,
    "data": owner("/srv/moorage"), "routes": owner("/var/lib/moorage/traefik/dynamic"),
    "unit": open("/etc/systemd/system/moorage.service").read(),
    "node_unit": os.path.exists("/etc/systemd/system/moorage-node@.service"),
    **{{name: open(f"/fake/{{name}}.log").read() for name in ("first", "second", "third", "systemctl")}},
}}))
PY
"""
    client = docker.from_env()
    # runc: Debian's 2022 runsc answers coreutils' statx() with EINVAL, so `stat` (which the
    # script's idempotence rests on) fails inside it. The container runs only this script.
    try:
        out = client.containers.run(
            PYTHON, ["bash", "-c", script], volumes={str(REPO): {"bind": "/src", "mode": "ro"}},
            runtime="runc", network_disabled=True, labels={RUN_LABEL: RUN_ID}, remove=True,
        )  # fmt: skip
    finally:
        client.close()
    seen = json.loads(out.decode().strip().splitlines()[-1])
    assert seen["user"] == "/usr/sbin/nologin"
    assert seen["data"] == ["moorage", "0o700"] and seen["routes"] == ["moorage", "0o755"]
    assert "Environment=MOORAGE_DATA_DIR=/srv/moorage\n" in seen["unit"]  # this host's path
    assert "ReadWritePaths=/srv/moorage /var/lib/moorage/traefik/dynamic\n" in seen["unit"]
    assert "Documentation=file:///src/deploy/README.md" in seen["unit"] and seen["node_unit"]
    assert "changed: created system user moorage" in seen["first"]
    assert seen["second"].rstrip().endswith("done: nothing changed"), seen["second"]
    # Installed, reloaded, not started; then started when asked, once.
    assert seen["systemctl"].splitlines() == ["daemon-reload", "is-active --quiet moorage", "enable --now moorage"]
    assert "changed: started moorage.service" in seen["third"]
