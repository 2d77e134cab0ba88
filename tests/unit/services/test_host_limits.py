"""Rate limits shared by a host's workers without Redis: a token's and a user's counts, a user's
requests at once, sign-ups per address and sign-in delays hold across processes."""

import asyncio
import multiprocessing
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from chatgate.errors import RateLimited
from chatgate.services.auth import Principal, UserLimits
from chatgate.services.host_limits import HostRateLimiter
from chatgate.services.ratelimit import window
from chatgate.storage.counters import CounterStore

TOKEN = Principal(user_id=1, token_id=7, rpm_limit=40, tpm_limit=None)


def _admitted(path: str, attempts: int, start: Any, results: Any) -> None:
    """One worker's share of a burst: how many of its attempts were admitted."""

    async def burst() -> int:
        limiter = HostRateLimiter(CounterStore(Path(path)))
        admitted = 0
        for _ in range(attempts):
            try:
                await limiter.admit(TOKEN)
                admitted += 1
            except RateLimited:
                pass
        await limiter.aclose()
        return admitted

    start.wait()
    results.put(asyncio.run(burst()))


def test_a_tokens_requests_per_minute_hold_across_processes(tmp_path: Path) -> None:
    """Three processes race for the same token's minute: exactly its limit gets through, in all."""
    left = window()[1]
    if left < 20:  # the burst (after the workers' start-up) must not straddle two minutes
        time.sleep(left + 0.5)
    # The workers of one host: separate processes. Spawned, not forked: a fork of this test process
    # (threads of earlier tests holding locks) could hang in the child before it ran anything.
    context = multiprocessing.get_context("spawn")
    start, results = context.Event(), context.Queue()
    path = str(tmp_path / "limits.db")
    workers = [context.Process(target=_admitted, args=(path, 25, start, results)) for _ in range(3)]
    for worker in workers:
        worker.start()
    start.set()
    admitted = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join()
    assert sum(admitted) == TOKEN.rpm_limit


async def test_tokens_per_minute_count_what_other_workers_used(tmp_path: Path) -> None:
    principal = Principal(user_id=1, token_id=8, rpm_limit=None, tpm_limit=100)
    one, other = (HostRateLimiter(CounterStore(tmp_path / "limits.db")) for _ in range(2))
    decision = await one.admit(principal)
    assert decision.headers()["x-ratelimit-remaining-tokens"] == "100"
    await other.add_tokens(principal, 60)
    decision = await one.admit(principal)
    assert decision.headers()["x-ratelimit-remaining-tokens"] == "40"
    await other.add_tokens(principal, 40)
    with pytest.raises(RateLimited) as refused:
        await one.admit(principal)
    assert refused.value.headers["x-ratelimit-remaining-tokens"] == "0"
    await one.aclose()
    await other.aclose()


async def test_a_token_without_limits_is_never_counted(tmp_path: Path) -> None:
    limiter = HostRateLimiter(CounterStore(tmp_path / "limits.db"))
    principal = Principal(user_id=1, token_id=9)
    for _ in range(3):
        await limiter.admit(principal)
    assert not (tmp_path / "limits.db").exists()
    await limiter.aclose()


async def test_a_users_requests_at_once_hold_across_workers_and_a_dead_workers_slots_free_themselves(
    tmp_path: Path,
) -> None:
    user = Principal(user_id=5, token_id=1, user=UserLimits(concurrency=2))
    one, other = (HostRateLimiter(CounterStore(tmp_path / "limits.db")) for _ in range(2))
    await one.admit(user)
    await other.admit(user)
    with pytest.raises(RateLimited):
        await one.admit(user)  # two at once, wherever they run
    await other.add_tokens(user, 0)
    await one.admit(user)  # the slot came back
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    with sqlite3.connect(tmp_path / "limits.db") as conn:  # a worker that died holding both slots
        conn.execute("DELETE FROM slots")
        conn.execute("INSERT INTO slots VALUES (5, ?, 2)", (int(dead.stdout),))
    await one.admit(user)  # its slots were dropped as soon as they refused someone
    await one.aclose()
    await other.aclose()


async def test_sign_ups_per_address_and_sign_in_delays_are_shared_by_workers(tmp_path: Path) -> None:
    one, other = (HostRateLimiter(CounterStore(tmp_path / "limits.db")) for _ in range(2))
    assert await one.hit("signup:a", 2) is None and await other.hit("signup:a", 2) is None
    wait = await one.hit("signup:a", 2)
    assert wait is not None and 3500 < wait <= 3600
    assert await other.hit("signup:b", 2) is None  # another address
    assert await one.attempt("login:x", free=1, max_delay=60) is None
    await other.failed("login:x")
    wait = await other.attempt("login:x", free=1, max_delay=60)  # past the free one: wait a second
    assert wait is not None and 0 < wait <= 1
    await one.forgive("login:x")
    assert await other.attempt("login:x", free=1, max_delay=60) is None
    await one.aclose()
    await other.aclose()
