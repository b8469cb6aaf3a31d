"""The build policy on many Dockerfile shapes, no Docker: what a tenant may name in FROM,
COPY/ADD --from and RUN --mount, what ADD may fetch, and the canonical text that is built."""

from __future__ import annotations

import pytest

from control.domain import image_refs
from control.domain.build_policy import (
    LINEAGE_LABEL,
    BuildPolicy,
    DockerfileRefused,
    logical_lines,
)
from control.settings import Settings, SettingsError

POLICY = BuildPolicy(
    allowed_images=("moorage/python:3-bookworm", "moorage/busybox:latest", "python"),
    own_repository="moorage-apps/acme/",
    lineage="ten_acme",
)
PY = "moorage/python:3-bookworm"
VICTIM_ID = "2106f3b0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8"


def refused(dockerfile: str) -> str:
    with pytest.raises(DockerfileRefused) as caught:
        POLICY.check(dockerfile)
    return caught.value.reason


ALLOWED = {
    "plain": f'FROM {PY}\nWORKDIR /app\nCOPY app.py /app/\nCMD ["python3", "app.py"]\n',
    "lower-case keyword": f"from {PY}\nrun echo hi\n",
    "docker.io spelled out": "FROM docker.io/moorage/busybox:latest\n",
    "index.docker.io": "FROM index.docker.io/moorage/busybox:latest\n",
    "no tag means latest": "FROM moorage/busybox\n",
    "repository-wide entry, any tag": "FROM python:3.12-slim\nFROM docker.io/library/python:3.11\n",
    "repository-wide entry, a digest": "FROM python@sha256:" + "ab" * 32 + "\n",
    "scratch": "FROM scratch\nCOPY app /app\n",
    "own image": "FROM moorage-apps/acme/web:dep_01abc\n",
    "platform flag": f"FROM --platform=linux/amd64 {PY}\n",
    "ARG before FROM": f"ARG BASE={PY}\nFROM $BASE\nFROM ${{BASE}}\n",
    "quoted image": f'FROM "{PY}"\n',
    "earlier stage by name": f"FROM {PY} AS Build\nRUN make\nFROM scratch\nCOPY --from=build /out /out\nCOPY --from=BUILD /a /b\n",
    "earlier stage by index": f"FROM {PY}\nFROM scratch\nCOPY --from=0 /out /out\n",
    "FROM an earlier stage": f"FROM {PY} AS base\nFROM base AS final\n",
    "stage name shadowing an image": f"FROM {PY} AS python\nFROM python\n",
    "COPY --from own image": f"FROM {PY}\nCOPY --from=moorage-apps/acme/lib:dep_1 /lib /lib\n",
    "ADD of a local file": f'FROM {PY}\nADD app.tar.gz /app/\nADD ["a b.txt", "/x"]\n',
    "comments and continuations": f"# a comment\nFROM \\\n  {PY}\nRUN apt-get update && \\\n# inside\n    apt-get install -y curl\n",
    "escape directive, default": f"# escape=\\\nFROM {PY}\n",
    "stage ARG overrides the variable": f"ARG S=0\nFROM {PY}\nFROM scratch\nARG S=0\nCOPY --from=$S /a /a\n",
    "a RUN that downloads": f"FROM {PY}\nRUN curl -fsSL -o /x http://example.com/x\n",
    "ONBUILD of a safe step": f"FROM {PY}\nONBUILD COPY . /app\n",
}


@pytest.mark.parametrize("dockerfile", ALLOWED.values(), ids=ALLOWED.keys())
def test_allowed_dockerfiles_pass_and_get_the_tenant_lineage_after_every_from(dockerfile: str) -> None:
    built = POLICY.check(dockerfile)
    lines = built.splitlines()
    froms = [i for i, line in enumerate(lines) if line.lower().startswith("from")]
    assert froms and all(lines[i + 1] == f'LABEL {LINEAGE_LABEL}="ten_acme"' for i in froms)
    assert not any(line.lstrip().startswith("#") for line in lines)  # the daemon reads only what was checked
    assert POLICY.check(built) == built  # a retried build checks its own output: unchanged


