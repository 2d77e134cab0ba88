"""Per-token limits on requests and tokens per minute: in this process, or shared through Redis.

Windows are whole minutes. A request is admitted if neither count has reached its limit; tokens
are added when the request settles. With Redis, every chatgate process shares the counts. If Redis
cannot be reached, limits fail open (the request goes ahead and a warning is logged): quota still
holds, because reservations are made in the database.
"""

import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Protocol

from chatgate.errors import RateLimited
from chatgate.services.auth import Principal

log = logging.getLogger("chatgate.ratelimit")
WINDOW = 60


@dataclass(frozen=True)
class Decision:
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


def _window() -> tuple[int, float]:
    now = time.time()
    return int(now // WINDOW), WINDOW - now % WINDOW


def _refuse(principal: Principal, requests: int, tokens: int, reset: float) -> RateLimited:
    decision = Decision(principal.rpm_limit, principal.tpm_limit, requests, tokens, reset)
    which = "requests" if principal.rpm_limit is not None and requests >= principal.rpm_limit else "tokens"
    retry = max(1, math.ceil(reset))
    return RateLimited(
        f"Rate limit reached for {which} per minute on this API token. Try again in {retry}s.",
        retry_after=retry,
        headers=decision.headers(),
    )


class RateLimiter(Protocol):
    async def admit(self, principal: Principal) -> Decision: ...

    async def add_tokens(self, principal: Principal, tokens: int) -> None: ...

    async def aclose(self) -> None: ...


class LocalRateLimiter:
    """Counts in this process only: right for one server."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, int], list[int]] = defaultdict(lambda: [0, 0])

    async def admit(self, principal: Principal) -> Decision:
        if principal.rpm_limit is None and principal.tpm_limit is None:
            return UNLIMITED
        window, reset = _window()
        counts = self._counts[(principal.limit_key, window)]
        if (principal.rpm_limit is not None and counts[0] >= principal.rpm_limit) or (
            principal.tpm_limit is not None and counts[1] >= principal.tpm_limit
        ):
            raise _refuse(principal, counts[0], counts[1], reset)
        counts[0] += 1
        if len(self._counts) > 10_000:
            self._forget_before(window)
        return Decision(principal.rpm_limit, principal.tpm_limit, counts[0], counts[1], reset)

    async def add_tokens(self, principal: Principal, tokens: int) -> None:
        if principal.tpm_limit is not None:
            self._counts[(principal.limit_key, _window()[0])][1] += tokens

    def _forget_before(self, window: int) -> None:
        for key in [k for k in self._counts if k[1] < window]:
            del self._counts[key]

    async def aclose(self) -> None:
        return None


# Check both counts and count the request in one step, so replicas can't race past a limit.
_ADMIT = """
local requests = tonumber(redis.call('GET', KEYS[1]) or '0')
local tokens = tonumber(redis.call('GET', KEYS[2]) or '0')
local rpm, tpm = tonumber(ARGV[1]), tonumber(ARGV[2])
if (rpm > 0 and requests >= rpm) or (tpm > 0 and tokens >= tpm) then
  return {0, requests, tokens}
end
requests = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return {1, requests, tokens}
"""


class RedisRateLimiter:
    """Counts in Redis, shared by every chatgate process that points at it."""

    def __init__(self, url: str) -> None:
        import redis.asyncio as redis

        self._redis: Any = redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._admit = self._redis.register_script(_ADMIT)
        self._errors = (redis.RedisError, OSError)
        self._last_warning = 0.0

    def _keys(self, principal: Principal, window: int) -> list[str]:
        return [
            f"chatgate:rl:{principal.limit_key}:{window}:r",
            f"chatgate:rl:{principal.limit_key}:{window}:t",
        ]

    def _degraded(self, exc: BaseException) -> None:
        if time.monotonic() - self._last_warning > 10:
            self._last_warning = time.monotonic()
            log.warning("redis unreachable, rate limits not enforced (quota still is): %s", exc)

    async def admit(self, principal: Principal) -> Decision:
        if principal.rpm_limit is None and principal.tpm_limit is None:
            return UNLIMITED
        window, reset = _window()
        try:
            allowed, requests, tokens = await self._admit(
                keys=self._keys(principal, window),
                args=[principal.rpm_limit or 0, principal.tpm_limit or 0, WINDOW * 2],
            )
        except self._errors as exc:
            self._degraded(exc)
            return UNLIMITED
        if not allowed:
            raise _refuse(principal, int(requests), int(tokens), reset)
        return Decision(principal.rpm_limit, principal.tpm_limit, int(requests), int(tokens), reset)

    async def add_tokens(self, principal: Principal, tokens: int) -> None:
        if principal.tpm_limit is None or tokens <= 0:
            return
        key = self._keys(principal, _window()[0])[1]
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                await pipe.incrby(key, tokens).expire(key, WINDOW * 2).execute()
        except self._errors as exc:
            self._degraded(exc)

    async def aclose(self) -> None:
        await self._redis.aclose()
