"""The queries on every request's path (token lookup, reservation, settlement), for SQLite.

Through SQLAlchemy and aiosqlite every statement is a hop to a worker thread and back, so a
three-statement reservation costs about 1.1 ms; run as one function on a thread that owns its
own sqlite3 connection it costs about 0.26 ms, nearly all of it the two thread wake-ups. So each
query runs right on the event loop's thread, on a connection of its own that never waits for a
lock (``busy_timeout`` 0) and never checkpoints: tens of microseconds, each transaction begun and
committed within one call, so this process never holds the write lock across an await. When
another connection holds the lock at that instant (another worker, or one of SQLAlchemy's
transactions: a sweep's refund, a console write), the query is tried again on the loop a
fraction of a millisecond later, until the lock is free. Not on a thread that waits: that thread
queued every locked query behind the others, waited in SQLite's busy handler (which sleeps 1, 2,
5, 10... up to 100 ms between looks) and then for the interpreter's lock (5 ms turns against a
busy loop), which under load held requests 10 to 60 ms each (see docs/benchmarks.md). Only these
queries take this path (PostgreSQL has its own, in ``fastpath_postgres``); everything else goes
through SQLAlchemy.

A settlement is one transaction too: the request's usage row, its ledger row, the refund to the
balance and the token, and the deletion of its open reservation, committed before the request's
last byte is written. The reservations and settlements asked for in one turn of the event loop
share a transaction (GroupCommit), each in a savepoint of its own, so one that is refused or breaks
a constraint changes nothing and holds back no other: a commit is mostly the WAL write of the pages
it touched (the balance's, the token's, the tails of the ledger and of the tables of reservations
and usage), so ten in one cost a third of ten apart and write a fraction of the WAL, and a request
waits for no other turn. The database runs in WAL mode with ``synchronous=NORMAL``: a commit is in
the WAL file (the operating system's cache) when it returns, so it survives the process being
killed; only a power loss or a kernel crash can take the last commits with it (``FULL`` would
fsync every commit). The inline connection never checkpoints: every ``CHECKPOINT_EVERY`` writes
a checkpoint runs on a thread of its own and starts the WAL over (see ``_checkpoint``), so the WAL
file does not grow without end.
"""

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, Protocol, TypeVar

from chatgate.storage.reservations import Lease
from chatgate.storage.usage import UsageRow

log = logging.getLogger("chatgate.storage")
CHECKPOINT_EVERY = 1000  # commits (of reservations and settlements) between WAL checkpoints
# The checkpoint thread's niceness: a checkpoint copies for a few milliseconds, and where it shares a
# core with the event loop (a server on one core, or every core busy) it preempted requests for as
# long (at 800 requests/s: 28 checkpoints in 20 s, 187 ms in all). At 19 the loop's thread gets
# about 98 % of a shared core while both want it; alone, the checkpoint runs at full speed.
CHECKPOINT_NICE = 19
# A RESTART checkpoint that finds the write lock taken (a transaction of the loop's, tens of
# microseconds) tries again after RESTART_PAUSE seconds, up to RESTART_TRIES times in all.
RESTART_TRIES = 25
RESTART_PAUSE = 0.002
# Each item of a group commits in a savepoint of its own, and SQLite keeps what a savepoint would
# undo in a statement journal: in memory up to 64 KiB, then in a new file in the temporary directory.
# A settlement touches a dozen or more pages (its balance, token, ledger, usage row, indexes), so now
# and then its journal passed 64 KiB and the event loop created, wrote and deleted a file mid-request:
# about 10 a second at 800 requests/s, two of them 5 and 6 ms where the file system had to read the
# directory back from disk (27 files in 4,000 writes of the unit test's pattern). With
# temp_store=MEMORY the journal never leaves memory; it holds one item's pages at most, since each
# savepoint is released before the next.
JOURNAL_IN_MEMORY = "PRAGMA temp_store=MEMORY"

# SQLAlchemy's storage format for DateTime on SQLite, so rows written here read back the same.
SQLITE_TIME = "%Y-%m-%d %H:%M:%S.%f"


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
    credits_left: int  # what the balance and the token's cap allow now, the smaller
    user_rpm: int | None  # the user's own limits (None: the server's defaults)
    user_tpm: int | None
    user_concurrency: int | None
    group: str = "default"
    price_multiplier: int = 1000  # the user's group's, in thousandths
    group_models: list[str] | None = None  # the models the user's group may use; None: all