REFUSED = {
    "id prefix": ("FROM 2106\n", "image ids"),
    "long id prefix": (f"FROM {VICTIM_ID[:12]}\n", "image ids"),
    "full id": (f"FROM sha256:{VICTIM_ID}\n", "image ids"),
    "upper-case id prefix": ("FROM 2106ABC\n", "image ids"),
    "id via ARG": ("ARG B=2106\nFROM $B\n", "image ids"),
    "id via braced ARG": ("ARG B=2106\nFROM ${B}\n", "image ids"),
    "id quoted": ('FROM "2106"\n', "image ids"),
    "id with platform": ("FROM --platform=linux/amd64 2106\n", "image ids"),
    "digest of an allowed tag": (f"FROM moorage/busybox@sha256:{VICTIM_ID}\n", "allow-list"),
    "another tenant": ("FROM moorage-apps/victim/web:dep_1\n", "another tenant"),
    "another tenant whose name starts like ours": ("FROM moorage-apps/acme-corp/web:dep_1\n", "another tenant"),
    "a nested path under our repo": ("FROM moorage-apps/acme/web/x:dep_1\n", "another tenant"),
    "own repo on another registry": ("FROM localhost:5000/moorage-apps/acme/web:1\n", "allow-list"),
    "own image by digest": (f"FROM moorage-apps/acme/web@sha256:{VICTIM_ID}\n", "another tenant"),
    "other tag of an allowed image": ("FROM moorage/python:latest\n", "allow-list"),
    "unlisted image": ("FROM ubuntu:22.04\n", "allow-list"),
    "a loopback registry": ("FROM 127.0.0.1:7800/readyz\n", "allow-list"),
    "upper case": ("FROM Moorage/Python:3-bookworm\n", "not a valid image reference"),
    "undefined variable": ("FROM $NOPE\n", "does not define"),
    "substitution modifier": (f"FROM ${{B:-{PY}}}\n", "without"),
    "stage ARG overrides the global one": (
        f"ARG S=build\nFROM {PY} AS build\nFROM scratch\nARG S=2106\nCOPY --from=$S /a /a\n",
        "image ids",
    ),
    "COPY --from id": (f"FROM {PY}\nCOPY --from=2106 /app/app.py /x\n", "image ids"),
    "COPY --from quoted flag": (f'FROM {PY}\nCOPY "--from=2106" /app/app.py /x\n', "image ids"),
    "COPY --from a later stage": (f"FROM {PY}\nCOPY --from=later /a /b\nFROM {PY} AS later\n", "allow-list"),
    "COPY --from own stage index": (f"FROM {PY}\nCOPY --from=0 /a /b\n", "image ids"),
    "COPY --from stage index out of range": (f"FROM {PY}\nFROM scratch\nCOPY --from=5 /a /b\n", "image ids"),
    "FROM a stage index": (f"FROM {PY}\nFROM 0\n", "image ids"),
    "ADD --from": (f"FROM {PY}\nADD --from=moorage-apps/victim/web:1 /a /b\n", "another tenant"),
    "RUN --mount from": (f"FROM {PY}\nRUN --mount=type=bind,from=2106,target=/v cat /v/app/app.py\n", "image ids"),
    "ADD http": (f"FROM {PY}\nADD http://127.0.0.1:7800/readyz /x\n", "RUN curl"),
    "ADD https": (f"FROM {PY}\nADD https://169.254.169.254/latest/meta-data/ /x\n", "RUN curl"),
    "ADD upper-case scheme": (f"FROM {PY}\nADD HTTP://127.0.0.1/ /x\n", "RUN curl"),
    "ADD ftp": (f"FROM {PY}\nADD ftp://10.0.0.1/f /x\n", "RUN curl"),
    "ADD git": (f"FROM {PY}\nADD git@github.com:org/repo.git /src\n", "RUN curl"),
    "ADD URL in an ARG": (f"FROM {PY}\nARG U=http://127.0.0.1:7800/readyz\nADD $U /x\n", "RUN curl"),
    "ADD URL in an ENV": (f"FROM {PY}\nENV U http://127.0.0.1:7800/readyz\nADD ${{U}} /x\n", "RUN curl"),
    "ADD JSON form": (f'FROM {PY}\nADD ["http://127.0.0.1/x", "/y"]\n', "RUN curl"),
    "ADD JSON form after a flag": (f'FROM {PY}\nADD --chown=1 ["http://127.0.0.1/x", "/y"]\n', "RUN curl"),
    "ADD with a variable from the base image": (f"FROM {PY}\nADD $FROM_BASE /x\n", "does not define"),
    "ONBUILD ADD": (f"FROM {PY}\nONBUILD ADD http://127.0.0.1/ /x\n", "RUN curl"),
    "ONBUILD COPY --from a stage name": (f"FROM {PY} AS build\nONBUILD COPY --from=build /a /b\n", "allow-list"),
    "FROM hidden behind a comment's backslash": (f"FROM {PY}\n# comment \\\nFROM 2106\n", "image ids"),
    "FROM after a continued RUN with a blank line": (f"FROM {PY}\nRUN echo \\\n\nFROM 2106\n", None),
    "FROM after a CR-LF file": (f"FROM {PY}\r\nRUN echo hi\r\nFROM 2106\r\n", "image ids"),
    "FROM after a BOM": ("\ufeffFROM 2106\n", "image ids"),
    "a heredoc body is read as instructions": (f"FROM {PY}\nRUN <<EOF\nFROM 2106\nEOF\n", "image ids"),
    "backtick escape directive": (f"# escape=`\nFROM {PY}\nRUN echo \\\nFROM 2106\n", "escape directive"),
    "escape directive with spaces and case": (f"  #  ESCAPE = `\nFROM {PY}\n", "escape directive"),
    "instruction before FROM": ("RUN echo\nFROM scratch\n", "before the first FROM"),
    "unknown instruction": (f"FROM {PY}\nFETCH http://x\n", "unknown instruction"),
    "FROM with junk": (f"FROM {PY} AS a b\n", "FROM takes"),
    "FROM unknown flag": (f"FROM --pull=always {PY}\n", "--pull"),
    "empty": ("# only a comment\n\n", "no instructions"),
}


