"""The queries on every request's path (token lookup, reservation, settlement), for PostgreSQL.

Through SQLAlchemy's ORM each cost 1.7 to 2.5 ms at 50 requests/s (a session, a transaction and
the ORM's unit of work around one or three statements). Here they run on asyncpg directly, on a
small pool of their own, with asyncpg's prepared-statement cache. Everything else goes through
SQLAlchemy.

Settlements are group-committed: each request waits for the commit of the transaction that
carries its settlement, and the settlements that arrive while one transaction is being written go
together in the next. One request alone waits for one commit; under load a commit carries many.
A commit is durable as the server's ``synchronous_commit`` says: ``on`` (PostgreSQL's default)
waits for the WAL to reach the disk, so a settlement survives a crash of the database host too.
"""

import asyncio
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import asyncpg
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.engine import Dialect, make_url

from chatgate.storage.fastpath import (
    TOKEN_QUERY,
    DuplicateReservation,
    GroupCommit,
    Settlement,
    TokenRow,
    token_row,
)

_TOKEN = TOKEN_QUERY.format("$1")

# The same rule as SQLite's _reserve, in one short transaction: plain UPDATEs whose WHERE holds the
# rule. Under concurrency PostgreSQL re-checks an updated row's WHERE against its newest version, so
# two requests can never both spend the same credits. Plain UPDATEs (not SELECT ... FOR UPDATE) on
# purpose: their row locks do not conflict with the KEY SHARE locks that inserting usage and ledger
# rows takes through the foreign keys, so reservations neither wait for nor deadlock with the usage
# batches. The user's row first, then the token's: the order batched settlements use too.
_DEBIT = "UPDATE users SET credits = credits - $1 WHERE id = $2 AND credits >= $1"
_SPEND = "UPDATE api_tokens SET spent = spent + $1 WHERE id = $2 AND (quota_cap IS NULL OR spent + $1 <= quota_cap)"
_ENTRY = (
    "INSERT INTO ledger (trace_id, kind, user_id, token_id, amount, created_at)"
    " VALUES ($1, 'reserve', $2, $3, $4, $5)"
)
_OPEN = (
    "INSERT INTO reservations (user_id, token_id, trace_id, amount, model, owner, created_at)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7)"
)
# A batch of settlements: the open reservations closed (those a sweep has not refunded already),
# their ledger rows, the refunds (one update per user, then per token, each in id order: the order
# reservations and other batches lock them in, so no two transactions wait on each other in a
# cycle), and the usage rows.
_CLOSE = (
    "DELETE FROM reservations r USING unnest($1::bigint[], $2::text[]) AS s(user_id, trace_id)"
    " WHERE r.user_id = s.user_id AND r.trace_id = s.trace_id RETURNING r.user_id, r.trace_id"
)
_SETTLED = (
    "INSERT INTO ledger (trace_id, kind, user_id, token_id, amount, created_at)"
    " VALUES ($1, 'settle', $2, $3, $4, $5)"
)
_REFUND = "UPDATE users SET credits = credits + $1 WHERE id = $2"
_UNSPEND = "UPDATE api_tokens SET spent = spent - $1, last_used_at = $2 WHERE id = $3"
_USAGE = (
    "INSERT INTO usage_log (trace_id, user_id, token_id, model, prompt_tokens, completion_tokens, cost,"
    " latency_ms, status, error_code, day, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
)


def connect_options(url: str) -> dict[str, Any]:
    """asyncpg's connect arguments for a SQLAlchemy URL, read the way SQLAlchemy's own driver reads it
    (``?ssl=...`` included), so both connect alike."""
    dialect: Dialect = PGDialect_asyncpg()  # type: ignore[no-untyped-call]
    options: dict[str, Any] = dict(dialect.create_connect_args(make_url(url))[1])
    if "prepared_statement_cache_size" in options:  # SQLAlchemy's name for asyncpg's option
        options["statement_cache_size"] = int(options.pop("prepared_statement_cache_size"))
    options.pop("prepared_statement_name_func", None)
    return options


def _updated(status: str) -> bool:
    return status.rsplit(" ", 1)[-1] != "0"  # "UPDATE 1" / "UPDATE 0"


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
        async with pool.acquire() as conn:
            transaction = conn.transaction()
            await transaction.start()
            try:
                covered = _updated(await conn.execute(_DEBIT, amount, user_id))
                if covered and token_id is not None:
                    covered = _updated(await conn.execute(_SPEND, amount, token_id))
                if covered:
                    now = datetime.now(UTC)
                    await conn.execute(_ENTRY, trace_id, user_id, token_id, -amount, now)
                    await conn.execute(_OPEN, user_id, token_id, trace_id, amount, model, owner, now)
            except asyncpg.UniqueViolationError as exc:
                await transaction.rollback()
                raise DuplicateReservation(trace_id) from exc
            except BaseException:
                await transaction.rollback()
                raise
            if covered:
                await transaction.commit()
            else:
                await transaction.rollback()  # the balance was debited but the token's cap said no
            return covered

    async def settle(self, settlement: Settlement) -> bool:
        return await self._settlements.submit(settlement)

    async def _settle_group(self, group: list[Settlement]) -> list[bool]:
        pool = await self._connections()
        metered = [s.usage for s in group if s.usage.user_id is not None]
        now = datetime.now(UTC)
        async with pool.acquire() as conn, conn.transaction():
            held: set[tuple[int, str]] = set()
            if metered:
                closed = await conn.fetch(_CLOSE, [u.user_id for u in metered], [u.trace_id for u in metered])
                held = {(row[0], row[1]) for row in closed}
            open_ = [(s.usage.user_id, s.usage.trace_id) in held for s in group]
            refunds: dict[int, int] = defaultdict(int)
            unspent: dict[int, int] = defaultdict(int)
            entries = []
            for settlement, was_open in zip(group, open_, strict=True):
                usage = settlement.usage
                if usage.token_id is not None:
                    unspent[usage.token_id] += settlement.refund if was_open else 0
                if usage.user_id is None or not was_open:
                    continue
                entries.append((usage.trace_id, usage.user_id, usage.token_id, settlement.refund, now))
                refunds[usage.user_id] += settlement.refund
            if entries:
                await conn.executemany(_SETTLED, entries)
            if any(refunds.values()):
                await conn.executemany(_REFUND, [(a, u) for u, a in sorted(refunds.items()) if a])
            if unspent:
                await conn.executemany(_UNSPEND, [(a, now, t) for t, a in sorted(unspent.items())])
            await conn.executemany(
                _USAGE,
                [
                    (
                        s.usage.trace_id,
                        s.usage.user_id,
                        s.usage.token_id,
                        s.usage.model,
                        s.usage.prompt_tokens,
                        s.usage.completion_tokens,
                        s.usage.cost if s.usage.user_id is None or was_open else 0,
                        s.usage.latency_ms,
                        s.usage.status,
                        s.usage.error_code,
                        s.usage.created_at.date().isoformat(),
                        s.usage.created_at,
                    )
                    for s, was_open in zip(group, open_, strict=True)
                ],
            )
        return [s.usage.user_id is None or was_open for s, was_open in zip(group, open_, strict=True)]

    async def checkpoint(self) -> None:
        return None  # PostgreSQL checkpoints on its own

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
