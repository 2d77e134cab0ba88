"""The two queries on every request's path (token lookup, credit reservation), for PostgreSQL.

Through SQLAlchemy's ORM each cost 1.7 to 2.5 ms at 50 requests/s (a session, a transaction and
the ORM's unit of work around one or three statements). Here they run on asyncpg directly, on a
small pool of their own, with asyncpg's prepared-statement cache. Everything else goes through
SQLAlchemy.
"""

import asyncio
from datetime import UTC, datetime
from typing import Any

import asyncpg
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.engine import Dialect, make_url

from chatgate.storage.fastpath import TOKEN_QUERY, DuplicateReservation, TokenRow, token_row

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

    async def reserve(self, *, user_id: int, token_id: int | None, trace_id: str, amount: int) -> bool:
        pool = await self._connections()
        async with pool.acquire() as conn:
            transaction = conn.transaction()
            await transaction.start()
            try:
                covered = _updated(await conn.execute(_DEBIT, amount, user_id))
                if covered and token_id is not None:
                    covered = _updated(await conn.execute(_SPEND, amount, token_id))
                if covered:
                    await conn.execute(_ENTRY, trace_id, user_id, token_id, -amount, datetime.now(UTC))
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

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
