"""The rate limiter shared through a real Redis: two limiters are two replicas."""

import asyncio
import time
from collections.abc import Iterator

import pytest

from chatgate.errors import RateLimited, Unavailable
from chatgate.services.auth import Principal, UserLimits
from chatgate.services.ratelimit import UNLIMITED
from chatgate.services.ratelimit_redis import RedisRateLimiter
from tests.e2e import infra


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with infra.redis() as server:
        yield server.url


def user(user_id: int, token_id: int, **limits: int) -> Principal:
    return Principal(user_id=user_id, token_id=token_id, user=UserLimits(**limits))


async def test_a_users_limits_hold_across_replicas_and_tokens(redis_url: str) -> None:
    a, b = RedisRateLimiter(redis_url), RedisRateLimiter(redis_url)
    uid = time.time_ns()
    try:
        await a.admit(user(uid, 1, rpm=3))
        await b.admit(user(uid, 2, rpm=3))
        await a.admit(user(uid, 2, rpm=3))
        with pytest.raises(RateLimited, match="requests per minute on this account"):
            await b.admit(user(uid, 1, rpm=3))
        token = Principal(user_id=uid + 2, token_id=uid, rpm_limit=2, user=UserLimits(rpm=100))
        await a.admit(token)
        await b.admit(token)
        with pytest.raises(RateLimited, match="requests per minute on this API token"):
            await a.admit(token)
        caller = user(uid + 1, 1, tpm=50)
        await a.admit(caller)
        await a.add_tokens(caller, 50)
        with pytest.raises(RateLimited, match="tokens per minute on this account"):
            await b.admit(user(uid + 1, 2, tpm=50))
    finally:
        await a.aclose()
        await b.aclose()


async def test_a_slot_is_taken_until_its_request_ends_on_any_replica(redis_url: str) -> None:
    a, b = RedisRateLimiter(redis_url), RedisRateLimiter(redis_url)
    caller = user(time.time_ns(), 1, concurrency=2)
    try:
        await a.admit(caller)
        await b.admit(caller)
        with pytest.raises(RateLimited, match="at most 2 may run at a time"):
            await a.admit(caller)
        await b.add_tokens(caller, 0)
        await a.admit(caller)
        with pytest.raises(RateLimited):
            await b.admit(caller)
    finally:
        await a.aclose()
        await b.aclose()


async def test_the_slots_of_a_replica_that_died_are_freed_when_their_lease_runs_out(redis_url: str) -> None:
    caller = user(time.time_ns(), 1, concurrency=1)
    dead, alive = RedisRateLimiter(redis_url, lease_seconds=3), RedisRateLimiter(redis_url, lease_seconds=3)
    renewed = RedisRateLimiter(redis_url, lease_seconds=3)
    other = user(time.time_ns() + 1, 1, concurrency=1)
    try:
        await dead.admit(caller)
        await renewed.admit(other)  # a live replica's request, running past several leases
        await dead.aclose()  # dies: no release, no renewal
        with pytest.raises(RateLimited):
            await alive.admit(caller)  # its lease still runs
        deadline = time.monotonic() + 30
        while True:
            try:
                await alive.admit(caller)
                break
            except RateLimited:
                assert time.monotonic() < deadline, "the dead replica's slot was never freed"
                await asyncio.sleep(0.5)
        with pytest.raises(RateLimited):
            await alive.admit(other)  # renewed all along: still taken
    finally:
        await alive.aclose()
        await renewed.aclose()


async def test_windows_and_attempts_are_shared(redis_url: str) -> None:
    a, b = RedisRateLimiter(redis_url), RedisRateLimiter(redis_url)
    key = f"signup:{time.time_ns()}"
    try:
        assert await a.hit(key, 2) is None and await b.hit(key, 2) is None
        wait = await a.hit(key, 2)
        assert wait is not None and 3590 < wait <= 3600
        login = f"login:{time.time_ns()}"
        assert await a.attempt(login, free=1, max_delay=60) is None
        wait = await b.attempt(login, free=1, max_delay=60)
        assert wait is not None and 0 < wait <= 1
        await b.failed(login)  # the delay runs from now
        wait = await a.attempt(login, free=1, max_delay=60)
        assert wait is not None and 0.5 < wait <= 1
        await b.forgive(login, attempts=1)  # one attempt taken back: the first is free again
        assert await a.attempt(login, free=1, max_delay=60) is None
        assert await a.attempt(login, free=1, max_delay=60) is not None
        await b.forgive(login)
        assert await a.attempt(login, free=1, max_delay=60) is None
    finally:
        await a.aclose()
        await b.aclose()


async def test_without_redis_limits_fail_open_or_closed_as_set() -> None:
    url = f"redis://127.0.0.1:{infra.free_port()}/0"  # nothing listens there
    caller = user(1, 1, rpm=1, concurrency=1)
    fail_open, fail_closed = RedisRateLimiter(url), RedisRateLimiter(url, fail_closed=True)
    try:
        assert await fail_open.admit(caller) is UNLIMITED
        await fail_open.add_tokens(caller, 10)
        assert await fail_open.hit("signup:x", 1) is None
        with pytest.raises(Unavailable) as refused:
            await fail_closed.admit(caller)
        assert refused.value.code == "limits_unavailable" and refused.value.retry_after == 1
        with pytest.raises(Unavailable):
            await fail_closed.attempt("login:x", free=1, max_delay=1)
    finally:
        await fail_open.aclose()
        await fail_closed.aclose()
