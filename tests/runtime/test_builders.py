"""Builders: selection, the missing-nixpacks error, and the Nixpacks path through a
STAND-IN executable (tests/runtime/stand_in_nixpacks: Nixpacks cannot be installed here;
the stand-in follows the documented `nixpacks build SRC --out OUT` contract)."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.builders import BuilderUnavailable, BuildRequest, select_builder
from runtime.builders.dockerfile import DockerfileBuilder
from runtime.builders.nixpacks import NixpacksBuilder
from runtime.images import BuildError, Images
from tests.runtime.helpers import tenant_name

STAND_IN = str(Path(__file__).with_name("stand_in_nixpacks"))


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.mark.parametrize(
    ("choice", "files", "expected"),
    [
        ("auto", {"Dockerfile": "FROM x", "main.py": ""}, "dockerfile"),
        ("auto", {"main.py": ""}, "nixpacks"),
        ("auto", {"sub/Dockerfile": "FROM x"}, "nixpacks"),  # only a Dockerfile at the root counts
        ("nixpacks", {"Dockerfile": "FROM x"}, "nixpacks"),  # an explicit choice wins
        ("dockerfile", {"main.py": ""}, "dockerfile"),
    ],
)
def test_builder_selection(tmp_path: Path, choice: str, files: dict[str, str], expected: str) -> None:
    assert select_builder(choice, _tree(tmp_path, files)) == expected


def test_unknown_builder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        select_builder("buildpacks", tmp_path)


def test_missing_nixpacks_says_how_to_install_it(tmp_path: Path) -> None:
    builder = NixpacksBuilder(images=None, binary="nixpacks-definitely-not-installed")  # type: ignore[arg-type]
    request = BuildRequest(source=_tree(tmp_path / "src", {"main.py": ""}), tag="t:1", tenant="a", app="b", timeout=10)
    with pytest.raises(BuilderUnavailable) as error:
        builder.build(request)
    message = str(error.value)
    assert "nixpacks CLI is not installed" in message and "nixpacks.com" in message
    assert "MOORAGE_NIXPACKS_BIN" in message and "Dockerfile" in message


@pytest.mark.docker
def test_stand_in_nixpacks_builds_an_image_honouring_nixpacks_toml(tmp_path: Path, images: Images) -> None:
    src = _tree(
        tmp_path / "src",
        {
            "main.py": "print('hello from nixpacks app')\n",
            "nixpacks.toml": '[start]\ncmd = "python3 main.py --from-toml"\n',
        },
    )
    tenant = tenant_name("nix")
    tag = f"moorage-test/nix-{tenant}:1"
    lines: list[str] = []
    request = BuildRequest(source=src, tag=tag, tenant=tenant, app="app", timeout=120, on_line=lines.append, work_dir=tmp_path)
    try:
        built = NixpacksBuilder(images, binary=STAND_IN).build(request)
        assert built.builder == "nixpacks" and built.image_id.startswith("sha256:")
        assert any("stand-in nixpacks" in line for line in lines)  # the CLI's output reached the sink
        assert any("Step 1/" in line for line in lines)  # then the docker build's
        assert (tmp_path / "nixpacks-out" / ".nixpacks" / "Dockerfile").is_file()
        cmd = images.engine.client.images.get(tag).attrs["Config"]["Cmd"]
        assert cmd == ["sh", "-c", "python3 main.py --from-toml"]  # nixpacks.toml's start command
    finally:
        images.remove(tag, force=True)


class _NoDocker:
    def build_stream(self, *args: object, **kwargs: object) -> None:
        raise AssertionError("a refused Dockerfile must never reach the daemon")


def test_the_dockerfile_nixpacks_writes_goes_through_the_callers_policy(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src", {"main.py": "print(1)\n"})
    seen: list[str] = []

    def refuse(text: str) -> str:
        seen.append(text)
        raise PermissionError("refused by policy")

    request = BuildRequest(source=src, tag="t:1", tenant="a", app="b", timeout=30, work_dir=tmp_path, prepare_dockerfile=refuse)
    with pytest.raises(PermissionError):
        NixpacksBuilder(_NoDocker(), binary=STAND_IN).build(request)  # type: ignore[arg-type]
    assert seen and seen[0].startswith("FROM moorage/python:3-bookworm")


def test_the_built_dockerfile_is_the_text_the_policy_returned(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src", {"Dockerfile": "FROM x\n"})
    calls: list[tuple] = []

    class Recording:
        def build_stream(self, context: Path, tag: str, **kwargs: object):
            calls.append((context, (context / str(kwargs["dockerfile"])).read_text()))
            return "sha256:" + "0" * 64
            yield  # a generator, like Images.build_stream

    request = BuildRequest(
        source=src, tag="t:1", tenant="a", app="b", timeout=30, prepare_dockerfile=lambda text: text + "LABEL checked=1\n"
    )
    DockerfileBuilder(Recording()).build(request)  # type: ignore[arg-type]
    assert calls == [(src, "FROM x\nLABEL checked=1\n")]
    (src / "Dockerfile").unlink()
    (src / "Dockerfile").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere").write_text("FROM y\n")
    with pytest.raises(BuildError, match="regular file"):
        DockerfileBuilder(Recording()).build(request)  # type: ignore[arg-type]
    assert (tmp_path / "elsewhere").read_text() == "FROM y\n"  # a link's target is never rewritten


def test_with_a_ca_bundle_the_built_dockerfile_copies_it_after_the_policys_text(tmp_path: Path) -> None:
    from runtime.ca_bundle import CONTEXT_NAME, TARGET

    src = tmp_path / "src"
    src.mkdir()
    (src / "Dockerfile").write_text("FROM x\nRUN pip install flask\n")
    bundle = tmp_path / "bundle.crt"
    bundle.write_bytes(b"-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n")
    calls: list[str] = []

    class Recording:
        def build_stream(self, context: Path, tag: str, **kwargs: object):
            calls.append((context / str(kwargs["dockerfile"])).read_text())
            return "sha256:" + "0" * 64
            yield  # a generator, like Images.build_stream

    policy_saw: list[str] = []
    request = BuildRequest(
        source=src, tag="t:1", tenant="a", app="b", timeout=30, prepare_dockerfile=lambda t: policy_saw.append(t) or t
    )
    DockerfileBuilder(Recording(), ca_bundle=bundle).build(request)  # type: ignore[arg-type]
    assert policy_saw == ["FROM x\nRUN pip install flask\n"]  # the policy judged the tenant's own text
    [built] = calls
    assert built.startswith(f"FROM x\nCOPY {CONTEXT_NAME} {TARGET}\nARG SSL_CERT_FILE={TARGET} ") and built.endswith(
        "RUN pip install flask\n"
    )
    assert (src / CONTEXT_NAME).read_bytes() == bundle.read_bytes()
