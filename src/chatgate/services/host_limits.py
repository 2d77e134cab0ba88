"""Rate limits shared by the worker processes of one host when there is no Redis.

``chatgate serve --workers N`` without ``CHATGATE_REDIS_URL``: a token's requests and tokens per
minute must hold across the workers exactly as they hold across replicas through Redis, so the
counts live in a SQLite file in the data dir that every worker updates in one atomic step each
(``storage.counters``). Why not Redis: it would be one more server to install and run for a
single host. Why not the workers' own memory: each would count a share and let a token through N
times its limit. Replicas on several hosts need Redis (``RedisRateLimiter``).
"""

from chatgate.services.auth import Principal
from chatgate.services.ratelimit import UNLIMITED, Decision, _refuse, _window
from chatgate.storage.counters import CounterStore


class HostRateLimiter:
    def __init__(self, store: CounterStore) -> None:
        self._store = store

    async def admit(self, principal: Principal) -> Decision:
        if principal.rpm_limit is None and principal.tpm_limit is None:
            return UNLIMITED
        window, reset = _window()
        allowed, requests, tokens = await self._store.admit(
            principal.limit_key, window, principal.rpm_limit, principal.tpm_limit
        )
        if not allowed:
            raise _refuse(principal, requests, tokens, reset)
        return Decision(principal.rpm_limit, principal.tpm_limit, requests, tokens, reset)

    async def add_tokens(self, principal: Principal, tokens: int) -> None:
        if principal.tpm_limit is not None and tokens > 0:
            await self._store.add_tokens(principal.limit_key, _window()[0], tokens)

    async def aclose(self) -> None:
        self._store.close()
