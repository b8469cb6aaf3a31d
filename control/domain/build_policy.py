"""The build policy: what a tenant's Dockerfile may name before the daemon builds it.

dockerd builds with the host's powers. It resolves ``FROM 2106`` (an image-id prefix) against
every image on the host, and fetches ``ADD http://127.0.0.1:.../`` from the host's network.
So every Dockerfile is checked first:

- ``FROM`` and ``COPY/ADD --from`` (and ``RUN --mount=from=``) may name only ``scratch``, an
  earlier stage of the same Dockerfile, an image of the operator's base-image allow-list, or
  one of the tenant's own images by full name. Image ids, digests of other images, other
  tenants' repositories and anything else are refused.
- ``ADD <url>`` is refused: a download belongs in a ``RUN`` step, inside the build sandbox.

The Dockerfile that is built is the one that was checked: its logical lines are split the
way dockerd's parser splits them (line continuations, comments, blank lines, no heredocs in
the classic builder), and that canonical text is what goes to the daemon. Words, quotes and
variable substitution come from ``dockerfile-parse``; ARG/ENV values are tracked per stage
with dockerd's rules. A non-default escape directive is refused rather than reinterpreted.

Each stage also gets a ``LABEL`` naming the tenant right after its ``FROM``: the classic
builder's cache is a chain of parent images, so from that step on the chain is the tenant's
own and a cache hit never crosses tenants (nor confirms another tenant's files).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from dockerfile_parse.util import WordSplitter, extract_key_values

from control.domain import image_refs
from control.domain.image_refs import BadReference, ImageRef

LINEAGE_LABEL = "moorage.build-lineage"
REMOTE_ADD_HINT = (
    "download it in a RUN step instead, which runs inside the build sandbox "
    "(e.g. RUN curl -fsSL -o /dest/file <url>), or add the file to the source"
)
_INSTRUCTIONS = {
    "from",
    "run",
    "cmd",
    "label",
    "maintainer",
    "expose",
    "env",
    "add",
    "copy",
    "entrypoint",
    "volume",
    "user",
    "workdir",
    "arg",
    "onbuild",
    "stopsignal",
    "healthcheck",
    "shell",
}
_ESCAPE_DIRECTIVE = re.compile(r"#[ \t]*escape[ \t]*=[ \t]*(.).*", re.IGNORECASE)
_CONTINUATION = re.compile(r"\\[ \t]*$")
_ARG_SPLIT = re.compile(r"[\t\v\f\r ]+")
_VARIABLE = re.compile(r"\$(\{)?([A-Za-z_][A-Za-z0-9_]*)?(:?[-+?])?")
_STAGE_NAME = re.compile(r"[a-z][a-z0-9-_.]*")
# Anywhere in the word: after flags dockerd may read the rest as JSON (`["http://...", "/x"]`).
_URLISH = re.compile(r"""[a-z][a-z0-9+.-]*://|^[\["' ]*(git@|github\.com/)""", re.IGNORECASE)


def _go_space(ch: str) -> bool:
    """unicode.IsSpace in Go, which dockerd's parser trims with (Python's isspace also
    counts the separators U+001C..U+001F)."""
    return ch.isspace() and ch not in "\x1c\x1d\x1e\x1f"


def _lstrip(text: str) -> str:
    i = 0
    while i < len(text) and _go_space(text[i]):
        i += 1
    return text[i:]


def _strip(text: str) -> str:
    text = _lstrip(text)
    j = len(text)
    while j and _go_space(text[j - 1]):
        j -= 1
    return text[:j]


