"""Rate limits shared by the worker processes of one host when there is no Redis.

``chatgate serve --workers N`` without ``CHATGATE_REDIS_URL``: every limit must hold across the
workers exactly as it holds across replicas through Redis (a token's and a user's requests and
tokens per minute, a user's requests at once, sign-ups per address, sign-in delays), so the counts
live in a SQLite file in the data dir that every worker updates in one atomic step each
(``storage.counters``), under the same rules as the in-process limiter (``ratelimit.refusal``).
Why not Redis: it would be one more server to install and run for a single host. Why not the
workers' own memory: each would count a share and let a caller through N times its limits.
Replicas on several hosts need Redis (``RedisRateLimiter``). A worker that dies gives its running
requests' slots back as soon as they would refuse someone (its process is gone).
"""

from chatgate.services.auth import Principal
from chatgate.services.ratelimit import (
    ADMITTED,
    ATTEMPTS_FORGOTTEN,
    HOUR,
    UNLIMITED,
    Counts,
    Decision,
    attempt_delay,
    decision,
    refusal,
    refuse,
    window,
)
from chatgate.storage.counters import CounterStore


def _keys(principal: Principal) -> tuple[str | None, str | None]:
    """The token's and the user's per-minute keys, where they have per-minute limits."""
    user = principal.user
    token = (
        f"t{principal.token_id}"
        if principal.token_id is not None and (principal.rpm_limit or principal.tpm_limit)
        else None
    )
    owner = f"u{principal.user_id}" if principal.user_id is not None and (user.rpm or user.tpm) else None
    return token, owner


class HostRateLimiter:
    def __init__(self, store: CounterStore) -> None:
        self._store = store

    async def admit(self, principal: Principal) -> Decision:
        if not principal.limited:
            return UNLIMITED
        minute, reset = window()
        token, owner = _keys(principal)
        keys = [key for key in (token, owner) if key is not None]
        slot = principal.user_id if principal.user.concurrency is not None else None

        def counts(found: list[tuple[int, int]], running: int) -> Counts:
            values = iter(found)
            mine = next(values) if token is not None else (0, 0)
            users = next(values) if owner is not None else (0, 0)
            return Counts(mine[0], mine[1], users[0], users[1], running)

        reason, found, running = await self._store.admit(
            keys, minute, slot, lambda found, running: refusal(principal, counts(found, running))
        )
        if reason != ADMITTED:
            raise refuse(principal, counts(found, running), reason, reset)
        return decision(principal, counts(found, running), reset)

    async def add_tokens(self, principal: Principal, tokens: int) -> None:
        if principal.user_id is not None and principal.user.concurrency is not None:
            await self._store.release(principal.user_id)
        if tokens > 0:
            minute = window()[0]
            token, owner = _keys(principal)
            if token is not None and principal.tpm_limit is not None:
                await self._store.add_tokens(token, minute, tokens)
            if owner is not None and principal.user.tpm is not None:
                await self._store.add_tokens(owner, minute, tokens)

    async def hit(self, key: str, limit: int, window: float = HOUR) -> float | None:
        return await self._store.hit(key, limit, window)

    async def attempt(self, key: str, *, free: int, max_delay: float) -> float | None:
        return await self._store.attempt(
            key,
            lambda made: attempt_delay(made, free, max_delay),
            max(ATTEMPTS_FORGOTTEN, 2 * max_delay),
        )

    async def failed(self, key: str) -> None:
        await self._store.failed(key)

    async def forgive(self, key: str, attempts: int | None = None) -> None:
        await self._store.forgive(key, attempts)

    async def aclose(self) -> None:
        self._store.close()