class DuplicateReservation(Exception):
    """A reservation for a trace id that already has one."""


@dataclass(frozen=True)
class Settlement:
    """How a request ended: its usage row (``cost`` is the charge) and, for a user's request, what
    goes back of its reservation (the reserved amount less the charge)."""

    usage: UsageRow
    refund: int = 0


@dataclass(frozen=True)
class Reservation:
    """A reservation asked of SQLite's grouped writes (see ``FastPath.reserve``)."""

    user_id: int
    token_id: int | None
    trace_id: str
    amount: int
    model: str
    owner: str


class FastPath(Protocol):
    """The hot-path queries, one implementation per database."""

    async def token(self, secret_hash: str) -> TokenRow | None: ...

    async def reserve(
        self, *, user_id: int, token_id: int | None, trace_id: str, amount: int, model: str, owner: str
    ) -> bool:
        """Take ``amount`` from the balance and the token's cap, both or neither, and record the open
        reservation (for ``model``) as ``owner``'s; False if not covered.

        Raises DuplicateReservation for a trace id that was already reserved.
        """
        ...

    async def settle(self, settlement: Settlement) -> bool:
        """Commit a request's settlement (durably, see the module docstring) before returning.

        False if its reservation was no longer open (a sweep refunded it in full): then nothing is
        refunded again and the usage row is written with no cost.
        """
        ...

    async def renew(self, lease: Lease) -> None:
        """Insert this process's lease, or move its expiry on (see services/recovery.py)."""
        ...

    async def aclose(self) -> None: ...


# The lease's renewal, on both databases but for their placeholders: one statement.
RENEW_QUERY = (
    "INSERT INTO leases (owner, host, pid, process_start, expires_at) VALUES ({}, {}, {}, {}, {})"
    " ON CONFLICT (owner) DO UPDATE SET expires_at = excluded.expires_at"
)

# The token lookup, the same on both databases but for its placeholder (SQLite's ?, asyncpg's $1):
# one query for the token and its user's state and limits.
TOKEN_QUERY = (
    "SELECT t.id, t.user_id, t.revoked_at, t.expires_at, t.allowed_models, t.rpm_limit, t.tpm_limit, u.disabled,"
    " u.credits, t.quota_cap, t.spent, u.group_name, g.multiplier, g.models,"
    " u.rpm_limit, u.tpm_limit, u.concurrency_limit"
    " FROM api_tokens t JOIN users u ON u.id = t.user_id LEFT JOIN user_groups g ON g.name = u.group_name"
    " WHERE t.secret_hash = {}"
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
        credits_left=row[8] if row[9] is None else min(row[8], row[9] - row[10]),
        group=row[11],
        price_multiplier=row[12] if row[12] is not None else 1000,
        group_models=json.loads(row[13]) if row[13] is not None else None,
        user_rpm=row[14],
        user_tpm=row[15],
        user_concurrency=row[16],
    )


def _parse_time(value: str | None) -> datetime | None:
    if value is None:
        return None
    return datetime.fromisoformat(value).replace(tzinfo=UTC)


# When another connection holds the write lock, a query tries again after these many seconds (then
# after the last, again and again) for up to LOCK_TIMEOUT seconds. Every transaction of this path
# is over within one call, so the lock is free again well within a millisecond unless someone
# else's transaction holds it.
RETRY_AFTER = (0.0002, 0.0005, 0.001)
LOCK_TIMEOUT = 30.0
MAX_GROUP = 256  # settlements in one transaction, at most
T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    """Items written together: ``submit`` returns once the transaction holding its item committed.

    A writer task runs while items wait: it takes everything waiting (up to ``max_group``), writes
    it in one call, hands each submitter its result (or the error), and goes round again. The write
    may answer an item with an exception instance: that submitter alone gets it raised.
    """

    def __init__(
        self, write: Callable[[list[T]], Awaitable[list[R | Exception]]], *, max_group: int = MAX_GROUP
    ) -> None:
        self._write = write
        self._max = max_group
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain(), name="group-commit")
        return await future

    async def _drain(self) -> None:
        try:
            while self._waiting:
                group, self._waiting = self._waiting[: self._max], self._waiting[self._max :]
                try:
                    results = await self._write([item for item, _ in group])
                    if len(results) != len(group):
                        raise RuntimeError(f"a group of {len(group)} writes had {len(results)} answers")
                except BaseException as exc:
                    _fail(group, exc)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for (_, future), result in zip(group, results, strict=True):
                    if future.done():
                        continue
                    if isinstance(result, Exception):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            # Whatever ended this writer (a cancellation, the loop shutting down), nobody is left
            # waiting on it: what it had not taken yet fails too (a submitter would wait forever).
            waiting, self._waiting = self._waiting, []
            _fail(waiting, ConnectionError("the group writer stopped before this write"))


