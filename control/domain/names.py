"""Every rule for a name that a caller, an operator or a client can choose, one rule per kind.

Each rule matches the *whole* value (``fullmatch``). ``re.match(r"...$")`` is not enough:
``$`` also matches just before a final newline, so ``"web\\n"`` would pass, reach hostnames,
container environments and logs, and break them.

Kinds: DNS labels (tenant, app and database names), env var names, release names, resource
ids, idempotency keys, request ids, master key ids, and free-text labels (key names, display
names, node and model names), which may hold spaces and any letter but no control, line or
bidirectional-override character.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from control.domain.errors import Invalid

# C0 and C1 controls, DEL, the Unicode line/paragraph separators and the bidi embeddings,
# overrides and isolates: characters that split log lines or make text read differently.
_UNSAFE_TEXT = "\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069"


@dataclass(frozen=True)
class NameRule:
    kind: str
    pattern: re.Pattern[str]
    rule: str  # for people: what a valid value looks like
    max_chars: int | None = None  # where the pattern alone does not bound the length

    def accepts(self, value: object) -> bool:
        if not isinstance(value, str) or (self.max_chars is not None and len(value) > self.max_chars):
            return False
        return self.pattern.fullmatch(value) is not None

    def check(self, field: str, value: str, what: str | None = None) -> str:
        """``value`` if it follows the rule, else 422 naming ``field`` (the value shown escaped)."""
        if not self.accepts(value):
            raise Invalid(
                f"'{field}' must be {what or self.kind} ({self.rule}); got {str(value)[:80]!r}. Fix it and retry.",
                errors=[{"field": field, "message": f"must be {what or self.kind}: {self.rule}"}],
            )
        return value


def _text(kind: str, max_chars: int, *, min_chars: int = 0) -> NameRule:
    return NameRule(
        kind,
        re.compile(f"[^{_UNSAFE_TEXT}]{{{min_chars},{max_chars}}}"),
        f"{min_chars} to {max_chars} characters, no control or line-break characters",
    )


DNS_LABEL = NameRule(
    "a DNS label",
    re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"),
    "lowercase letters, digits and '-', 1 to 63 characters, starting and ending with a letter or digit",
)
ENV_NAME = NameRule(
    "an environment variable name",
    re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}"),
    "letters, digits and '_', not starting with a digit, at most 255 characters",
)
RELEASE_NAME = NameRule("a release name", re.compile(r"v([1-9][0-9]{0,8})"), "'v' and a number: v1, v2, ...")
RESOURCE_ID = NameRule(
    "a resource id", re.compile(r"[a-z]{2,5}_[0-9a-hjkmnp-tv-z]{26}"), "a type prefix, '_' and 26 base32 characters"
)
IDEMPOTENCY_KEY = NameRule(
    "an Idempotency-Key",
    re.compile(r"[\x20-\x7e]*[\x21-\x7e][\x20-\x7e]*"),
    "1 to 255 printable ASCII characters, not only spaces (a UUID is a good choice)",
    max_chars=255,
)
REQUEST_ID = NameRule("a request id", re.compile(r"[A-Za-z0-9._:-]{1,128}"), "1 to 128 of A-Z a-z 0-9 . _ : -")
MASTER_KEY_ID = NameRule(
    "a master key id",
    re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"),
    "1 to 64 of A-Z a-z 0-9 . _ -, starting with a letter or digit",
)
KEY_NAME = _text("a key name", 100)
DISPLAY_NAME = _text("a display name", 200)
NODE_NAME = _text("a node name", 100, min_chars=1)
MODEL_NAME = _text("a model name", 200, min_chars=1)

RULES: tuple[NameRule, ...] = (
    DNS_LABEL,
    ENV_NAME,
    RELEASE_NAME,
    RESOURCE_ID,
    IDEMPOTENCY_KEY,
    REQUEST_ID,
    MASTER_KEY_ID,
    KEY_NAME,
    DISPLAY_NAME,
    NODE_NAME,
    MODEL_NAME,
)
RULE = DNS_LABEL.rule  # kept for callers that quote the DNS label rule


def check_dns_label(field: str, value: str) -> str:
    return DNS_LABEL.check(field, value)


# Host objects the platform makes for no tenant (the environment pool's containers) carry a
# tenant label of this form, so no tenant may be named so.
RESERVED_TENANT_PREFIX = "moorage-"


def check_tenant_name(field: str, value: str) -> str:
    check_dns_label(field, value)
    if value.startswith(RESERVED_TENANT_PREFIX):
        message = f"must not start with '{RESERVED_TENANT_PREFIX}': the platform names its own objects so"
        raise Invalid(f"'{field}' {message}; pick another name.", errors=[{"field": field, "message": message}])
    return value