class DockerfileRefused(Exception):
    """The Dockerfile breaks the build policy; ``problems`` says what to change, line by line."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(self.reason)

    @property
    def reason(self) -> str:
        return "the Dockerfile was refused by the build policy, nothing was built: " + "; ".join(self.problems)


@dataclass(frozen=True)
class Line:
    number: int  # 1-based line of the Dockerfile where the instruction starts
    text: str  # the logical line as dockerd sees it (continuations joined), left-trimmed


def logical_lines(text: str) -> list[Line]:
    """dockerd's line rules: a BOM is dropped; lines split on LF only (a CR before it
    dropped); blank lines and lines whose first non-space character is ``#`` are skipped,
    even inside a continuation; a line ending in ``\\`` (then spaces/tabs) continues."""
    raw = text.split("\n")
    if raw and raw[0].startswith("\ufeff"):
        raw[0] = raw[0][1:]
    physical = [line[:-1] if line.endswith("\r") else line for line in raw]
    lines: list[Line] = []
    current: str | None = None
    start = 0
    for number, line in enumerate(physical, start=1):
        stripped = _lstrip(line)
        if not stripped or stripped.startswith("#"):
            continue
        if current is None:
            current, start = stripped, number
        else:
            current += line
        if _CONTINUATION.search(current):
            current = _CONTINUATION.sub("", current, count=1)
            continue
        lines.append(Line(start, current))
        current = None
    if current is not None:
        lines.append(Line(start, current))
    return lines


def _escape_directive(text: str) -> str | None:
    """Any escape directive at all, wherever it is: a superset of where dockerd honours one."""
    for line in text.lstrip("\ufeff").split("\n"):
        match = _ESCAPE_DIRECTIVE.fullmatch(_strip(line.rstrip("\r")))
        if match and match.group(1) != "\\":
            return match.group(1)
    return None


@dataclass
class _Stage:
    index: int
    name: str | None
    args: dict[str, str] = field(default_factory=dict)  # declared in this stage
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class BuildPolicy:
    """``allowed_images``: the operator's base images (an entry with a tag allows that tag,
    one without allows the whole repository). ``own_repository``: the prefix of the tenant's
    own images (``moorage-apps/<tenant id>/``). ``lineage``: the tenant id for the cache label."""

    allowed_images: tuple[str, ...]
    own_repository: str
    lineage: str
    build_args: Mapping[str, str] = field(default_factory=dict)

    def check(self, dockerfile: str) -> str:
        """The Dockerfile to build (canonical, with the lineage labels), or DockerfileRefused."""
        return _Checker(self).run(dockerfile)

    def allowed_text(self) -> str:
        names = ", ".join(self.allowed_images) or "(none)"
        return (
            f"use one of the platform's base images ({names}), 'scratch', an earlier stage of this "
            f"Dockerfile, or one of your own images by its full name ({self.own_repository}<app>:<deployment>)"
        )


class _Checker:
    def __init__(self, policy: BuildPolicy) -> None:
        self.policy = policy
        self.allowed = [image_refs.parse(entry) for entry in policy.allowed_images]
        self.own = policy.own_repository.rstrip("/") + "/"
        self.problems: list[str] = []
        self.global_args: dict[str, str] = {}
        self.stages: list[_Stage] = []

    def run(self, text: str) -> str:
        escape = _escape_directive(text)
        if escape is not None:
            raise DockerfileRefused(
                [f"the escape directive '# escape={escape}' is not supported here; remove it and use the default '\\'"]
            )
        out: list[str] = []
        lines = logical_lines(text)
        if not lines:
            raise DockerfileRefused(["the Dockerfile has no instructions; start it with FROM"])
        lineage = f"LABEL {LINEAGE_LABEL}={json.dumps(self.policy.lineage)}"
        for line in lines:
            keyword, rest = self._split(line)
            if line.text == lineage and out and out[-1] == lineage:
                continue  # checked before (a retried build): the label is added once
            out.append(line.text)
            if keyword == "from":
                self._from(line, rest)
                out.append(lineage)
            elif not self.stages and keyword != "arg":
                self._refuse(line, f"{keyword.upper()} before the first FROM; only ARG may come before FROM")
            else:
                self._instruction(line, keyword, rest, onbuild=False)
        for text_line in out:  # what the daemon reads must split into exactly these lines
            if _CONTINUATION.search(text_line) or "\n" in text_line:
                raise DockerfileRefused([f"could not make a safe copy of the line {text_line[:60]!r}"])
        if self.problems:
            raise DockerfileRefused(self.problems)
        return "\n".join(out) + "\n"

    # -- helpers ----------------------------------------------------------------------
    def _refuse(self, line: Line, message: str) -> None:
        self.problems.append(f"line {line.number}: {message}")

    def _split(self, line: Line) -> tuple[str, str]:
        parts = _ARG_SPLIT.split(_strip(line.text), maxsplit=1)
        return parts[0].lower(), parts[1] if len(parts) > 1 else ""

    def _known(self) -> dict[str, str]:
        if not self.stages:
            return dict(self.global_args)
        stage = self.stages[-1]
        return {**stage.args, **stage.env}

    def _words(self, rest: str) -> list[str]:
        return list(WordSplitter(rest).split(dequote=False))

    def _value(self, line: Line, raw: str, what: str, known: Mapping[str, str]) -> str | None:
        """A word as dockerd will read it (quotes removed, variables substituted); None if
        it uses a variable this Dockerfile does not define, or a substitution modifier."""
        if "$" in raw:
            for match in _VARIABLE.finditer(raw):
                braced, name, modifier = match.group(1), match.group(2), match.group(3)
                if (braced and modifier) or name is None or not raw.isascii():
                    self._refuse(line, f"{what} {raw!r}: write it without ${{...:-...}} forms or special variables")
                    return None
                if name not in known:
                    self._refuse(
                        line, f"{what} {raw!r} uses ${name}, which this Dockerfile does not define with ARG or ENV before it"
                    )
                    return None
        value: str = WordSplitter(raw, args=dict(known), envs={}).dequote()  # dockerfile-parse is untyped
        return value

    def _flags(self, words: list[str]) -> tuple[dict[str, str], list[str]]:
        """Leading ``--name=value`` words (dockerd reads flags before the arguments, quotes
        removed); repeated flags are all kept under name#n."""
        flags: dict[str, str] = {}
        index = 0
        while index < len(words):
            word = WordSplitter(words[index]).dequote()
            if not word.startswith("--"):
                break
            name, _, value = word[2:].partition("=")
            key = name.lower()
            while key in flags:
                key += "#"
            flags[key] = value
            index += 1
        return flags, words[index:]

    # -- FROM ---------------------------------------------------------------------------
    def _from(self, line: Line, rest: str) -> None:
        index = len(self.stages)
        flags, words = self._flags(self._words(rest))
        for name in flags:
            if name.rstrip("#") != "platform":
                self._refuse(line, f"FROM --{name.rstrip('#')} is not supported; only --platform is")
        stage_name = None
        if len(words) == 3 and WordSplitter(words[1]).dequote().lower() == "as":
            stage_name = WordSplitter(words[2]).dequote().lower()
            if not _STAGE_NAME.fullmatch(stage_name):
                self._refuse(line, f"stage name {stage_name!r} must start with a letter (a-z, 0-9, -, _, .)")
        elif len(words) != 1:
            self._refuse(line, "FROM takes an image and optionally 'AS <stage name>'")
            self.stages.append(_Stage(index, None))
            return
        image = self._value(line, words[0], "FROM", self.global_args)
        if image is not None:
            self._source(line, "FROM", image, stages_before=index, onbuild=False)
        self.stages.append(_Stage(index, stage_name))

    def _stage(self, name: str, stages_before: int, *, by_index: bool) -> bool:
        """An earlier stage, by name (case-insensitive, as dockerd compares) or, for --from
        only, by index; FROM never takes an index (dockerd would read it as an image)."""
        earlier = self.stages[:stages_before]
        if any(s.name == name.lower() for s in earlier):
            return True
        return by_index and name.isdigit() and int(name) < stages_before

    def _source(self, line: Line, what: str, value: str, *, stages_before: int, onbuild: bool) -> None:
        """``value`` names an image (FROM, --from): is this tenant allowed to build from it?"""
        if not onbuild and self._stage(value, stages_before, by_index=what != "FROM"):
            return
        if value == "scratch" and what == "FROM":
            return
        if image_refs.looks_like_image_id(value) or value.isdigit():
            self._refuse(
                line,
                f"{what} {value}: image ids (or prefixes of them) are not allowed, and no earlier "
                f"stage has that name; {self.policy.allowed_text()}",
            )
            return
        try:
            ref = image_refs.parse(value)
        except BadReference as exc:
            self._refuse(line, f"{what}: {exc}; {self.policy.allowed_text()}")
            return
        if self._own(ref) or any(image_refs.matches(entry, ref) for entry in self.allowed):
            return
        if ref.domain == image_refs.DEFAULT_DOMAIN and ref.path.startswith("moorage-apps/"):
            self._refuse(line, f"{what} {value}: that image belongs to another tenant; {self.policy.allowed_text()}")
            return
        self._refuse(
            line,
            f"{what} {value}: not in the platform's base-image allow-list "
            f"(MOORAGE_BUILD_ALLOWED_IMAGES); {self.policy.allowed_text()}",
        )

    def _own(self, ref: ImageRef) -> bool:
        return (
            ref.domain == image_refs.DEFAULT_DOMAIN
            and ref.digest is None
            and ref.path.startswith(self.own)
            and ref.path.count("/") == self.own.count("/")
        )

    # -- every other instruction ------------------------------------------------------
    def _instruction(self, line: Line, keyword: str, rest: str, *, onbuild: bool) -> None:
        if keyword not in _INSTRUCTIONS:
            self._refuse(line, f"unknown instruction {keyword.upper()!r}")
            return
        if keyword == "onbuild":
            inner = _ARG_SPLIT.split(_strip(rest), maxsplit=1)
            inner_keyword, inner_rest = inner[0].lower(), inner[1] if len(inner) > 1 else ""
            if onbuild or inner_keyword in ("onbuild", "from", "maintainer"):
                self._refuse(line, f"ONBUILD {inner_keyword.upper()} is not allowed")
            else:
                self._instruction(line, inner_keyword, inner_rest, onbuild=True)
            return
        if keyword in ("arg", "env"):
            self._assign(line, keyword, rest, onbuild)
        elif keyword in ("copy", "add"):
            self._copy(line, keyword, rest, onbuild)
        elif keyword == "run":
            self._run(line, rest, onbuild)

    def _assign(self, line: Line, keyword: str, rest: str, onbuild: bool) -> None:
        if onbuild or not _strip(rest):
            return
        known = self._known()
        pairs: list[tuple[str, str | None]] = []
        try:
            if keyword == "env":
                pairs = list(extract_key_values(env_replace=True, args=known, envs={}, instruction_value=rest))
            else:  # ARG a=1 b: each word is a name or name=default (defaults are substituted)
                for word in self._words(rest):
                    key, eq, default = word.partition("=")
                    pairs.append((key, WordSplitter(default, args=dict(known), envs={}).dequote() if eq else None))
        except (ValueError, IndexError) as exc:
            self._refuse(line, f"{keyword.upper()}: {exc}")
            return
        for key, value in pairs:
            key = WordSplitter(key).dequote()
            if keyword == "env":
                self.stages[-1].env[key] = value or ""
                continue
            if key in self.policy.build_args:
                value = self.policy.build_args[key]
            if not self.stages:
                self.global_args[key] = value or ""
            elif value is None:  # a stage's bare ARG takes the global default, if any
                self.stages[-1].args[key] = self.global_args.get(key, "")
            else:
                self.stages[-1].args[key] = value

    def _copy(self, line: Line, keyword: str, rest: str, onbuild: bool) -> None:
        words = self._words(rest)
        flags, args = self._flags(words)
        what = keyword.upper()
        for name, value in flags.items():
            if name.rstrip("#") == "from":
                resolved = self._value(line, value, f"{what} --from", self._known())
                if resolved is not None:
                    self._source(line, f"{what} --from", resolved, stages_before=len(self.stages) - 1, onbuild=onbuild)
        if keyword != "add":
            return
        text = _strip(rest)
        sources: list[str]
        if not flags and text.startswith("["):
            try:
                parsed = json.loads(text)
                sources = [str(s) for s in parsed[:-1]] if isinstance(parsed, list) else args[:-1]
            except ValueError:
                sources = args[:-1]
        else:
            sources = args[:-1]
        for raw in sources:
            source = self._value(line, raw, "ADD source", self._known())
            if source is not None and (_URLISH.search(source) or _URLISH.search(raw)):
                self._refuse(
                    line,
                    f"ADD {source.strip('[],')}: downloading from a URL with ADD is not allowed (the daemon would "
                    f"fetch it from the host's network); {REMOTE_ADD_HINT}",
                )

    def _run(self, line: Line, rest: str, onbuild: bool) -> None:
        flags, _ = self._flags(self._words(rest))
        for name, value in flags.items():
            if name.rstrip("#") != "mount":
                continue
            for option in value.split(","):
                key, _, source = option.partition("=")
                if key.strip().lower() == "from":
                    resolved = self._value(line, source, "RUN --mount from", self._known())
                    if resolved is not None:
                        self._source(line, "RUN --mount from", resolved, stages_before=len(self.stages) - 1, onbuild=onbuild)