@pytest.mark.parametrize(("dockerfile", "says"), REFUSED.values(), ids=REFUSED.keys())
def test_refused_dockerfiles_say_what_to_change(dockerfile: str, says: str | None) -> None:
    if says is None:  # dockerd joins the FROM into the RUN; refusing it too is the safe side
        try:
            built = POLICY.check(dockerfile)
        except DockerfileRefused:
            return
        assert "2106" not in "".join(line for line in built.splitlines() if line.lower().startswith("from"))
        return
    reason = refused(dockerfile)
    assert (
        reason.startswith("the Dockerfile was refused by the build policy, nothing was built: line")
        or "escape" in reason
        or "no instructions" in reason
    )
    assert says in reason, reason


def test_a_refusal_names_the_line_and_every_problem_at_once() -> None:
    reason = refused(f"FROM {PY}\nRUN true\nCOPY --from=2106 /a /b\nADD http://127.0.0.1/x /y\n")
    assert "line 3: COPY --from 2106" in reason and "line 4: ADD http://127.0.0.1/x" in reason
    assert "moorage/python:3-bookworm" in reason and "moorage-apps/acme/<app>:<deployment>" in reason


def test_logical_lines_follow_dockerd() -> None:
    text = "FROM a \\\n  # note\n\n  b\nRUN x \\  \t\ny\r\nRUN z \\\u00a0\nLABEL k=v"
    assert [(line.number, line.text) for line in logical_lines(text)] == [
        (1, "FROM a   b"),
        (5, "RUN x y"),
        (7, "RUN z \\\u00a0"),
        (8, "LABEL k=v"),
    ]


def test_the_built_text_is_the_checked_text() -> None:
    built = POLICY.check(f"# syntax=docker/dockerfile:1\nFROM {PY} AS b\n\nRUN a \\\n  # note\n\n  && b\n")
    assert built == f'FROM {PY} AS b\nLABEL {LINEAGE_LABEL}="ten_acme"\nRUN a   && b\n'
    # dockerd skips a blank line inside a continuation: the next instruction joins the FROM
    assert "FROM takes" in refused(f"FROM {PY} AS b \\\n\nRUN a\n")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("python", ("docker.io", "library/python", None)),
        ("python:3", ("docker.io", "library/python", "3")),
        ("library/python:3", ("docker.io", "library/python", "3")),
        ("docker.io/library/python:3", ("docker.io", "library/python", "3")),
        ("moorage/python:3-bookworm", ("docker.io", "moorage/python", "3-bookworm")),
        ("localhost/x", ("localhost", "x", None)),
        ("localhost:5000/x:1", ("localhost:5000", "x", "1")),
        ("ghcr.io/railwayapp/nixpacks:ubuntu", ("ghcr.io", "railwayapp/nixpacks", "ubuntu")),
    ],
)
def test_image_references_normalise_like_dockerd(text: str, expected: tuple) -> None:
    ref = image_refs.parse(text)
    assert (ref.domain, ref.path, ref.tag) == expected


@pytest.mark.parametrize("text", ["", "UPPER", "a b", "x:", "a@sha256:zz", "-x", "a//b"])
def test_bad_image_references_are_refused(text: str) -> None:
    with pytest.raises(image_refs.BadReference):
        image_refs.parse(text)


def test_the_allow_list_is_a_setting_checked_at_startup() -> None:
    assert "moorage/python:3-bookworm" in Settings().allowed_images
    assert Settings.from_env({"MOORAGE_BUILD_ALLOWED_IMAGES": "python, ghcr.io/x/y:1"}).allowed_images == (
        "python",
        "ghcr.io/x/y:1",
    )
    with pytest.raises(SettingsError, match="MOORAGE_BUILD_ALLOWED_IMAGES"):
        Settings.from_env({"MOORAGE_BUILD_ALLOWED_IMAGES": "Not A Ref"})