def _fail(group: "list[tuple[T, asyncio.Future[R]]]", exc: BaseException) -> None:
    for _, future in group:
        if not future.done():
            future.set_exception(exc if isinstance(exc, Exception) else ConnectionError(str(exc)))


class PathStats:
    """How the fast path's queries ran, for ``/metrics``: per query (token, reserve, settle) and way
    (``inline`` on the event loop's connection at once, ``waited`` tried again on the loop until the
    lock was free, ``thread`` from a caller off the loop), how many and the seconds they took; and
    how many reservations and settlements went in how many commits."""

    def __init__(self, wal: str = "") -> None:
        self.wal = wal  # the WAL file's path: its size is read at scrape time
        self.calls: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0.0])
        self.reservations = 0
        self.settlements = 0
        self.commits = 0
        self.checkpoints = 0
        self.restarts = 0  # checkpoints that started the WAL over

    def add(self, query: str, way: str, seconds: float) -> None:
        entry = self.calls[query, way]
        entry[0] += 1
        entry[1] += seconds

    def lines(self) -> list[str]:
        """The counters in Prometheus' text exposition format."""
        out = [
            "# HELP chatgate_fastpath_queries_total Hot-path queries, by query and by way (inline or waited for the lock).",
            "# TYPE chatgate_fastpath_queries_total counter",
        ]
        out += [
            f'chatgate_fastpath_queries_total{{query="{q}",way="{w}"}} {int(c)}'
            for (q, w), (c, _) in self.calls.items()
        ]
        out += [
            "# HELP chatgate_fastpath_seconds_total Time the hot-path queries took, waits included.",
            "# TYPE chatgate_fastpath_seconds_total counter",
        ]
        out += [
            f'chatgate_fastpath_seconds_total{{query="{q}",way="{w}"}} {s:.6f}'
            for (q, w), (_, s) in self.calls.items()
        ]
        out += [
            "# TYPE chatgate_fastpath_reservations_total counter",
            f"chatgate_fastpath_reservations_total {self.reservations}",
            "# TYPE chatgate_fastpath_settlements_total counter",
            f"chatgate_fastpath_settlements_total {self.settlements}",
            "# HELP chatgate_fastpath_commits_total Transactions that wrote reservations and settlements.",
            "# TYPE chatgate_fastpath_commits_total counter",
            f"chatgate_fastpath_commits_total {self.commits}",
            "# HELP chatgate_fastpath_checkpoints_total WAL checkpoints, and those that started the WAL over.",
            "# TYPE chatgate_fastpath_checkpoints_total counter",
            f'chatgate_fastpath_checkpoints_total{{restarted="yes"}} {self.restarts}',
            f'chatgate_fastpath_checkpoints_total{{restarted="no"}} {self.checkpoints - self.restarts}',
            "# TYPE chatgate_fastpath_wal_bytes gauge",
            f"chatgate_fastpath_wal_bytes {_size(self.wal)}",
        ]
        return out


def _size(path: str) -> int:
    try:
        return os.path.getsize(path) if path else 0
    except OSError:
        return 0


