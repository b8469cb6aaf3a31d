"""The `moorage.` labels that identify what moorage created, and the name rules behind them.

Labels are the only tenant knowledge the runtime has: they let the reconciler find, and the
tests clean up, everything moorage owns.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from runtime.settings import LABEL_PREFIX

MANAGED = f"{LABEL_PREFIX}managed"
TENANT = f"{LABEL_PREFIX}tenant"
APP = f"{LABEL_PREFIX}app"
RELEASE = f"{LABEL_PREFIX}release"
ROLE = f"{LABEL_PREFIX}role"
BUILD_OF = f"{LABEL_PREFIX}build-of"  # on a build's network: the build it serves

# The runtime's one DNS-label rule. Matched whole: with re.match, `$` lets a trailing newline in.
_DNS_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def is_dns_label(value: object) -> bool:
    return isinstance(value, str) and _DNS_LABEL.fullmatch(value) is not None


def dns_label(value: str, what: str) -> str:
    """Tenant and app names end up in hostnames, network and container names."""
    if not is_dns_label(value):
        raise ValueError(f"{what} {value!r} is not a DNS label (a-z, 0-9, '-', at most 63 chars)")
    return value


def moorage_labels(
    tenant: str,
    app: str | None = None,
    release: str | None = None,
    role: str | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    labels = {MANAGED: "true", TENANT: dns_label(tenant, "tenant")}
    if app is not None:
        labels[APP] = dns_label(app, "app")
    if release is not None:
        labels[RELEASE] = release
    if role is not None:
        labels[ROLE] = role
    for key, value in (extra or {}).items():
        if key.startswith(LABEL_PREFIX):  # identity labels are ours alone: no spoofing a tenant
            raise ValueError(f"label {key!r} uses the reserved prefix {LABEL_PREFIX!r}")
        labels[key] = value
    return labels


def selector(**labels: str) -> list[str]:
    """Docker `label=` filters for moorage labels given by short name: selector(tenant='a')."""
    return [f"{MANAGED}=true", *(f"{LABEL_PREFIX}{k}={v}" for k, v in labels.items())]
