"""The rate limiter shared by every chatgate process that points at one Redis (see ``ratelimit``).

Each check counts in one Lua script, so replicas can't race past a limit. A user's running
requests are a sorted set of holders (``<replica>:<n>``) scored by when their lease ends; a
replica renews its holders' leases every few seconds while their requests run, and a holder whose
lease has run out (its replica died) no longer counts. Replicas' clocks must agree to within a few
seconds (NTP), far inside the lease.
"""

import asyncio
import contextlib
import logging
import time
import uuid
from collections import defaultdict
from typing import Any

from chatgate.errors import Unavailable
from chatgate.services.auth import Principal
from chatgate.services.ratelimit import (
    ADMITTED,
    ATTEMPTS_FORGOTTEN,
    HOUR,
    UNLIMITED,
    WINDOW,
    Counts,
    Decision,
    decision,
    refuse,
    window,
)

log = logging.getLogger("chatgate.ratelimit")

# KEYS: token requests, token tokens, user requests, user tokens, user holders.
# ARGV: token rpm, token tpm, user rpm, user tpm, user concurrency (0: none), window ttl (s),
#       now (ms), lease end (ms), holder, holders ttl (s).
# Checks in the order of ratelimit.refusal; counts only when every limit has room.
_ADMIT = """
local function count(key) return tonumber(redis.call('GET', key) or '0') end
local trpm, ttpm, urpm, utpm, ucc = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local tr, tt, ur, ut, running = 0, 0, 0, 0, 0
if trpm > 0 or ttpm > 0 then tr, tt = count(KEYS[1]), count(KEYS[2]) end
if urpm > 0 or utpm > 0 then ur, ut = count(KEYS[3]), count(KEYS[4]) end
if ucc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', ARGV[7])
  running = redis.call('ZCARD', KEYS[5])
end
local refused = 0
if trpm > 0 and tr >= trpm then refused = 1
elseif ttpm > 0 and tt >= ttpm then refused = 2
elseif urpm > 0 and ur >= urpm then refused = 3
elseif utpm > 0 and ut >= utpm then refused = 4
elseif ucc > 0 and running >= ucc then refused = 5 end
if refused > 0 then return {refused, tr, tt, ur, ut, running} end
if trpm > 0 or ttpm > 0 then
  tr = redis.call('INCR', KEYS[1])
  redis.call('EXPIRE', KEYS[1], ARGV[6])
end
if urpm > 0 or utpm > 0 then
  ur = redis.call('INCR', KEYS[3])
  redis.call('EXPIRE', KEYS[3], ARGV[6])
end
if ucc > 0 then
  redis.call('ZADD', KEYS[5], ARGV[8], ARGV[9])
  redis.call('EXPIRE', KEYS[5], ARGV[10])
  running = running + 1
end
return {0, tr, tt, ur, ut, running}
"""

# KEYS: the window's sorted set. ARGV: now (ms), window (ms), limit, event id.
# Returns -1 when counted, else the milliseconds until the oldest event leaves the window.
_HIT = """
local now, span, limit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - span)
if redis.call('ZCARD', KEYS[1]) >= limit then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return tonumber(oldest[2]) + span - now
end
redis.call('ZADD', KEYS[1], now, ARGV[4])
redis.call('PEXPIRE', KEYS[1], span)
return -1
"""

# KEYS: the attempts' hash. ARGV: now (ms), free attempts, longest delay (ms), forget after (ms).
# Returns -1 when counted, else the milliseconds left to wait (delays as ratelimit.attempt_delay).
_ATTEMPT = """
local now, free, longest = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local made = tonumber(redis.call('HGET', KEYS[1], 'n') or '0')
local last = tonumber(redis.call('HGET', KEYS[1], 'last') or '0')
if made >= free then
  local delay = math.min(longest, 1000 * 2 ^ math.min(made - free, 40))
  if now < last + delay then return math.ceil(last + delay - now) end
end
redis.call('HSET', KEYS[1], 'n', made + 1, 'last', now)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return -1
"""


