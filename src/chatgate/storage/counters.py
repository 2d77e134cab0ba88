"""Rate-limit counters shared by the worker processes of one host, in a SQLite file of their own.

What the rate limiter keeps when there is no Redis but there are several workers: for a key (a
token, a user) and a window (a minute), the requests admitted and the tokens used; each user's
requests running now, by the worker (process id) that runs them; events in sliding windows
(sign-ups per address); and attempts with growing delays (sign-ins). ``admit`` reads the counts,
lets the caller's rule decide, and counts the request in one write transaction, so two workers can
never both take the last request of a minute or the last slot: the rule of the Redis script, with
SQLite's write lock in the place of Redis's single thread. A worker that dies holding the lock
loses it (the kernel drops its file locks), so no counter is ever stuck; the slots a dead worker
held are dropped when they would refuse a request (its process id is gone: this is one host).

A file apart from the database: counting a request must never wait behind a batch of usage rows,
nor a reservation behind a count. The counts need not survive a power loss (``synchronous=OFF``).
Like the database's fast path, each statement first runs on the event loop's own connection,
which never waits for the lock (tens of microseconds); only when another worker holds the lock at
that instant does it go to a worker thread that waits.
"""

import asyncio
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS windows (key TEXT NOT NULL, window INTEGER NOT NULL,"
    " requests INTEGER NOT NULL DEFAULT 0, tokens INTEGER NOT NULL DEFAULT 0,"
    " PRIMARY KEY (key, window)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS slots (user_id INTEGER NOT NULL, pid INTEGER NOT NULL,"
    " running INTEGER NOT NULL, PRIMARY KEY (user_id, pid)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS events (key TEXT NOT NULL, at REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS events_key ON events (key, at)",
    "CREATE TABLE IF NOT EXISTS attempts (key TEXT PRIMARY KEY, made INTEGER NOT NULL, last REAL NOT NULL)",
)

# Decides from the counts of each key asked (requests, tokens) and the user's running requests:
# 0 admits, anything else is the reason for a refusal.
Rule = Callable[[list[tuple[int, int]], int], int]


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
        for statement in _SCHEMA:
            conn.execute(statement)
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

    async def admit(
        self, keys: list[str], window: int, user_id: int | None, rule: Rule
    ) -> tuple[int, list[tuple[int, int]], int]:
        """Count one request under each of ``keys`` (and, with ``user_id``, one running request of
        that user's, held by this process) unless ``rule`` refuses it.

        The rule's verdict, each key's window counts (this request included if admitted) and the
        user's running requests (likewise).
        """
        sweep = window > self._swept
        self._swept = max(self._swept, window)
        return await self._run(_admit, keys, window, user_id, rule, sweep)  # type: ignore[no-any-return]

    async def release(self, user_id: int) -> None:
        """One of this process's running requests of the user's has ended."""
        await self._run(_release, user_id, os.getpid())

    async def add_tokens(self, key: str, window: int, tokens: int) -> None:
        await self._run(_add_tokens, key, window, tokens)

    async def hit(self, key: str, limit: int, window: float) -> float | None:
        """Count an event unless ``limit`` happened under ``key`` in the last ``window`` seconds;
        else the seconds until one more may."""
        return await self._run(_hit, key, limit, window, time.time())  # type: ignore[no-any-return]

    async def attempt(self, key: str, delay: Callable[[int], float], forgotten: float) -> float | None:
        """Count an attempt if the ``delay`` its earlier ones earned (by their number) has passed
        since the last; else the seconds left. Attempts older than ``forgotten`` seconds don't count."""
        return await self._run(_attempt, key, delay, forgotten, time.time())  # type: ignore[no-any-return]

    async def failed(self, key: str) -> None:
        """The last attempt's delay runs from now."""
        await self._run(_touch, key, time.time())

    async def forgive(self, key: str, attempts: int | None) -> None:
        await self._run(_forgive, key, attempts)

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


def _running(conn: sqlite3.Connection, user_id: int) -> int:
    row = conn.execute("SELECT COALESCE(SUM(running), 0) FROM slots WHERE user_id = ?", (user_id,)).fetchone()
    return int(row[0])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _drop_dead(conn: sqlite3.Connection, user_id: int) -> None:
    """The slots of workers that have died (their requests ended with them)."""
    pids = [int(r[0]) for r in conn.execute("SELECT pid FROM slots WHERE user_id = ?", (user_id,))]
    for pid in pids:
        if pid != os.getpid() and not _alive(pid):
            conn.execute("DELETE FROM slots WHERE pid = ?", (pid,))


