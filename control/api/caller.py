"""The caller as a dependency: handlers of tenant routes take ``caller_tenant: str``, the
tenant of the key that made the request (operator keys get 403, as the access guard says)."""

from __future__ import annotations

from typing import Any

from litestar import Request

from control.domain.keys import require_tenant
from control.security.principal import Principal


def caller_tenant(request: Request[Any, Principal, Any]) -> str:
    return require_tenant(request.user)
