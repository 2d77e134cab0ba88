"""The two queries on every request's path (token lookup, credit reservation), for SQLite.

Through SQLAlchemy and aiosqlite every statement is a hop to a worker thread and back, so a
three-statement reservation costs about 1.1 ms; run as one function on a thread that owns its
own sqlite3 connection it costs about 0.26 ms, nearly all of it the two thread wake-ups. So each
query first runs right on the event loop's thread, on a connection of its own that never waits
for a lock (``busy_timeout`` 0) and never checkpoints: tens of microseconds. Only when the
database is locked at that instant (a batch of usage rows being written) does it go to the worker
thread, which waits for the lock. Only these two queries take this path (PostgreSQL has its own,
in ``fastpath_postgres``); everything else goes through SQLAlchemy.
"""

import asyncio
import json
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

# SQLAlchemy's storage format for DateTime on SQLite, so rows written here read back the same.
_SQLITE_TIME = "%Y-%m-%d %H:%M:%S.%f"


@dataclass(frozen=True)
class TokenRow:
    token_id: int
    user_id: int
    revoked: bool
    expires_at: datetime | None
    allowed_models: list[str] | None
    rpm_limit: int | None
    tpm_limit: int | None
    user_disabled: bool


class DuplicateReservation(Exception):
    """A reservation for a trace id that already has one."""


class FastPath(Protocol):
    """The hot-path queries, one implementation per database."""

    async def token(self, secret_hash: str) -> TokenRow | None: ...

    async def reserve(self, *, user_id: int, token_id: int | None, trace_id: str, amount: int) -> bool:
        """Take ``amount`` from the balance and the token's cap, both or neither; False if not covered.

        Raises DuplicateReservation for a trace id that was already reserved.
        """
        ...

    async def aclose(self) -> None: ...


# The token lookup, the same on both databases but for its placeholder (SQLite's ?, asyncpg's $1).
TOKEN_QUERY = (
    "SELECT t.id, t.user_id, t.revoked_at, t.expires_at, t.allowed_models, t.rpm_limit, t.tpm_limit, u.disabled"
    " FROM api_tokens t JOIN users u ON u.id = t.user_id WHERE t.secret_hash = {}"
)


def token_row(row: Any, expires_at: datetime | None) -> TokenRow:
    """A TOKEN_QUERY row; ``expires_at`` as each driver reads it into an aware datetime."""
    return TokenRow(
        token_id=row[0],
        user_id=row[1],
        revoked=row[2] is not None,
        expires_at=expires_at,
        allowed_models=json.loads(row[4]) if row[4] is not None else None,
        rpm_limit=row[5],
        tpm_limit=row[6],
        user_disabled=bool(row[7]),
    )


def _parse_time(value: str | None) -> datetime | None:
    if value is None:
        return None
    return datetime.fromisoformat(value).replace(tzinfo=UTC)


class SqliteFastPath:
    def __init__(self, path: str) -> None:
        self._path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-fastpath")
        self._conn: sqlite3.Connection | None = None
        self._inline: sqlite3.Connection | None = None
        self._inline_thread: int | None = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:  # created on, and used only by, the executor's one thread
            conn = sqlite3.connect(self._path, isolation_level=None, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._conn = conn
        return self._conn

    def _inline_connection(self) -> sqlite3.Connection | None:
        """The event loop thread's own connection (the first thread to ask owns it)."""
        if self._inline is None:
            conn = sqlite3.connect(self._path, isolation_level=None, timeout=0)
            conn.execute("PRAGMA busy_timeout=0")
            conn.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints are the other connections' work
            conn.execute("PRAGMA synchronous=NORMAL")
            self._inline, self._inline_thread = conn, threading.get_ident()
        return self._inline if self._inline_thread == threading.get_ident() else None

    async def _run(self, work: Any, *args: Any) -> Any:
        inline = self._inline_connection()
        if inline is not None:
            try:
                return work(inline, *args)
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                # Locked right now: nothing was changed (see _reserve); wait for the lock off the loop.
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: work(self._connection(), *args))

    async def token(self, secret_hash: str) -> TokenRow | None:
        return await self._run(_token, secret_hash)  # type: ignore[no-any-return]

    async def reserve(self, *, user_id: int, token_id: int | None, trace_id: str, amount: int) -> bool:
        try:
            return await self._run(_reserve, user_id, token_id, trace_id, amount)  # type: ignore[no-any-return]
        except sqlite3.IntegrityError as exc:
            raise DuplicateReservation(trace_id) from exc

    async def aclose(self) -> None:
        self.close()

    def close(self) -> None:
        def shut() -> None:
            if self._conn is not None:
                self._conn.close()

        self._executor.submit(shut).result()
        self._executor.shutdown()
        if self._inline is not None and self._inline_thread == threading.get_ident():
            self._inline.close()
            self._inline = None


def _token(conn: sqlite3.Connection, secret_hash: str) -> TokenRow | None:
    row = conn.execute(TOKEN_QUERY.format("?"), (secret_hash,)).fetchone()
    return None if row is None else token_row(row, _parse_time(row[3]))


def _reserve(
    conn: sqlite3.Connection, user_id: int, token_id: int | None, trace_id: str, amount: int
) -> bool:
    """The balance and the token's cap both cover it, or nothing changes (the rule of PostgresFastPath too)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        taken = conn.execute(
            "UPDATE users SET credits = credits - ? WHERE id = ? AND credits >= ?", (amount, user_id, amount)
        ).rowcount
        if taken and token_id is not None:
            taken = conn.execute(
                "UPDATE api_tokens SET spent = spent + ? WHERE id = ? AND (quota_cap IS NULL OR spent + ? <= quota_cap)",
                (amount, token_id, amount),
            ).rowcount
        if not taken:
            conn.execute("ROLLBACK")
            return False
        conn.execute(
            "INSERT INTO ledger (trace_id, kind, user_id, token_id, amount, created_at) VALUES (?, 'reserve', ?, ?, ?, ?)",
            (trace_id, user_id, token_id, -amount, datetime.now(UTC).strftime(_SQLITE_TIME)),
        )
        conn.execute("COMMIT")
        return True
    except BaseException:
        conn.execute("ROLLBACK")
        raise