class SqliteFastPath:
    def __init__(self, path: str) -> None:
        self._path = path
        self.stats = PathStats(f"{path}-wal")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-fastpath")
        self._conn: sqlite3.Connection | None = None
        self._inline: sqlite3.Connection | None = None
        self._inline_thread: int | None = None
        self._checkpointer = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="sqlite-checkpoint", initializer=_yield_to_the_loop
        )
        self._checkpoint_conn: sqlite3.Connection | None = None
        self._writes = 0
        self._checkpointing = False
        # Reservations and settlements asked for in one turn of the event loop: one transaction.
        self._writes_waiting: GroupCommit[Reservation | Settlement, bool] = GroupCommit(self._write_group)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:  # created on, and used only by, the executor's one thread
            conn = sqlite3.connect(self._path, isolation_level=None, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(JOURNAL_IN_MEMORY)
            self._conn = conn
        return self._conn

    def _inline_connection(self) -> sqlite3.Connection | None:
        """The event loop thread's own connection (the first thread to ask owns it)."""
        if self._inline is None:
            conn = sqlite3.connect(self._path, isolation_level=None, timeout=0)
            with contextlib.suppress(sqlite3.OperationalError):  # WAL already, unless it was never set
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA busy_timeout=0")
            conn.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints are the other connections' work
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(JOURNAL_IN_MEMORY)
            self._inline, self._inline_thread = conn, threading.get_ident()
        return self._inline if self._inline_thread == threading.get_ident() else None

    async def _run(self, query: str, work: Any, *args: Any) -> Any:
        started = time.perf_counter()
        inline = self._inline_connection()
        if inline is None:  # not the event loop's thread: the worker thread's connection, which waits
            loop = asyncio.get_running_loop()
            result = await loop.run_in_executor(self._executor, lambda: work(self._connection(), *args))
            self.stats.add(query, "thread", time.perf_counter() - started)
            return result
        tries = 0
        while True:
            try:
                result = work(inline, *args)
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                if time.perf_counter() - started > LOCK_TIMEOUT:
                    raise
            # Another connection holds the write lock (nothing was changed, see _reserve): try again
            # shortly, here on the loop, so the query runs the moment the lock is free.
            await asyncio.sleep(RETRY_AFTER[min(tries, len(RETRY_AFTER) - 1)])
            tries += 1
        self.stats.add(query, "inline" if tries == 0 else "waited", time.perf_counter() - started)
        return result

    async def token(self, secret_hash: str) -> TokenRow | None:
        return await self._run("token", _token, secret_hash)  # type: ignore[no-any-return]

    async def reserve(
        self, *, user_id: int, token_id: int | None, trace_id: str, amount: int, model: str, owner: str
    ) -> bool:
        return await self._writes_waiting.submit(
            Reservation(user_id, token_id, trace_id, amount, model, owner)
        )

    async def settle(self, settlement: Settlement) -> bool:
        return await self._writes_waiting.submit(settlement)

    async def renew(self, lease: Lease) -> None:
        """Here, not through SQLAlchemy: there the write lock was held from the statement to the
        commit, two hops to aiosqlite's thread and back through a busy loop (10 to 25 ms under load),
        and every reservation and settlement waited that long."""
        await self._run("lease", _renew, lease)
        self._wrote()

    async def write(self, query: str, work: Callable[[sqlite3.Connection], T]) -> T:
        """Another module's small write, run the way this path runs its own: on the loop's
        connection in one transaction begun and committed within one call, so the write lock is
        never held across an await (through SQLAlchemy it was held from the first statement to the
        commit, two hops through a busy loop, while every reservation waited)."""
        result: T = await self._run(query, _in_transaction, work)
        self._wrote()
        return result

    async def _write_group(self, group: list[Reservation | Settlement]) -> list[bool | Exception]:
        done: list[bool | Exception] = await self._run("write", _write_group, group)
        reserved = sum(isinstance(item, Reservation) for item in group)
        self.stats.reservations += reserved
        self.stats.settlements += len(group) - reserved
        self.stats.commits += 1
        self._wrote()
        return done

    def _wrote(self) -> None:
        """Count a write; now and then start a checkpoint (never two at once), without waiting for it."""
        self._writes += 1
        if self._writes < CHECKPOINT_EVERY or self._checkpointing:
            return
        self._writes, self._checkpointing = 0, True
        future = self._checkpointer.submit(self._checkpoint)
        future.add_done_callback(self._checkpointed)

    def _checkpointed(self, future: "Future[None]") -> None:
        self._checkpointing = False
        if future.exception() is not None:
            log.warning("WAL checkpoint failed: %s", future.exception())

    def _checkpoint(self) -> None:
        """Copy what the WAL holds into the database file, then start the WAL over.

        A passive checkpoint alone never let the WAL start over under steady writes: SQLite rewinds
        it only when a write begins with every frame copied, and writes went on while it copied, so
        the file grew by every commit (350 MB in 10 s at 400 requests/s). So first the bulk, without
        waiting for anyone (PASSIVE: writers go on; twice, the second copying what was written
        during the first), then RESTART, which takes the write lock only
        if it is free this instant (``busy_timeout`` 0; if not, the next round tries again), copies
        the few frames written meanwhile and rewinds the WAL. Writers wait for that short part
        only (on the loop, see ``_run``). A RESTART that finds the lock taken tries again a few
        milliseconds later (``RESTART_TRIES``): one that gave up at once let the WAL run on past its
        end for another ``CHECKPOINT_EVERY`` writes, growing the file to twice its size (35 to 62-69
        MiB at 800 requests/s), and the runs where it grew were the ones with the longest stalls.
        """
        if self._checkpoint_conn is None:
            self._checkpoint_conn = sqlite3.connect(self._path, isolation_level=None, timeout=0)
            self._checkpoint_conn.execute("PRAGMA busy_timeout=0")
        for _ in range(2):  # the second copies what was written during the first, a fraction of it
            self._checkpoint_conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        for tries in range(1, RESTART_TRIES + 1):
            busy, _, _ = self._checkpoint_conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
            if not busy or tries == RESTART_TRIES:
                break
            _between_tries()
        self.stats.checkpoints += 1
        self.stats.restarts += 0 if busy else 1

    async def aclose(self) -> None:
        self.close()

    def close(self) -> None:
        def shut() -> None:
            if self._conn is not None:
                self._conn.close()

        def shut_checkpoints() -> None:
            if self._checkpoint_conn is not None:
                self._checkpoint_conn.close()

        self._executor.submit(shut).result()
        self._executor.shutdown()
        self._checkpointer.submit(shut_checkpoints).result()
        self._checkpointer.shutdown()
        if self._inline is not None and self._inline_thread == threading.get_ident():
            self._inline.close()
            self._inline = None


def _yield_to_the_loop() -> None:
    """Lowers the calling thread's priority (the checkpoint thread's, see CHECKPOINT_NICE). Linux
    sets a thread's niceness by its id; raising it needs no privilege. Elsewhere, nothing changes."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), CHECKPOINT_NICE)


def _between_tries() -> None:
    time.sleep(RESTART_PAUSE)


def _in_transaction(conn: sqlite3.Connection, work: Callable[[sqlite3.Connection], T]) -> T:
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = work(conn)
        conn.execute("COMMIT")
        return result
    except BaseException:
        _end(conn)
        raise


def _token(conn: sqlite3.Connection, secret_hash: str) -> TokenRow | None:
    row = conn.execute(TOKEN_QUERY.format("?"), (secret_hash,)).fetchone()
    return None if row is None else token_row(row, _parse_time(row[3]))


def _renew(conn: sqlite3.Connection, lease: Lease) -> None:
    values = (
        lease.owner,
        lease.host,
        lease.pid,
        lease.process_start,
        lease.expires_at.strftime(SQLITE_TIME),
    )
    conn.execute(RENEW_QUERY.format(*"?????"), values)


def _now() -> str:
    return datetime.now(UTC).strftime(SQLITE_TIME)


def _reserve(conn: sqlite3.Connection, r: Reservation, now: str) -> bool:
    """The balance and the token's cap both cover it, or nothing changes (the rule of PostgresFastPath
    too); within the caller's transaction (and savepoint, in a group)."""
    taken = conn.execute(
        "UPDATE users SET credits = credits - ? WHERE id = ? AND credits >= ?",
        (r.amount, r.user_id, r.amount),
    ).rowcount
    if taken and r.token_id is not None:
        taken = conn.execute(
            "UPDATE api_tokens SET spent = spent + ? WHERE id = ? AND (quota_cap IS NULL OR spent + ? <= quota_cap)",
            (r.amount, r.token_id, r.amount),
        ).rowcount
    if not taken:
        return False
    conn.execute(
        "INSERT INTO ledger (trace_id, kind, user_id, token_id, amount, created_at) VALUES (?, 'reserve', ?, ?, ?, ?)",
        (r.trace_id, r.user_id, r.token_id, -r.amount, now),
    )
    conn.execute(
        "INSERT INTO reservations (user_id, token_id, trace_id, amount, model, owner, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (r.user_id, r.token_id, r.trace_id, r.amount, r.model, r.owner, now),
    )
    return True


