"""Where an engine may listen. vLLM's --api-key leaves /health, /metrics, /tokenize and
/invocations open, and `transformers serve` has no authentication at all, so engines
listen on loopback or private addresses and the control plane's gateway authenticates."""

from __future__ import annotations

import ipaddress


class UnsafeBindAddress(ValueError):
    pass


def check_bind_host(host: str, *, allow_public: bool = False) -> str:
    """Return `host` if it is loopback/private; refuse wildcard and public addresses
    unless `allow_public` (an operator's explicit choice, e.g. behind a firewall)."""
    if allow_public or host == "localhost":
        return host
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise UnsafeBindAddress(f"engine host {host!r} is not an IP address: use 127.0.0.1 or a private address") from None
    if address.is_unspecified:
        raise UnsafeBindAddress(
            f"engine host {host} listens on every interface and the engine's endpoints are "
            "unauthenticated: bind 127.0.0.1 or a private address, or allow it explicitly"
        )
    if not (address.is_loopback or address.is_private):
        raise UnsafeBindAddress(f"engine host {host} is a public address: bind loopback or a private address")
    return host
