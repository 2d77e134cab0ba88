"""Limits on callers: per token and per user, in this process (``LocalRateLimiter``) or shared by
every replica through Redis (``ratelimit_redis.RedisRateLimiter``).

- **Requests and tokens per minute**, per token (when the token sets its own) and per user across
  all of the user's tokens and the console. Windows are whole minutes. A request is admitted while
  no count has reached its limit; its tokens are added when it ends.
- **Requests at once**, per user. ``admit`` takes a slot; ``add_tokens``, called exactly once for
  every admitted request when it ends (with 0 tokens if it was refused later or failed), gives it
  back. Through Redis a slot is a lease renewed while the request runs, so the slots of a replica
  that dies are freed when their leases run out.
- **Sliding windows** (``hit``): at most N events an hour under a key (sign-ups per address).
- **Growing delays** (``attempt``): after some free attempts under a key, each further attempt
  must wait, after the last one failed, twice as long as the one before, up to a ceiling (sign-in
  per account and per address).

When Redis cannot be reached, limits fail open (the request goes ahead, a warning is logged) or,
with ``fail_closed``, the request is refused with a 503. Quota holds either way: reservations are
made in the database.
"""

import math
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from chatgate.errors import RateLimited
from chatgate.services.auth import Principal

WINDOW = 60
HOUR = 3600.0
ATTEMPTS_FORGOTTEN = 3600.0  # attempts under a key are forgotten after this long without any


@dataclass(frozen=True)
class Decision:
    """The caller's state after admission, for the ``x-ratelimit-*`` headers: the tighter of the
    token's and the user's limits."""

    rpm: int | None
    tpm: int | None
    requests: int  # counted in this window, this request included
    tokens: int
    reset_seconds: float

    def headers(self) -> dict[str, str]:
        out: dict[str, str] = {}
        reset = f"{max(1, math.ceil(self.reset_seconds))}s"
        if self.rpm is not None:
            out["x-ratelimit-limit-requests"] = str(self.rpm)
            out["x-ratelimit-remaining-requests"] = str(max(0, self.rpm - self.requests))
            out["x-ratelimit-reset-requests"] = reset
        if self.tpm is not None:
            out["x-ratelimit-limit-tokens"] = str(self.tpm)
            out["x-ratelimit-remaining-tokens"] = str(max(0, self.tpm - self.tokens))
            out["x-ratelimit-reset-tokens"] = reset
        return out


UNLIMITED = Decision(None, None, 0, 0, 0)


@dataclass(frozen=True)
class Counts:
    """One minute's counts for a request's two scopes, and the user's requests running now."""

    token_requests: int = 0
    token_tokens: int = 0
    user_requests: int = 0
    user_tokens: int = 0
    running: int = 0


# Which limit refused a request: the order in which they are checked (the Redis script's too).
ADMITTED, TOKEN_RPM, TOKEN_TPM, USER_RPM, USER_TPM, USER_CONCURRENCY = range(6)


def refusal(principal: Principal, counts: Counts) -> int:
    """The first limit ``counts`` have reached, or ADMITTED."""
    user = principal.user
    if principal.rpm_limit is not None and counts.token_requests >= principal.rpm_limit:
        return TOKEN_RPM
    if principal.tpm_limit is not None and counts.token_tokens >= principal.tpm_limit:
        return TOKEN_TPM
    if user.rpm is not None and counts.user_requests >= user.rpm:
        return USER_RPM
    if user.tpm is not None and counts.user_tokens >= user.tpm:
        return USER_TPM
    if user.concurrency is not None and counts.running >= user.concurrency:
        return USER_CONCURRENCY
    return ADMITTED


def _tightest(*pairs: tuple[int | None, int]) -> tuple[int | None, int]:
    """Of (limit, count) pairs, the one with the least left."""
    best: tuple[int | None, int] = (None, 0)
    for limit, count in pairs:
        if limit is not None and (best[0] is None or limit - count < best[0] - best[1]):
            best = (limit, count)
    return best


def decision(principal: Principal, counts: Counts, reset: float) -> Decision:
    rpm, requests = _tightest(
        (principal.rpm_limit, counts.token_requests), (principal.user.rpm, counts.user_requests)
    )
    tpm, tokens = _tightest(
        (principal.tpm_limit, counts.token_tokens), (principal.user.tpm, counts.user_tokens)
    )
    return Decision(rpm, tpm, requests, tokens, reset)


def refuse(principal: Principal, counts: Counts, reason: int, reset: float) -> RateLimited:
    if reason == USER_CONCURRENCY:
        return RateLimited(
            f"Too many requests at once on this account: at most {principal.user.concurrency} may run "
            "at a time. Try again when one has finished.",
            retry_after=1,
            headers={},
        )
    which = "requests" if reason in (TOKEN_RPM, USER_RPM) else "tokens"
    scope = "API token" if reason in (TOKEN_RPM, TOKEN_TPM) else "account"
    retry = max(1, math.ceil(reset))
    return RateLimited(
        f"Rate limit reached for {which} per minute on this {scope}. Try again in {retry}s.",
        retry_after=retry,
        headers=decision(principal, counts, reset).headers(),
    )


