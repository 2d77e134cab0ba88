"""The queries on every request's path (token lookup, reservation, settlement), for PostgreSQL.

Through SQLAlchemy's ORM each cost 1.7 to 2.5 ms at 50 requests/s (a session, a transaction and
the ORM's unit of work around one or three statements). Here they run on asyncpg directly, on a
small pool of their own, with asyncpg's prepared-statement cache. Everything else goes through
SQLAlchemy.

Reserving and settling are each one call of a function (``chatgate_reserve``, ``chatgate_settle``,
made by migration 0003): one round trip where the statements one by one took five to seven, which
on a busy machine each wait for the server's process to be scheduled. Settlements are
group-committed: each request waits for the commit of the call that carries its settlement, and
the settlements that arrive while one is being written go together in the next. One request alone waits for one commit; under load a commit carries many.
A commit is durable as the server's ``synchronous_commit`` says: ``on`` (PostgreSQL's default)
waits for the WAL to reach the disk, so a settlement survives a crash of the database host too.
"""

import asyncio
from datetime import UTC, datetime
from typing import Any

import asyncpg
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.engine import Dialect, make_url

from chatgate.storage.fastpath import (
    RENEW_QUERY,
    TOKEN_QUERY,
    DuplicateReservation,
    GroupCommit,
    Settlement,
    TokenRow,
    token_row,
)
from chatgate.storage.reservations import Lease

_TOKEN = TOKEN_QUERY.format("$1")
_RENEW = RENEW_QUERY.format("$1", "$2", "$3", "$4", "$5")

# The same rule as SQLite's _reserve, as one call (its body: migration 0003): plain UPDATEs whose
# WHERE holds the rule. Under concurrency PostgreSQL re-checks an updated row's WHERE against its
# newest version, so two requests can never both spend the same credits. Plain UPDATEs (not SELECT
# ... FOR UPDATE) on purpose: their row locks do not conflict with the KEY SHARE locks that
# inserting usage and ledger rows takes through the foreign keys. The user's row first, then the
# token's: the order settlements lock them in too.
_RESERVE = "SELECT chatgate_reserve($1, $2, $3, $4, $5, $6, $7)"
_SETTLE = "SELECT chatgate_settle({})".format(", ".join(f"${n}" for n in range(1, 19)))  # migration 0006's


def connect_options(url: str) -> dict[str, Any]:
    """asyncpg's connect arguments for a SQLAlchemy URL, read the way SQLAlchemy's own driver reads it
    (``?ssl=...`` included), so both connect alike."""
    dialect: Dialect = PGDialect_asyncpg()  # type: ignore[no-untyped-call]
    options: dict[str, Any] = dict(dialect.create_connect_args(make_url(url))[1])
    if "prepared_statement_cache_size" in options:  # SQLAlchemy's name for asyncpg's option
        options["statement_cache_size"] = int(options.pop("prepared_statement_cache_size"))
    options.pop("prepared_statement_name_func", None)
    return options


class PostgresFastPath:
    def __init__(self, url: str, *, max_connections: int = 10) -> None:
        self._options = connect_options(url)
        self._max = max_connections
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()
        self._settlements = GroupCommit(self._settle_group)

    async def _connections(self) -> asyncpg.Pool:
        if self._pool is None:
            async with self._opening:  # opened on first use, inside the serving event loop
                if self._pool is None:
                    self._pool = await asyncpg.create_pool(min_size=2, max_size=self._max, **self._options)
        return self._pool

    async def token(self, secret_hash: str) -> TokenRow | None:
        pool = await self._connections()
        row = await pool.fetchrow(_TOKEN, secret_hash)
        return None if row is None else token_row(row, row[3])

    async def reserve(
        self, *, user_id: int, token_id: int | None, trace_id: str, amount: int, model: str, owner: str
    ) -> bool:
        pool = await self._connections()
        try:
            covered = await pool.fetchval(
                _RESERVE, user_id, token_id, trace_id, amount, model, owner, datetime.now(UTC)
            )
        except asyncpg.UniqueViolationError as exc:
            raise DuplicateReservation(trace_id) from exc
        return bool(covered)

    async def settle(self, settlement: Settlement) -> bool:
        return await self._settlements.submit(settlement)

    async def _settle_group(self, group: list[Settlement]) -> list[bool | Exception]:
        pool = await self._connections()
        rows = [settlement.usage for settlement in group]
        held = await pool.fetchval(
            _SETTLE,
            [row.trace_id for row in rows],
            [row.user_id for row in rows],
            [row.token_id for row in rows],
            [settlement.refund for settlement in group],
            [row.model for row in rows],
            [row.prompt_tokens for row in rows],
            [row.completion_tokens for row in rows],
            [row.cost for row in rows],
            [row.latency_ms for row in rows],
            [row.status for row in rows],
            [row.error_code for row in rows],
            [row.created_at.date().isoformat() for row in rows],
            [row.created_at for row in rows],
            [row.price_prompt for row in rows],
            [row.price_completion for row in rows],
            [row.price_multiplier for row in rows],
            [row.api for row in rows],
            datetime.now(UTC),
        )
        return [bool(h) for h in held]

    async def renew(self, lease: Lease) -> None:
        pool = await self._connections()
        await pool.execute(_RENEW, lease.owner, lease.host, lease.pid, lease.process_start, lease.expires_at)

    async def checkpoint(self) -> None:
        return None  # PostgreSQL checkpoints on its own

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
