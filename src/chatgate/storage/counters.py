"""Per-minute counters shared by the worker processes of one host, in a SQLite file of their own.

What the rate limiter keeps when there is no Redis but there are several workers: for a key (a
token) and a window (a minute), the requests admitted and the tokens used. ``admit`` checks both
against their limits and counts the request in one write transaction, so two workers can never
both take the last request of a minute: the rule of the Redis script, with SQLite's write lock
in the place of Redis's single thread. A worker that dies holding the lock loses it (the kernel
drops its file locks), so no counter is ever stuck.

A file apart from the database: counting a request must never wait behind a batch of usage rows,
nor a reservation behind a count. The counts need not survive a power loss (``synchronous=OFF``).
Like the database's fast path, each statement first runs on the event loop's own connection,
which never waits for the lock (tens of microseconds); only when another worker holds the lock at
that instant does it go to a worker thread that waits.
"""

import asyncio
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS windows (key TEXT NOT NULL, window INTEGER NOT NULL,"
    " requests INTEGER NOT NULL DEFAULT 0, tokens INTEGER NOT NULL DEFAULT 0,"
    " PRIMARY KEY (key, window)) WITHOUT ROWID"
)


class CounterStore:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="counters")
        self._waiting: sqlite3.Connection | None = None
        self._inline: sqlite3.Connection | None = None
        self._inline_thread: int | None = None
        self._swept = 0

    def _open(self, busy_ms: int) -> sqlite3.Connection:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self._path, isolation_level=None, timeout=30, check_same_thread=False)
        # Setting the file up may wait for another worker doing the same (once, at the first request).
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(_SCHEMA)
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute(f"PRAGMA busy_timeout={busy_ms}")
        return conn

    def _connection(self) -> sqlite3.Connection | None:
        """The event loop thread's connection, which never waits (the first thread to ask owns it)."""
        if self._inline is None:
            self._inline, self._inline_thread = self._open(0), threading.get_ident()
        return self._inline if self._inline_thread == threading.get_ident() else None

    def _waiting_connection(self) -> sqlite3.Connection:
        if self._waiting is None:  # used only on the executor's one thread
            self._waiting = self._open(30_000)
        return self._waiting

    async def _run(self, work: Any, *args: Any) -> Any:
        inline = self._connection()
        if inline is not None:
            try:
                return work(inline, *args)
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                # Another worker holds the lock this instant; nothing was changed. Wait off the loop.
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: work(self._waiting_connection(), *args))

    async def admit(self, key: str, window: int, rpm: int | None, tpm: int | None) -> tuple[bool, int, int]:
        """Count one request unless the window's requests or tokens have reached their limit.

        Whether it was admitted, and the window's requests (this one included) and tokens.
        """
        sweep = window > self._swept
        self._swept = max(self._swept, window)
        return await self._run(_admit, key, window, rpm, tpm, sweep)  # type: ignore[no-any-return]

    async def add_tokens(self, key: str, window: int, tokens: int) -> None:
        await self._run(_add_tokens, key, window, tokens)

    async def counts(self, key: str, window: int) -> tuple[int, int]:
        return await self._run(_counts, key, window)  # type: ignore[no-any-return]

    def close(self) -> None:
        def shut() -> None:
            if self._waiting is not None:
                self._waiting.close()

        self._executor.submit(shut).result()
        self._executor.shutdown()
        if self._inline is not None:
            self._inline.close()
            self._inline = None


def _counts(conn: sqlite3.Connection, key: str, window: int) -> tuple[int, int]:
    row = conn.execute(
        "SELECT requests, tokens FROM windows WHERE key = ? AND window = ?", (key, window)
    ).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


def _admit(
    conn: sqlite3.Connection, key: str, window: int, rpm: int | None, tpm: int | None, sweep: bool
) -> tuple[bool, int, int]:
    conn.execute("BEGIN IMMEDIATE")  # busy here: nothing has changed, and the caller may try again
    try:
        requests, tokens = _counts(conn, key, window)
        if (rpm is not None and requests >= rpm) or (tpm is not None and tokens >= tpm):
            conn.execute("ROLLBACK")
            return False, requests, tokens
        conn.execute(
            "INSERT INTO windows (key, window, requests) VALUES (?, ?, 1)"
            " ON CONFLICT (key, window) DO UPDATE SET requests = requests + 1",
            (key, window),
        )
        if sweep:  # a new minute: the windows before the last one are of no use to anyone
            conn.execute("DELETE FROM windows WHERE window < ?", (window - 1,))
        conn.execute("COMMIT")
        return True, requests + 1, tokens
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _add_tokens(conn: sqlite3.Connection, key: str, window: int, tokens: int) -> None:
    conn.execute(
        "INSERT INTO windows (key, window, tokens) VALUES (?, ?, ?)"
        " ON CONFLICT (key, window) DO UPDATE SET tokens = tokens + excluded.tokens",
        (key, window, tokens),
    )