_USAGE_INSERT = (
    "INSERT INTO usage_log (trace_id, user_id, token_id, model, prompt_tokens, completion_tokens, cost,"
    " latency_ms, status, error_code, day, created_at, price_prompt, price_completion, price_multiplier,"
    " api) VALUES ({})"
)
_USAGE = _USAGE_INSERT.format(", ".join("?" * 16))


def _write_group(conn: sqlite3.Connection, group: list[Reservation | Settlement]) -> list[bool | Exception]:
    """One transaction for the whole group (one WAL write, where each alone cost one), each item in a
    savepoint: a reservation that is not covered, or an item that breaks a constraint (a trace id
    reserved twice), is rolled back alone and answered alone, and the others commit.

    An item alone (most groups below saturation) needs no savepoint: the transaction is its own, and
    undoing it is rolling that back. A savepoint and its release are two statements more, and its
    journal a copy of every page the item touches: a reservation and its settlement, each alone,
    took 186 to 203 us with them and 166 to 174 us without (3,000 of each, three rounds, here)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        now = _now()
        if len(group) == 1:
            done, undo = _write_item(conn, group[0], now)
            answers = [done]
        else:
            answers, undo = [_in_savepoint(conn, item, now) for item in group], False
        conn.execute("ROLLBACK" if undo else "COMMIT")
        return answers
    except BaseException:
        _end(conn)
        raise


def _end(conn: sqlite3.Connection) -> None:
    """Roll back what a failed write left open: whatever failed, even the commit (which leaves the
    transaction open when it fails), the connection is ready for the next write."""
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def _in_savepoint(conn: sqlite3.Connection, item: Reservation | Settlement, now: str) -> bool | Exception:
    conn.execute("SAVEPOINT item")
    done, undo = _write_item(conn, item, now)
    if undo:
        conn.execute("ROLLBACK TO item")
    conn.execute("RELEASE item")
    return done


def _write_item(
    conn: sqlite3.Connection, item: Reservation | Settlement, now: str
) -> tuple[bool | Exception, bool]:
    """An item's writes, within the caller's transaction: its answer, and whether what it wrote is to
    be undone (a reservation not covered, or a constraint broken)."""
    try:
        if isinstance(item, Reservation):
            covered = _reserve(conn, item, now)
            return covered, not covered
        return _settle(conn, item, now), False  # False (swept before): its usage row stays
    except sqlite3.IntegrityError as exc:
        return (DuplicateReservation(item.trace_id) if isinstance(item, Reservation) else exc), True


def _settle(conn: sqlite3.Connection, settlement: Settlement, now: str) -> bool:
    row = settlement.usage
    held = True
    if row.user_id is not None:
        held = (
            conn.execute(
                "DELETE FROM reservations WHERE user_id = ? AND trace_id = ?", (row.user_id, row.trace_id)
            ).rowcount
            == 1
        )
        if held:
            conn.execute(
                "INSERT INTO ledger (trace_id, kind, user_id, token_id, amount, created_at) VALUES (?, 'settle', ?, ?, ?, ?)",
                (row.trace_id, row.user_id, row.token_id, settlement.refund, now),
            )
            if settlement.refund:
                conn.execute(
                    "UPDATE users SET credits = credits + ? WHERE id = ?", (settlement.refund, row.user_id)
                )
    if row.token_id is not None:
        conn.execute(
            "UPDATE api_tokens SET spent = spent - ?, last_used_at = ? WHERE id = ?",
            (settlement.refund if held and row.user_id is not None else 0, now, row.token_id),
        )
    conn.execute(_USAGE, _usage_values(row, held, row.created_at.strftime(SQLITE_TIME)))
    return held


def _usage_values(row: UsageRow, held: bool, created_at: Any) -> tuple[Any, ...]:
    """The usage row's values in _USAGE_INSERT's order; no cost if its reservation had been swept."""
    return (
        row.trace_id,
        row.user_id,
        row.token_id,
        row.model,
        row.prompt_tokens,
        row.completion_tokens,
        row.cost if held else 0,
        row.latency_ms,
        row.status,
        row.error_code,
        row.created_at.date().isoformat(),
        created_at,
        row.price_prompt,
        row.price_completion,
        row.price_multiplier,
        row.api,
    )