# KEYS: the attempts' hash. ARGV: now (ms). The last attempt's time, if there is one, becomes now.
_STAMP = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'last', ARGV[1]) end
return 0
"""

# KEYS: the attempts' hash. ARGV: how many attempts to forget (never below none).
_UNCOUNT = """
local made = tonumber(redis.call('HGET', KEYS[1], 'n') or '0') - tonumber(ARGV[1])
if made > 0 then redis.call('HSET', KEYS[1], 'n', made) else redis.call('DEL', KEYS[1]) end
return 0
"""


def _ms() -> int:
    return int(time.time() * 1000)


class RedisRateLimiter:
    """Counts in Redis, shared by every chatgate process that points at it."""

    def __init__(self, url: str, *, fail_closed: bool = False, lease_seconds: int = 30) -> None:
        import redis.asyncio as redis

        self._redis: Any = redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._admit = self._redis.register_script(_ADMIT)
        self._hit = self._redis.register_script(_HIT)
        self._attempt = self._redis.register_script(_ATTEMPT)
        self._stamp = self._redis.register_script(_STAMP)
        self._uncount = self._redis.register_script(_UNCOUNT)
        self._errors = (redis.RedisError, OSError)
        self._fail_closed = fail_closed
        self._lease = lease_seconds  # a holder not renewed for this long no longer counts
        self._last_warning = 0.0
        self._replica = uuid.uuid4().hex[:12]
        self._serial = 0
        self._held: dict[int, list[str]] = defaultdict(list)  # user id -> this process's holders
        self._renewer: asyncio.Task[None] | None = None

    def _degraded(self, exc: BaseException) -> None:
        """Redis failed: refuse (fail closed) or go on without limits, warning now and then."""
        if time.monotonic() - self._last_warning > 10:
            self._last_warning = time.monotonic()
            if self._fail_closed:
                log.warning("redis unreachable, requests refused until it is back: %s", exc)
            else:
                log.warning("redis unreachable, rate limits not enforced (quota still is): %s", exc)
        if self._fail_closed:
            raise Unavailable(
                "Rate limits cannot be checked right now; try again shortly.",
                retry_after=1,
                code="limits_unavailable",
            ) from exc

    async def admit(self, principal: Principal) -> Decision:
        if not principal.limited:
            return UNLIMITED
        minute, reset = window()
        user = principal.user
        token_key = f"chatgate:rl:t{principal.token_id}:{minute}"
        user_key = f"chatgate:rl:u{principal.user_id}:{minute}"
        concurrency = user.concurrency if principal.user_id is not None else None
        holder = ""
        if concurrency is not None:
            self._serial += 1
            holder = f"{self._replica}:{self._serial}"
        now = _ms()
        try:
            reason, *numbers = await self._admit(
                keys=[
                    token_key + ":r",
                    token_key + ":t",
                    user_key + ":r",
                    user_key + ":t",
                    f"chatgate:cc:u{principal.user_id}",
                ],
                args=[
                    (principal.rpm_limit or 0) if principal.token_id is not None else 0,
                    (principal.tpm_limit or 0) if principal.token_id is not None else 0,
                    (user.rpm or 0) if principal.user_id is not None else 0,
                    (user.tpm or 0) if principal.user_id is not None else 0,
                    concurrency or 0,
                    WINDOW * 2,
                    now,
                    now + self._lease * 1000,
                    holder,
                    self._lease * 2,
                ],
            )
        except self._errors as exc:
            self._degraded(exc)
            if concurrency is not None and principal.user_id is not None:
                self._held[principal.user_id].append("")  # add_tokens takes one off, as for any admission
            return UNLIMITED
        counts = Counts(*(int(n) for n in numbers))
        if int(reason) != ADMITTED:
            raise refuse(principal, counts, int(reason), reset)
        if concurrency is not None and principal.user_id is not None:
            self._held[principal.user_id].append(holder)
            self._start_renewing()
        return decision(principal, counts, reset)

    async def add_tokens(self, principal: Principal, tokens: int) -> None:
        # A user's holders in this process are interchangeable: any one of them goes.
        holder = ""
        if principal.user_id is not None and principal.user.concurrency is not None:
            held = self._held.get(principal.user_id)
            if held:
                holder = held.pop()
                if not held:
                    del self._held[principal.user_id]
        minute = window()[0]
        counted = [
            f"chatgate:rl:t{principal.token_id}:{minute}:t"
            if principal.tpm_limit is not None and principal.token_id is not None
            else None,
            f"chatgate:rl:u{principal.user_id}:{minute}:t"
            if principal.user.tpm is not None and principal.user_id is not None
            else None,
        ]
        keys = [key for key in counted if key is not None] if tokens > 0 else []
        if not holder and not keys:
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.incrby(key, tokens).expire(key, WINDOW * 2)
                if holder:
                    pipe.zrem(f"chatgate:cc:u{principal.user_id}", holder)
                await pipe.execute()
        except self._errors as exc:
            # The tokens go uncounted; the holder's lease runs out on its own.
            with contextlib.suppress(Unavailable):
                self._degraded(exc)

    def _start_renewing(self) -> None:
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.create_task(self._renew(), name="rate-limit-leases")

    async def _renew(self) -> None:
        """A few times a lease, extend the leases of this process's running requests."""
        while self._held:
            await asyncio.sleep(self._lease / 3)
            until = _ms() + self._lease * 1000
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for user_id, holders in list(self._held.items()):
                        live = [h for h in holders if h]
                        if live:
                            key = f"chatgate:cc:u{user_id}"
                            pipe.zadd(key, dict.fromkeys(live, until)).expire(key, self._lease * 2)
                    await pipe.execute()
            except self._errors as exc:
                log.warning("could not renew rate-limit leases: %s", exc)

    async def hit(self, key: str, limit: int, window: float = HOUR) -> float | None:
        self._serial += 1
        try:
            wait = await self._hit(
                keys=[f"chatgate:win:{key}"],
                args=[_ms(), int(window * 1000), limit, f"{self._replica}:{self._serial}"],
            )
        except self._errors as exc:
            self._degraded(exc)
            return None
        return None if int(wait) < 0 else int(wait) / 1000

    async def attempt(self, key: str, *, free: int, max_delay: float) -> float | None:
        forget = int(max(ATTEMPTS_FORGOTTEN, 2 * max_delay) * 1000)
        try:
            wait = await self._attempt(
                keys=[f"chatgate:try:{key}"], args=[_ms(), free, int(max_delay * 1000), forget]
            )
        except self._errors as exc:
            self._degraded(exc)
            return None
        return None if int(wait) < 0 else int(wait) / 1000

    async def failed(self, key: str) -> None:
        try:
            await self._stamp(keys=[f"chatgate:try:{key}"], args=[_ms()])
        except self._errors as exc:
            with contextlib.suppress(Unavailable):
                self._degraded(exc)

    async def forgive(self, key: str, attempts: int | None = None) -> None:
        try:
            if attempts is None:
                await self._redis.delete(f"chatgate:try:{key}")
            else:
                await self._uncount(keys=[f"chatgate:try:{key}"], args=[attempts])
        except self._errors as exc:
            with contextlib.suppress(Unavailable):
                self._degraded(exc)

    async def aclose(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        await self._redis.aclose()
