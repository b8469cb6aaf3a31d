"""The operator's CA bundle, piece by piece: only certificates pass (a key is refused), the
host's roots come first, builds get it through their context and the Dockerfile that is
built, containers through a read-only mount and env vars their own env vars override.
Certificates and keys are real ones made by openssl."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from control.settings import Settings, SettingsError
from runtime import ca_bundle
from runtime.ca_bundle import CONTEXT_NAME, ENV_NAMES, TARGET, CaBundleError
from runtime.sandbox import ContainerSpec, SandboxPolicy, create_kwargs
from runtime.settings import RuntimeSettings


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ca")
    for name in ("one", "two"):
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN=moorage test {name}",
             "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.crt")],
            check=True, capture_output=True,
        )  # fmt: skip
    (d / "both.pem").write_bytes(b"# the proxy's CA\n" + (d / "one.crt").read_bytes() + (d / "two.crt").read_bytes())
    (d / "with-key.pem").write_bytes((d / "one.crt").read_bytes() + (d / "one.key").read_bytes())
    return {"dir": d, **{p.name: p for p in d.iterdir()}}


def test_only_certificate_blocks_pass_normalised(made: dict[str, Path]) -> None:
    blocks = ca_bundle.certificates(made["both.pem"].read_bytes(), source="x")
    assert len(blocks) == 2 and all(b.startswith(b"-----BEGIN CERTIFICATE-----\n") for b in blocks)
    assert b"# the proxy" not in b"".join(blocks)
    assert blocks[0] == made["one.crt"].read_bytes()  # openssl's own 64-column PEM, unchanged


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ("with-key.pem", "holds a private key"),
        ("one.key", "holds a private key"),
        (b"just text\n", "holds no PEM certificate"),
        (b"-----BEGIN CERTIFICATE-----\nnot*base64\n-----END CERTIFICATE-----\n", "no PEM certificate"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "not a DER certificate"),
    ],
)
def test_what_is_not_a_bundle_is_refused_without_quoting_it(made: dict[str, Path], content, why: str) -> None:
    pem = made[content].read_bytes() if isinstance(content, str) else content
    with pytest.raises(CaBundleError, match=why) as refused:
        ca_bundle.certificates(pem, source="the file")
    assert "MII" not in str(refused.value)  # nothing of the file's contents


def test_the_host_roots_come_first_and_duplicates_go(made: dict[str, Path], tmp_path: Path) -> None:
    system = made["one.crt"]
    data = ca_bundle.combined(made["both.pem"], system)
    assert data == made["one.crt"].read_bytes() + made["two.crt"].read_bytes()
    assert ca_bundle.combined(made["two.crt"], tmp_path / "none.crt") == made["two.crt"].read_bytes()
    dest = ca_bundle.write_combined(made["both.pem"], tmp_path / "ca" / "bundle.crt", system)
    assert dest.read_bytes() == data and oct(dest.stat().st_mode & 0o777) == "0o644"
    with pytest.raises(CaBundleError, match="cannot be read"):
        ca_bundle.combined(tmp_path / "missing.pem")


def test_settings_refuse_a_bundle_with_a_key_at_startup(made: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="holds a private key"):
        Settings.from_env({"MOORAGE_BUILD_CA_BUNDLE": str(made["with-key.pem"]), "MOORAGE_DATA_DIR": str(tmp_path)})
    settings = Settings(build_ca_bundle=str(made["both.pem"]), data_dir=tmp_path)
    assert settings.ca_bundle_file == tmp_path / "ca" / "ca-certificates.crt"
    assert Settings(data_dir=tmp_path).ca_bundle_file is None


COPY_LINE = f"COPY {CONTEXT_NAME} {TARGET}"
ARG_LINE = "ARG " + " ".join(f"{n}={TARGET}" for n in ENV_NAMES)


def test_every_stage_gets_the_bundle_after_its_lineage_label_and_only_once() -> None:
    text = "\n".join(
        ["ARG BASE=moorage/python:3-bookworm", "FROM $BASE AS build", 'LABEL moorage.build-lineage="ten_1"', "RUN pip install x",
         "from scratch", 'LABEL moorage.build-lineage="ten_1"', "COPY --from=build /x /x", ""]
    )  # fmt: skip
    done = ca_bundle.inject_into_dockerfile(text)
    assert done.split("\n") == [
        "ARG BASE=moorage/python:3-bookworm",
        "FROM $BASE AS build",
        'LABEL moorage.build-lineage="ten_1"',
        COPY_LINE,
        ARG_LINE,
        "RUN pip install x",
        "from scratch",
        'LABEL moorage.build-lineage="ten_1"',
        COPY_LINE,
        ARG_LINE,
        "COPY --from=build /x /x",
        "",
    ]
    assert ca_bundle.inject_into_dockerfile(done) == done  # a retried build adds nothing
    assert ca_bundle.inject_into_dockerfile("FROM x\nRUN y") == f"FROM x\n{COPY_LINE}\n{ARG_LINE}\nRUN y"


def test_the_context_gets_the_bundle_past_the_tenants_dockerignore(made: dict[str, Path], tmp_path: Path) -> None:
    context = tmp_path / "src"
    context.mkdir()
    (context / "Dockerfile").write_text("FROM moorage/busybox:latest\n")
    (context / ".dockerignore").write_text("*\n!app.py")
    (context / CONTEXT_NAME).symlink_to("/etc/shadow")  # the tenant's own file of the reserved name
    ca_bundle.prepare_context(context, "Dockerfile", made["both.pem"])
    assert not (context / CONTEXT_NAME).is_symlink()
    assert (context / CONTEXT_NAME).read_bytes() == made["both.pem"].read_bytes()
    assert (context / ".dockerignore").read_text() == f"*\n!app.py\n!{CONTEXT_NAME}\n"
    assert (context / "Dockerfile").read_text() == f"FROM moorage/busybox:latest\n{COPY_LINE}\n{ARG_LINE}\n"
    ca_bundle.prepare_context(context, "Dockerfile", made["both.pem"])  # again: nothing more
    assert (context / ".dockerignore").read_text().count(CONTEXT_NAME) == 1
    (context / ".dockerignore").unlink()
    (context / ".dockerignore").symlink_to("/etc/passwd")
    with pytest.raises(CaBundleError, match="regular file"):
        ca_bundle.prepare_context(context, "Dockerfile", made["both.pem"])


def test_containers_get_the_bundle_read_only_and_env_their_own_vars_override(made: dict[str, Path]) -> None:
    settings = RuntimeSettings(ca_bundle=made["both.pem"])
    spec = ContainerSpec(tenant="t", app="web", image="img", network="net", env={"PIP_CERT": "/mine.pem", "PORT": "8080"})
    kwargs = create_kwargs(spec, SandboxPolicy(), settings)
    assert kwargs["volumes"] == {str(made["both.pem"]): {"bind": TARGET, "mode": "ro"}}
    assert kwargs["environment"] == {**dict.fromkeys(ENV_NAMES, TARGET), "PIP_CERT": "/mine.pem", "PORT": "8080"}
    plain = create_kwargs(spec, SandboxPolicy(), RuntimeSettings())
    assert "volumes" not in plain and plain["environment"] == {"PIP_CERT": "/mine.pem", "PORT": "8080"}


def test_a_retried_build_checks_and_prepares_the_same_dockerfile_to_the_same_text() -> None:
    from control.domain.build_policy import BuildPolicy

    policy = BuildPolicy(allowed_images=("moorage/python:3-bookworm",), own_repository="moorage-apps/ten_1/", lineage="ten_1")
    tenant = 'FROM moorage/python:3-bookworm AS base\nRUN pip install flask\nFROM base\nCMD ["flask"]\n'
    first = ca_bundle.inject_into_dockerfile(policy.check(tenant))
    again = ca_bundle.inject_into_dockerfile(policy.check(first))  # the job's second attempt reads the rewritten file
    assert again == first and first.count(COPY_LINE) == 2 and first.count("moorage.build-lineage") == 2
    assert first.split("\n")[:4] == [
        "FROM moorage/python:3-bookworm AS base",
        'LABEL moorage.build-lineage="ten_1"',
        COPY_LINE,
        ARG_LINE,
    ]
