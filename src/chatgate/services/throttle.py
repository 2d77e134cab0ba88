"""Attempts counted per key over a fixed window (an hour of code redemptions per user, per address):
in this process, or shared by every replica through Redis.

Like the rate limiter, an unreachable Redis lets attempts through (with a warning): what these
limits guard is already safe without them (a redemption code carries 100 random bits).
"""

import logging
import math
import time
from collections import defaultdict
from typing import Any, Protocol

from chatgate.errors import RateLimited

log = logging.getLogger("chatgate.throttle")


def _refusal(what: str, limit: int, window: int, reset: float) -> RateLimited:
    retry = max(1, math.ceil(reset))
    return RateLimited(
        f"Too many {what}: at most {limit} in {window // 60} minutes. Try again in {retry}s.",
        retry_after=retry,
        headers={},
    )


class Throttle(Protocol):
    async def hit(self, key: str, *, limit: int, window: int, what: str) -> None:
        """Count an attempt; RateLimited once ``limit`` were counted in this ``window`` (seconds)."""
        ...

    async def aclose(self) -> None: ...


class LocalThrottle:
    def __init__(self) -> None:
        self._counts: dict[tuple[str, int], int] = defaultdict(int)

    async def hit(self, key: str, *, limit: int, window: int, what: str) -> None:
        now = time.time()
        slot = (key, int(now // window))
        if self._counts[slot] >= limit:
            raise _refusal(what, limit, window, window - now % window)
        self._counts[slot] += 1
        if len(self._counts) > 10_000:
            for old in [k for k in self._counts if k[1] < slot[1]]:
                del self._counts[old]

    async def aclose(self) -> None:
        return None


class RedisThrottle:
    def __init__(self, url: str) -> None:
        import redis.asyncio as redis

        self._redis: Any = redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._errors = (redis.RedisError, OSError)

    async def hit(self, key: str, *, limit: int, window: int, what: str) -> None:
        now = time.time()
        name = f"chatgate:throttle:{key}:{int(now // window)}"
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                count, _ = await pipe.incr(name).expire(name, window * 2).execute()
        except self._errors as exc:
            log.warning("redis unreachable, %s not throttled: %s", what, exc)
            return
        if int(count) > limit:
            raise _refusal(what, limit, window, window - now % window)

    async def aclose(self) -> None:
        await self._redis.aclose()
