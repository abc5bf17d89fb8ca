"""Who is calling (an API key's account, or the shared anonymous one on loopback) and how
often they may: a token bucket per account."""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

ANONYMOUS_USER_ID = 0  # no Discord user and no API key has it


@dataclass(frozen=True, slots=True)
class Account:
    user_id: int
    key_id: int | None  # None: anonymous
    operator: bool = False  # may read the operator dashboard


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@dataclass(frozen=True, slots=True)
class Allowance:
    allowed: bool
    limit: int
    remaining: int
    reset_s: int  # seconds until the bucket is full again
    retry_after_s: int  # when refused: seconds until one request is allowed


class RateLimiter:
    """``per_minute`` requests a minute per account, in bursts of up to ``per_minute``."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = per_minute
        self.rate = per_minute / 60.0
        self._clock = clock
        self._buckets: dict[int, tuple[float, float]] = {}  # user id -> (tokens, at)

    def take(self, user_id: int) -> Allowance:
        now = self._clock()
        tokens, at = self._buckets.get(user_id, (float(self.capacity), now))
        tokens = min(float(self.capacity), tokens + (now - at) * self.rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[user_id] = (tokens, now)
        if len(self._buckets) > 10_000:  # forget the longest-idle full buckets
            self._forget_full(now)
        return Allowance(
            allowed=allowed,
            limit=self.capacity,
            remaining=int(tokens),
            reset_s=math.ceil((self.capacity - tokens) / self.rate),
            retry_after_s=0 if allowed else math.ceil((1.0 - tokens) / self.rate),
        )

    def _forget_full(self, now: float) -> None:
        full_after = self.capacity / self.rate
        self._buckets = {
            user: (tokens, at)
            for user, (tokens, at) in self._buckets.items()
            if now - at < full_after
        }