def window() -> tuple[int, float]:
    """This minute's number, and the seconds left in it."""
    now = time.time()
    return int(now // WINDOW), WINDOW - now % WINDOW


def attempt_delay(attempts: int, free: int, max_delay: float) -> float:
    """Seconds to wait after the last attempt, once ``attempts`` were made: none while free, then
    1, 2, 4, ... up to ``max_delay``."""
    if attempts < free:
        return 0.0
    return min(max_delay, 2.0 ** min(attempts - free, 40))


class RateLimiter(Protocol):
    async def admit(self, principal: Principal) -> Decision:
        """Count a request against every limit of its caller, or raise RateLimited (nothing counted)."""
        ...

    async def add_tokens(self, principal: Principal, tokens: int) -> None:
        """End an admitted request: count its tokens and give back its slot. Called exactly once
        for every successful ``admit`` (0 tokens for a request refused later or failed)."""
        ...

    async def hit(self, key: str, limit: int, window: float = HOUR) -> float | None:
        """Count an event under ``key`` if fewer than ``limit`` happened in the last ``window``
        seconds; else the seconds until one more may."""
        ...

    async def attempt(self, key: str, *, free: int, max_delay: float) -> float | None:
        """Count an attempt under ``key`` if the delay its earlier ones earned has passed; else the
        seconds left to wait."""
        ...

    async def failed(self, key: str) -> None:
        """The attempt last counted under ``key`` has failed: the delay it earned runs from now
        (not from when it began, which a slow check would eat into)."""
        ...

    async def forgive(self, key: str, attempts: int | None = None) -> None:
        """Forget the attempts under ``key`` (a sign-in succeeded): all of them, or this many."""
        ...

    async def aclose(self) -> None: ...


class LocalRateLimiter:
    """Counts in this process only: right for one server."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock  # for sliding windows and attempts
        self._counts: dict[tuple[str, int], list[int]] = defaultdict(lambda: [0, 0])
        self._running: dict[int, int] = {}
        self._events: dict[str, deque[float]] = {}
        self._attempts: dict[str, tuple[int, float]] = {}

    async def admit(self, principal: Principal) -> Decision:
        if not principal.limited:
            return UNLIMITED
        minute, reset = window()
        user_limits = principal.user
        token = (
            self._counts[(f"t{principal.token_id}", minute)]
            if principal.token_id is not None and (principal.rpm_limit or principal.tpm_limit)
            else [0, 0]
        )
        user = (
            self._counts[(f"u{principal.user_id}", minute)]
            if principal.user_id is not None and (user_limits.rpm or user_limits.tpm)
            else [0, 0]
        )
        running = self._running.get(principal.user_id, 0) if principal.user_id is not None else 0
        counts = Counts(token[0], token[1], user[0], user[1], running)
        reason = refusal(principal, counts)
        if reason != ADMITTED:
            raise refuse(principal, counts, reason, reset)
        token[0] += 1
        user[0] += 1
        if principal.user_id is not None and user_limits.concurrency is not None:
            self._running[principal.user_id] = running + 1
        if len(self._counts) > 10_000:
            self._forget_before(minute)
        return decision(principal, Counts(token[0], token[1], user[0], user[1], running + 1), reset)

    async def add_tokens(self, principal: Principal, tokens: int) -> None:
        if principal.user_id is not None and principal.user.concurrency is not None:
            left = self._running.get(principal.user_id, 0) - 1
            if left > 0:
                self._running[principal.user_id] = left
            else:
                self._running.pop(principal.user_id, None)
        if tokens > 0:
            minute = window()[0]
            if principal.tpm_limit is not None and principal.token_id is not None:
                self._counts[(f"t{principal.token_id}", minute)][1] += tokens
            if principal.user.tpm is not None and principal.user_id is not None:
                self._counts[(f"u{principal.user_id}", minute)][1] += tokens

    def _forget_before(self, minute: int) -> None:
        for key in [k for k in self._counts if k[1] < minute]:
            del self._counts[key]

    async def hit(self, key: str, limit: int, window: float = HOUR) -> float | None:
        now = self._clock()
        events = self._events.setdefault(key, deque())
        while events and events[0] <= now - window:
            events.popleft()
        if len(events) >= limit:
            return events[0] + window - now
        events.append(now)
        if len(self._events) > 10_000:
            self._events = {k: v for k, v in self._events.items() if v and v[-1] > now - window}
        return None

    async def attempt(self, key: str, *, free: int, max_delay: float) -> float | None:
        now = self._clock()
        made, last = self._attempts.get(key, (0, 0.0))
        if made and now - last > max(ATTEMPTS_FORGOTTEN, 2 * max_delay):
            made = 0
        wait = last + attempt_delay(made, free, max_delay) - now
        if made and wait > 0:
            return wait
        self._attempts[key] = (made + 1, now)
        if len(self._attempts) > 10_000:
            cutoff = now - max(ATTEMPTS_FORGOTTEN, 2 * max_delay)
            self._attempts = {k: v for k, v in self._attempts.items() if v[1] > cutoff}
        return None

    async def failed(self, key: str) -> None:
        made = self._attempts.get(key)
        if made is not None:
            self._attempts[key] = (made[0], self._clock())

    async def forgive(self, key: str, attempts: int | None = None) -> None:
        made = self._attempts.pop(key, None)
        if made is not None and attempts is not None and made[0] > attempts:
            self._attempts[key] = (made[0] - attempts, made[1])

    async def aclose(self) -> None:
        return None
