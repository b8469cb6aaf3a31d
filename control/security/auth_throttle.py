"""Failed authentication, throttled per client address.

Every API key or node token that fails to authenticate (unknown, wrong secret, revoked,
expired) counts against the address it came from: at most ``quota`` failures per moving
``window`` seconds (the same moving-window limiter as the API rate limits, so no interval
of ``window`` seconds holds more than ``quota`` counted failures). A request without any
credential is not a guess and is not counted.

Once an address is over its budget, credentials from it are *not checked* until failures
age out of the window: the answer is 429 ``auth-throttled`` with ``Retry-After`` whether
the credential is right or wrong, so a throttled guesser learns nothing, not even from a
lucky guess. The one exception is a credential that already authenticated from that same
address in the last ``remember_s`` seconds: it is checked as usual, so the tenants and
nodes behind a shared address (a NAT, a proxy) who were already working keep working
while someone beside them guesses. Admitting those reveals nothing: a guesser can only
put a credential on that list by presenting it correctly before the throttle began.
What it costs: a valid credential used for the first time from a throttled address waits
out the window like a guess.

The address is the socket peer, or the client named by ``X-Forwarded-For`` when the
connection comes from a proxy in ``MOORAGE_TRUSTED_PROXIES`` (uvicorn resolves it, and
ignores the header from anyone else). An IPv6 address counts as its /64: one host
usually holds a whole /64, and per-address counting would hand it 2^64 budgets.

Memory is per process: one float per counted failure (the limiter's bound), and one digest
per (address, credential) that worked, dropped after ``remember_s``: at most
``_KNOWN_PER_ADDRESS`` per address and ``_MAX_ADDRESSES`` addresses, the least recently
successful dropped first. A caller with one valid key and many addresses (an IPv6 host
hopping /64s) therefore cannot grow it without bound; what a dropped address loses is only
its pass through a throttle that may never come.
"""

from __future__ import annotations

import hashlib
import ipaddress
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from control.domain.errors import Throttled
from control.security.rate_limit import Policy, SlidingWindowLimiter

REMEMBER_S = 24 * 3600.0
_KNOWN_PER_ADDRESS = 64  # credentials remembered per address (least recently used dropped)
_MAX_ADDRESSES = 65_536  # addresses remembered (least recently successful dropped): a few MiB at most
_SWEEP_EVERY = 1024


class AuthThrottle:
    def __init__(
        self,
        limiter: SlidingWindowLimiter,
        *,
        quota: int,
        window_s: float,
        remember_s: float = REMEMBER_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limiter, self.quota, self.window_s, self.remember_s = limiter, quota, window_s, remember_s
        self._clock = clock
        self._lock = threading.Lock()
        self._known: OrderedDict[str, OrderedDict[bytes, float]] = OrderedDict()
        self._successes = 0

    @property
    def enabled(self) -> bool:
        return self.quota > 0

    def admit(self, address: str, credential: str) -> None:
        """Raise Throttled when ``address`` is over its failure budget and ``credential``
        has not worked from it before; otherwise the caller checks the credential."""
        if not self.enabled:
            return
        address = client_bucket(address)
        decision = self.limiter.peek([self._policy(address)])
        if decision.admitted or self._is_known(address, credential):
            return
        raise Throttled(
            f"Too many failed authentications from this address ({self.quota} per {self.window_s:g} s): "
            "credentials from it are not checked until Retry-After seconds have passed. Check the key you send "
            "(`moorage whoami`); credentials that already worked from this address keep working.",
            retry_after_s=decision.retry_after_s,
        )

    def failed(self, address: str) -> None:
        if self.enabled:
            self.limiter.acquire([self._policy(client_bucket(address))])

    def succeeded(self, address: str, credential: str) -> None:
        if not self.enabled:
            return
        now, address = self._clock(), client_bucket(address)
        digest = _digest(credential)
        with self._lock:
            known = self._known.setdefault(address, OrderedDict())
            self._known.move_to_end(address)
            known[digest] = now
            known.move_to_end(digest)
            while len(known) > _KNOWN_PER_ADDRESS:
                known.popitem(last=False)
            while len(self._known) > _MAX_ADDRESSES:
                self._known.popitem(last=False)
            self._successes += 1
            if self._successes % _SWEEP_EVERY == 0:
                self._sweep(now)

    def _is_known(self, address: str, credential: str) -> bool:
        with self._lock:
            known = self._known.get(address)
            seen = None if known is None else known.get(_digest(credential))
            return seen is not None and self._clock() - seen < self.remember_s

    def footprint(self) -> tuple[int, int]:
        """(addresses, credentials) remembered now: what the memory bound is about."""
        with self._lock:
            return len(self._known), sum(len(known) for known in self._known.values())

    def _sweep(self, now: float) -> None:
        for address, known in list(self._known.items()):
            while known and now - next(iter(known.values())) >= self.remember_s:
                known.popitem(last=False)
            if not known:
                del self._known[address]

    def _policy(self, address: str) -> Policy:
        return Policy("auth-failures", f"auth-failures:{address}", self.quota, self.window_s)


def client_bucket(address: str) -> str:
    """What one client's failures are counted under: its IPv4 address, its IPv6 /64."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address  # not an IP (a test client, a Unix socket): itself
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{ip}/64", strict=False))
    return str(ip)


def _digest(credential: str) -> bytes:
    # Credentials carry 128+ random bits, so a plain hash is enough to recognise one again.
    return hashlib.sha256(credential.encode()).digest()
