"""The in-process rate limiter: per token and per user, requests at once, windows and growing delays."""

import pytest

from chatgate.errors import RateLimited
from chatgate.services.auth import MASTER, Principal, UserLimits
from chatgate.services.ratelimit import LocalRateLimiter, attempt_delay


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_users_requests_per_minute_count_across_all_of_its_tokens() -> None:
    limiter = LocalRateLimiter()
    first = Principal(user_id=1, token_id=1, user=UserLimits(rpm=3))
    second = Principal(user_id=1, token_id=2, user=UserLimits(rpm=3))
    for caller in (first, second, first):
        await limiter.admit(caller)
    with pytest.raises(RateLimited, match="requests per minute on this account") as refused:
        await limiter.admit(second)
    assert refused.value.headers["x-ratelimit-remaining-requests"] == "0"
    other_user = Principal(user_id=2, token_id=3, user=UserLimits(rpm=3))
    await limiter.admit(other_user)  # another user's count is its own


async def test_a_tokens_own_limit_is_checked_within_its_users() -> None:
    limiter = LocalRateLimiter()
    tight = Principal(user_id=1, token_id=1, rpm_limit=1, user=UserLimits(rpm=10))
    decision = await limiter.admit(tight)
    assert decision.rpm == 1 and decision.headers()["x-ratelimit-remaining-requests"] == "0"  # the tighter
    with pytest.raises(RateLimited, match="on this API token"):
        await limiter.admit(tight)


async def test_tokens_per_minute_count_for_the_user_when_requests_end() -> None:
    limiter = LocalRateLimiter()
    caller = Principal(user_id=1, token_id=1, user=UserLimits(tpm=100))
    await limiter.admit(caller)
    await limiter.add_tokens(caller, 100)
    with pytest.raises(RateLimited, match="tokens per minute on this account"):
        await limiter.admit(Principal(user_id=1, token_id=2, user=UserLimits(tpm=100)))


async def test_requests_at_once_hold_a_slot_until_they_end() -> None:
    limiter = LocalRateLimiter()
    caller = Principal(user_id=1, token_id=1, user=UserLimits(concurrency=2))
    await limiter.admit(caller)
    await limiter.admit(caller)
    with pytest.raises(RateLimited, match="at most 2 may run at a time") as refused:
        await limiter.admit(caller)
    assert refused.value.retry_after == 1
    await limiter.add_tokens(caller, 0)  # one ends (refused later, failed, or done)
    await limiter.admit(caller)
    with pytest.raises(RateLimited):
        await limiter.admit(caller)


async def test_a_refused_request_counts_nothing() -> None:
    limiter = LocalRateLimiter()
    caller = Principal(user_id=1, token_id=1, user=UserLimits(rpm=5, concurrency=1))
    await limiter.admit(caller)
    for _ in range(10):
        with pytest.raises(RateLimited):
            await limiter.admit(caller)  # at once: refused, and not counted as a request
    await limiter.add_tokens(caller, 0)
    decision = await limiter.admit(caller)
    assert decision.requests == 2


async def test_the_master_key_is_not_limited() -> None:
    limiter = LocalRateLimiter()
    for _ in range(100):
        assert (await limiter.admit(MASTER)).headers() == {}


async def test_a_sliding_window_admits_n_an_hour() -> None:
    clock = Clock()
    limiter = LocalRateLimiter(clock=clock)
    assert [await limiter.hit("signup:a", 2, 3600) for _ in range(2)] == [None, None]
    wait = await limiter.hit("signup:a", 2, 3600)
    assert wait == pytest.approx(3600)
    assert await limiter.hit("signup:b", 2, 3600) is None  # another key
    clock.now += 3600.5
    assert await limiter.hit("signup:a", 2, 3600) is None


def test_delays_double_after_the_free_attempts_up_to_the_ceiling() -> None:
    assert [attempt_delay(n, 3, 300) for n in range(3)] == [0, 0, 0]
    assert [attempt_delay(n, 3, 300) for n in range(3, 8)] == [1, 2, 4, 8, 16]
    assert attempt_delay(50, 3, 300) == 300
    assert attempt_delay(10**6, 3, 300) == 300


async def test_attempts_wait_longer_each_time_and_a_success_forgives() -> None:
    clock = Clock()
    limiter = LocalRateLimiter(clock=clock)
    for _ in range(3):
        assert await limiter.attempt("login:x", free=3, max_delay=60) is None
    assert await limiter.attempt("login:x", free=3, max_delay=60) == pytest.approx(1)
    clock.now += 1
    assert await limiter.attempt("login:x", free=3, max_delay=60) is None  # the 4th, after 1 s
    assert await limiter.attempt("login:x", free=3, max_delay=60) == pytest.approx(2)
    clock.now += 2
    assert await limiter.attempt("login:x", free=3, max_delay=60) is None
    assert await limiter.attempt("login:x", free=3, max_delay=60) == pytest.approx(4)
    await limiter.forgive("login:x")
    assert await limiter.attempt("login:x", free=3, max_delay=60) is None


async def test_the_delay_runs_from_when_the_last_attempt_failed() -> None:
    clock = Clock()
    limiter = LocalRateLimiter(clock=clock)
    assert await limiter.attempt("login:y", free=1, max_delay=60) is None
    clock.now += 5  # a slow check
    await limiter.failed("login:y")
    assert await limiter.attempt("login:y", free=1, max_delay=60) == pytest.approx(1)


async def test_a_success_can_take_back_just_its_own_attempt() -> None:
    limiter = LocalRateLimiter(clock=Clock())
    for _ in range(3):
        assert await limiter.attempt("login:addr", free=3, max_delay=60) is None
    await limiter.forgive("login:addr", attempts=1)  # the third was a success
    assert await limiter.attempt("login:addr", free=3, max_delay=60) is None
    assert await limiter.attempt("login:addr", free=3, max_delay=60) is not None