def _admit(
    conn: sqlite3.Connection, keys: list[str], window: int, user_id: int | None, rule: Rule, sweep: bool
) -> tuple[int, list[tuple[int, int]], int]:
    conn.execute("BEGIN IMMEDIATE")  # busy here: nothing has changed, and the caller may try again
    try:
        counts = [_counts(conn, key, window) for key in keys]
        running = _running(conn, user_id) if user_id is not None else 0
        verdict = rule(counts, running)
        if verdict and running and user_id is not None:  # are the slots held by live workers?
            _drop_dead(conn, user_id)
            running = _running(conn, user_id)
            verdict = rule(counts, running)
        if verdict:
            conn.execute("ROLLBACK")
            return verdict, counts, running
        for key in keys:
            conn.execute(
                "INSERT INTO windows (key, window, requests) VALUES (?, ?, 1)"
                " ON CONFLICT (key, window) DO UPDATE SET requests = requests + 1",
                (key, window),
            )
        if user_id is not None:
            conn.execute(
                "INSERT INTO slots (user_id, pid, running) VALUES (?, ?, 1)"
                " ON CONFLICT (user_id, pid) DO UPDATE SET running = running + 1",
                (user_id, os.getpid()),
            )
        if sweep:  # a new minute: the windows before the last one are of no use to anyone
            conn.execute("DELETE FROM windows WHERE window < ?", (window - 1,))
        conn.execute("COMMIT")
        return 0, [(requests + 1, tokens) for requests, tokens in counts], running + int(user_id is not None)
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _release(conn: sqlite3.Connection, user_id: int, pid: int) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("UPDATE slots SET running = running - 1 WHERE user_id = ? AND pid = ?", (user_id, pid))
        conn.execute("DELETE FROM slots WHERE user_id = ? AND pid = ? AND running <= 0", (user_id, pid))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _hit(conn: sqlite3.Connection, key: str, limit: int, window: float, now: float) -> float | None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("DELETE FROM events WHERE key = ? AND at <= ?", (key, now - window))
        conn.execute("DELETE FROM events WHERE at <= ?", (now - max(window, 86_400),))  # others' old ones
        row = conn.execute("SELECT COUNT(*), MIN(at) FROM events WHERE key = ?", (key,)).fetchone()
        if int(row[0]) >= limit:
            conn.execute("COMMIT")
            return float(row[1]) + window - now
        conn.execute("INSERT INTO events (key, at) VALUES (?, ?)", (key, now))
        conn.execute("COMMIT")
        return None
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _attempt(
    conn: sqlite3.Connection, key: str, delay: Callable[[int], float], forgotten: float, now: float
) -> float | None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        row = conn.execute("SELECT made, last FROM attempts WHERE key = ?", (key,)).fetchone()
        made, last = (int(row[0]), float(row[1])) if row else (0, 0.0)
        if made and now - last > forgotten:
            made = 0
        wait = last + delay(made) - now
        if made and wait > 0:
            conn.execute("COMMIT")
            return wait
        conn.execute(
            "INSERT INTO attempts (key, made, last) VALUES (?, ?, ?)"
            " ON CONFLICT (key) DO UPDATE SET made = excluded.made, last = excluded.last",
            (key, made + 1, now),
        )
        conn.execute("DELETE FROM attempts WHERE last < ?", (now - forgotten,))
        conn.execute("COMMIT")
        return None
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _touch(conn: sqlite3.Connection, key: str, now: float) -> None:
    conn.execute("UPDATE attempts SET last = ? WHERE key = ?", (now, key))


def _forgive(conn: sqlite3.Connection, key: str, attempts: int | None) -> None:
    if attempts is None:
        conn.execute("DELETE FROM attempts WHERE key = ?", (key,))
    else:
        conn.execute("UPDATE attempts SET made = made - ? WHERE key = ?", (attempts, key))
        conn.execute("DELETE FROM attempts WHERE key = ? AND made <= 0", (key,))


def _add_tokens(conn: sqlite3.Connection, key: str, window: int, tokens: int) -> None:
    conn.execute(
        "INSERT INTO windows (key, window, tokens) VALUES (?, ?, ?)"
        " ON CONFLICT (key, window) DO UPDATE SET tokens = tokens + excluded.tokens",
        (key, window, tokens),
    )
