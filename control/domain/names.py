"""Name rules: tenant and app names become DNS labels in ``<app>.<tenant>.<domain>``."""

from __future__ import annotations

import re

from control.domain.errors import Invalid

_DNS_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
RULE = "lowercase letters, digits and '-', 1 to 63 characters, starting and ending with a letter or digit"


def check_dns_label(field: str, value: str) -> str:
    if not _DNS_LABEL.match(value):
        raise Invalid(
            f"'{field}' must be a DNS label ({RULE}); got {value!r}.",
            errors=[{"field": field, "message": f"must be a DNS label: {RULE}"}],
        )
    return value
