"""The API's rate limiter (a token bucket per account) and who counts as this machine."""

from __future__ import annotations

from api.accounts import RateLimiter, is_loopback


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_up_to_the_limit_then_one_request_per_refill() -> None:
    clock = Clock()
    limiter = RateLimiter(per_minute=3, clock=clock)
    taken = [limiter.take(1) for _ in range(4)]
    assert [allowance.allowed for allowance in taken] == [True, True, True, False]
    assert [allowance.remaining for allowance in taken] == [2, 1, 0, 0]
    assert taken[-1].retry_after_s == 20  # one token every 60 / 3 s
    assert limiter.take(2).allowed  # another account has its own bucket
    clock.now += 19.9
    assert not limiter.take(1).allowed
    clock.now += 0.2
    assert limiter.take(1).allowed
    clock.now += 3600
    full = limiter.take(1)
    assert full.remaining == 2 and full.reset_s == 20  # never more than the limit saved up


def test_only_loopback_addresses_are_this_machine() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("127.8.9.10")
    assert not is_loopback("10.0.0.5") and not is_loopback("192.168.1.2")
    assert not is_loopback(None) and not is_loopback("") and not is_loopback("example.com")
