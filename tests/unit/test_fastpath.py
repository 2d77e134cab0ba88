"""SQLite's hot-path queries: on the event loop's own connection, waiting on the loop when another holds the lock."""

import asyncio
import contextlib
import functools
import os
import sqlite3
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from chatgate.storage import deployments, fastpath, reservations
from chatgate.storage.database import Database, migrate
from chatgate.storage.deployments import MinuteFigures
from chatgate.storage.fastpath import (
    CHECKPOINT_NICE,
    DuplicateReservation,
    GroupCommit,
    Reservation,
    Settlement,
    SqliteFastPath,
)
from chatgate.storage.reservations import Lease
from chatgate.storage.usage import UsageRow

NOW = "2026-11-25 12:00:00.000000"


def database_with_a_token(tmp_path: Path, credits: int) -> str:
    path = tmp_path / "chatgate.db"
    migrate(f"sqlite+aiosqlite:///{path}")
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO users (id, email, is_admin, disabled, credits, created_at, rpm_limit)"
            " VALUES (1, 'a@b.c', 0, 0, ?, ?, 5)",
            (credits, NOW),
        )
        conn.execute(
            "INSERT INTO api_tokens (id, user_id, name, prefix, secret_hash, created_at, spent)"
            " VALUES (7, 1, 'k', 'sk-x', 'h', ?, 0)",
            (NOW,),
        )
    return str(path)


def balance(path: str) -> tuple[int, int, int]:
    with sqlite3.connect(path) as conn:
        credits = conn.execute("SELECT credits FROM users WHERE id = 1").fetchone()[0]
        spent = conn.execute("SELECT spent FROM api_tokens WHERE id = 7").fetchone()[0]
        entries = conn.execute("SELECT count(*) FROM ledger").fetchone()[0]
    return credits, spent, entries


def held(path: str) -> list[tuple[str, int, str, str]]:
    with sqlite3.connect(path) as conn:
        return [tuple(r) for r in conn.execute("SELECT trace_id, amount, model, owner FROM reservations")]


def usage_row(trace_id: str, cost: int, user_id: int | None = 1, token_id: int | None = 7) -> UsageRow:
    return UsageRow(
        trace_id=trace_id,
        user_id=user_id,
        token_id=token_id,
        model="m",
        prompt_tokens=3,
        completion_tokens=4,
        cost=cost,
        latency_ms=5,
        status="ok",
        error_code=None,
        created_at=datetime.now(UTC),
    )


def test_a_settlement_is_one_transaction_and_happens_once(tmp_path: Path) -> None:
    path = database_with_a_token(tmp_path, credits=100)
    fast = SqliteFastPath(path)

    async def use() -> tuple[bool, bool, bool]:
        await fast.reserve(user_id=1, token_id=7, trace_id="t1", amount=60, model="m", owner="o")
        first = await fast.settle(Settlement(usage_row("t1", 25), refund=35))
        again = await fast.settle(Settlement(usage_row("t1", 25), refund=35))  # already settled
        master = await fast.settle(Settlement(usage_row("m1", 9, user_id=None, token_id=None)))
        fast.close()
        return first, again, master

    assert asyncio.run(use()) == (True, False, True)
    assert balance(path) == (75, 25, 2)  # reserve and settle rows; the refund given back once
    assert held(path) == []
    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            "SELECT trace_id, user_id, cost, status, day FROM usage_log ORDER BY id"
        ).fetchall()
        last_used = conn.execute("SELECT last_used_at FROM api_tokens WHERE id = 7").fetchone()[0]
    today = datetime.now(UTC).date().isoformat()
    assert rows == [("t1", 1, 25, "ok", today), ("t1", 1, 0, "ok", today), ("m1", None, 9, "ok", today)]
    assert last_used is not None


def test_the_queries_run_on_the_loop_thread_when_the_database_is_free(tmp_path: Path) -> None:
    path = database_with_a_token(tmp_path, credits=100)
    fast = SqliteFastPath(path)

    async def use() -> None:
        row = await fast.token("h")
        assert row is not None and row.token_id == 7 and row.user_id == 1
        assert (row.user_rpm, row.user_tpm, row.user_concurrency) == (5, None, None)  # the user's limits too
        assert await fast.token("other") is None
        assert await fast.reserve(user_id=1, token_id=7, trace_id="t1", amount=60, model="m", owner="o")
        assert not await fast.reserve(user_id=1, token_id=7, trace_id="t2", amount=60, model="m", owner="o")
        fast.close()

    asyncio.run(use())
    assert fast._conn is None  # the worker thread's connection was never needed
    assert balance(path) == (40, 60, 1)
    assert held(path) == [("t1", 60, "m", "o")]


def test_a_locked_database_makes_the_reservation_wait_on_the_loop_not_on_a_thread(tmp_path: Path) -> None:
    path = database_with_a_token(tmp_path, credits=100)
    fast = SqliteFastPath(path)
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("BEGIN IMMEDIATE")  # someone else holds the write lock (another worker, a console write)
    writer.execute("UPDATE users SET credits = credits + 5 WHERE id = 1")
    released = threading.Timer(0.3, lambda: writer.execute("COMMIT"))

    async def use() -> bool:
        released.start()
        covered = await fast.reserve(user_id=1, token_id=7, trace_id="t1", amount=30, model="m", owner="o")
        fast.close()
        return covered

    try:
        assert asyncio.run(use())
    finally:
        released.join()
        writer.close()
    assert fast._conn is None  # no thread was needed: it tried again on the loop until the lock was free
    assert fast.stats.calls["write", "waited"][0] == 1
    assert balance(path) == (75, 30, 1)  # both writes landed, once each


def counted_groups(fast: SqliteFastPath) -> list[int]:
    """The size of each group the fast path writes from now on, in order."""
    groups: list[int] = []
    write = fast._write_group

    async def counted(group: list[Reservation | Settlement]) -> list[bool | Exception]:
        groups.append(len(group))
        return await write(group)

    fast._writes_waiting._write = counted
    return groups


def test_settlements_asked_for_in_one_turn_of_the_loop_share_a_transaction(tmp_path: Path) -> None:
    path = database_with_a_token(tmp_path, credits=1000)
    fast = SqliteFastPath(path)
    groups = counted_groups(fast)

    async def use() -> list[bool]:
        for i in range(5):
            await fast.reserve(user_id=1, token_id=7, trace_id=f"t{i}", amount=100, model="m", owner="o")
        held = await asyncio.gather(
            *(fast.settle(Settlement(usage_row(f"t{i}", 10), refund=90)) for i in range(5))
        )
        fast.close()
        return list(held)

    assert asyncio.run(use()) == [True] * 5
    assert groups == [1, 1, 1, 1, 1, 5]
    assert balance(path) == (950, 50, 10) and held(path) == []
    assert (fast.stats.reservations, fast.stats.settlements, fast.stats.commits) == (5, 5, 6)


def test_reservations_and_settlements_in_one_turn_share_a_transaction_and_each_answers_alone(
    tmp_path: Path,
) -> None:
    """One commit for a settlement, a reservation covered, one not covered and one whose trace id was
    already reserved: the two refused change nothing and are told so, the others are written."""
    path = database_with_a_token(tmp_path, credits=300)
    fast = SqliteFastPath(path)
    groups = counted_groups(fast)

    async def use() -> list[bool | BaseException]:
        await fast.reserve(user_id=1, token_id=7, trace_id="t0", amount=100, model="m", owner="o")
        answers = await asyncio.gather(
            fast.settle(Settlement(usage_row("t0", 40), refund=60)),
            fast.reserve(user_id=1, token_id=7, trace_id="t1", amount=150, model="m", owner="o"),
            fast.reserve(user_id=1, token_id=7, trace_id="t2", amount=500, model="m", owner="o"),
            fast.reserve(user_id=1, token_id=7, trace_id="t1", amount=10, model="m", owner="o"),
            return_exceptions=True,
        )
        fast.close()
        return answers

    settled, covered, too_much, twice = asyncio.run(use())
    assert (settled, covered, too_much) == (True, True, False)
    assert isinstance(twice, DuplicateReservation)
    assert groups == [1, 4]
    # 300 - 40 charged - 150 held; the token spent the same; ledger: t0 reserve and settle, t1 reserve
    assert balance(path) == (110, 190, 3)
    assert held(path) == [("t1", 150, "m", "o")]
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT trace_id, cost FROM usage_log").fetchall() == [("t0", 40)]


def test_a_settlement_whose_reservation_was_swept_still_writes_its_usage_row_in_a_group(
    tmp_path: Path,
) -> None:
    path = database_with_a_token(tmp_path, credits=300)
    fast = SqliteFastPath(path)

    async def use() -> list[bool]:
        await fast.reserve(user_id=1, token_id=7, trace_id="t0", amount=100, model="m", owner="o")
        answers = await asyncio.gather(
            fast.settle(Settlement(usage_row("gone", 40), refund=60)),  # no open reservation
            fast.settle(Settlement(usage_row("t0", 30), refund=70)),
        )
        fast.close()
        return list(answers)

    assert asyncio.run(use()) == [False, True]
    assert balance(path) == (270, 30, 2)
    with sqlite3.connect(path) as conn:
        assert sorted(conn.execute("SELECT trace_id, cost FROM usage_log").fetchall()) == [
            ("gone", 0),
            ("t0", 30),
        ]


def test_a_duplicate_reservation_alone_is_refused(tmp_path: Path) -> None:
    path = database_with_a_token(tmp_path, credits=300)
    fast = SqliteFastPath(path)

    async def use() -> None:
        await fast.reserve(user_id=1, token_id=7, trace_id="t0", amount=100, model="m", owner="o")
        with pytest.raises(DuplicateReservation):
            await fast.reserve(user_id=1, token_id=7, trace_id="t0", amount=100, model="m", owner="o")
        fast.close()

    asyncio.run(use())
    assert balance(path) == (200, 100, 1)


def test_a_lease_is_taken_then_moved_on_in_one_statement_and_reads_back_as_written(tmp_path: Path) -> None:
    path = database_with_a_token(tmp_path, credits=100)
    db = Database(f"sqlite+aiosqlite:///{path}")
    start = datetime(2026, 12, 6, 12, 0, 0, 123456, tzinfo=UTC)
    first = Lease("me", "host/boot/ns", 42, 4242, start)
    later = replace(first, expires_at=start + timedelta(seconds=30))

    async def use() -> list[Lease]:
        await db.fast.renew(first)
        await db.fast.renew(later)
        async with db.sessions() as session:
            found = await reservations.leases(session)
        await db.dispose()
        return found

    assert asyncio.run(use()) == [later]
    assert isinstance(db.fast, SqliteFastPath)
    assert db.fast.stats.calls["lease", "inline"][0] == 2


def test_a_checkpoint_starts_the_wal_over_so_it_does_not_grow_with_every_write(tmp_path: Path) -> None:
    path = database_with_a_token(tmp_path, credits=10_000)
    fast = SqliteFastPath(path)

    def frames() -> int:  # the WAL's length in frames, as a checkpoint that copies nothing reports it
        with sqlite3.connect(path, isolation_level=None) as conn:
            return int(conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1])

    async def write(first: int, count: int) -> None:
        for i in range(first, first + count):
            await fast.reserve(user_id=1, token_id=7, trace_id=f"t{i}", amount=1, model="m", owner="o")

    asyncio.run(write(0, 50))
    before = frames()
    fast._checkpointer.submit(fast._checkpoint).result()  # on its thread, as the fast path runs it
    asyncio.run(write(50, 1))  # the next write starts the WAL from its beginning
    fast.close()
    assert fast.stats.restarts == 1
    assert frames() < 10 < before


@pytest.mark.parametrize("freed", [True, False])
def test_a_checkpoint_that_finds_the_lock_taken_tries_again_to_start_the_wal_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, freed: bool
) -> None:
    """Another connection holds the write lock when the checkpoint's RESTART comes: it tries again
    after a pause, and starts the WAL over once the lock is free; held throughout, it gives up after
    RESTART_TRIES, and the WAL is left as it is."""
    path = database_with_a_token(tmp_path, credits=10_000)
    fast = SqliteFastPath(path)

    async def write(first: int, count: int) -> None:
        for i in range(first, first + count):
            await fast.reserve(user_id=1, token_id=7, trace_id=f"t{i}", amount=1, model="m", owner="o")

    asyncio.run(write(0, 50))
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    pauses: list[int] = []

    def pause() -> None:
        pauses.append(1)
        if freed and len(pauses) == 3:
            holder.execute("COMMIT")  # the lock is free from the fourth try on

    monkeypatch.setattr(fastpath, "_between_tries", pause)
    fast._checkpointer.submit(fast._checkpoint).result()
    if not freed:
        holder.execute("COMMIT")
    holder.close()
    fast.close()
    assert (fast.stats.checkpoints, fast.stats.restarts) == (1, 1 if freed else 0)
    assert len(pauses) == (3 if freed else fastpath.RESTART_TRIES - 1)


def test_the_deployment_figures_written_inline_read_back_as_sqlalchemy_writes_them(tmp_path: Path) -> None:
    """The deployment monitor's write every 2 s goes through the fast path (the write lock held
    within one call, not across awaits); SQLAlchemy reads its rows back field for field, and the
    next write of the same minute overwrites its row."""
    path = database_with_a_token(tmp_path, credits=100)
    db = Database(f"sqlite+aiosqlite:///{path}")
    failed_at = datetime(2026, 12, 6, 22, 1, 2, 345678, tzinfo=UTC)
    figures = MinuteFigures("gpt#0", 29_000_000, requests=3, errors=1, latency={"4": 2, "7": 1}, in_flight=2)
    figures.cooling_until, figures.last_error, figures.last_error_at = 1.5, "upstream 503", failed_at

    async def write_twice() -> list[deployments.DeploymentMinute]:
        fast = db.sqlite_fast
        assert fast is not None
        for _ in range(2):
            work = functools.partial(deployments.write_minutes_inline, replica="r1", figures=[figures])
            for written, row_id in await fast.write("figures", work):
                written.row_id = row_id
            figures.requests += 1
        async with db.sessions() as session:
            rows = await deployments.since(session, minute=0)
        await db.dispose()
        return rows

    (row,) = asyncio.run(write_twice())
    assert (row.id, row.deployment_id, row.replica, row.minute) == (figures.row_id, "gpt#0", "r1", 29_000_000)
    assert (row.requests, row.errors, row.latency, row.in_flight) == (4, 1, {"4": 2, "7": 1}, 2)
    assert (row.cooling_until, row.last_error) == (1.5, "upstream 503")
    assert row.last_error_at is not None and row.last_error_at.replace(tzinfo=UTC) == failed_at


def test_a_group_writer_that_stops_leaves_no_submitter_waiting() -> None:
    """The writer cancelled mid-write (the loop shutting down): the group it was writing and the
    items still waiting all fail at once, none waits forever; a wrong count of answers fails its
    group too."""

    async def run() -> list[str]:
        release = asyncio.Event()

        async def write(items: list[int]) -> list[int | Exception]:
            await release.wait()
            answers: list[int | Exception] = list(items)
            return answers[:-1] if 99 in items else answers

        group: GroupCommit[int, int] = GroupCommit(write, max_group=1)
        first = asyncio.create_task(group.submit(1))
        second = asyncio.create_task(group.submit(2))
        await asyncio.sleep(0.01)  # the writer holds [1]; 2 waits
        assert group._writer is not None
        group._writer.cancel()
        outcomes = []
        for task in (first, second):
            try:
                await asyncio.wait_for(task, 5)
                outcomes.append("answered")
            except ConnectionError:
                outcomes.append("failed")
        release.set()
        try:
            await asyncio.wait_for(group.submit(99), 5)
        except RuntimeError as exc:
            outcomes.append(str(exc))
        assert await asyncio.wait_for(group.submit(3), 5) == 3  # a new writer for what comes next
        return outcomes

    assert asyncio.run(run()) == ["failed", "failed", "a group of 1 writes had 0 answers"]


def test_checkpoints_run_on_a_thread_that_yields_to_the_event_loop(tmp_path: Path) -> None:
    """The checkpoint thread runs at CHECKPOINT_NICE; the thread that serves requests keeps its own."""
    path = database_with_a_token(tmp_path, credits=100)
    fast = SqliteFastPath(str(path))
    try:
        here = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        there = fast._checkpointer.submit(
            lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        ).result()
        fast._checkpointer.submit(fast._checkpoint).result()  # and a checkpoint runs there
    finally:
        fast.close()
    assert there == CHECKPOINT_NICE
    assert here == os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) < CHECKPOINT_NICE


def statement_journal_files() -> list[str]:
    """The files SQLite has open in its temporary directory (``etilqs_*``, deleted on open)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if "etilqs_" in target:
                found.append(target)
    return found


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads /proc")
def test_a_savepoints_journal_never_becomes_a_file_on_the_event_loop(tmp_path: Path) -> None:
    """A settlement's savepoint journals every page it touches; past 64 KiB SQLite moved the journal
    into a new file, created and deleted on the loop's thread mid-request (12 files in these 2,000
    writes before the fix). Looked for while the statements run, through SQLite's progress handler.
    Each reservation is asked for with the last one's settlement, so every write is in a group of two,
    each item in its savepoint (an item alone has none)."""
    path = database_with_a_token(tmp_path, credits=10**9)
    fast = SqliteFastPath(path)
    groups = counted_groups(fast)
    seen: list[str] = []

    def look() -> int:
        seen.extend(statement_journal_files())
        return 0  # go on

    async def use() -> None:
        inline = fast._inline_connection()
        assert inline is not None
        inline.set_progress_handler(look, 50)
        last = None
        for i in range(1001):
            trace = f"req_{i:020d}"
            asked = []
            if i < 1000:
                asked.append(
                    fast.reserve(user_id=1, token_id=7, trace_id=trace, amount=100, model="m", owner="o")
                )
            if last is not None:
                asked.append(fast.settle(Settlement(usage_row(last, 10), refund=90)))
            assert all(await asyncio.gather(*asked))
            last = trace
        fast.close()

    asyncio.run(use())
    assert groups == [1] + [2] * 999 + [1]
    assert seen == []
    assert balance(path) == (10**9 - 10_000, 10_000, 2000)


def statements_of(fast: SqliteFastPath) -> list[str]:
    """The statements the loop's connection runs from now on, each as its first word."""
    inline = fast._inline_connection()
    assert inline is not None
    run: list[str] = []
    inline.set_trace_callback(lambda sql: run.append(sql.split()[0].upper()))
    return run


def test_an_item_alone_is_its_own_transaction_and_items_together_each_have_a_savepoint(
    tmp_path: Path,
) -> None:
    path = database_with_a_token(tmp_path, credits=1000)
    fast = SqliteFastPath(path)
    run = statements_of(fast)

    async def use() -> None:
        await fast.reserve(user_id=1, token_id=7, trace_id="t0", amount=100, model="m", owner="o")
        alone = list(run)
        run.clear()
        await asyncio.gather(
            fast.settle(Settlement(usage_row("t0", 40), refund=60)),
            fast.reserve(user_id=1, token_id=7, trace_id="t1", amount=100, model="m", owner="o"),
        )
        fast.close()
        assert alone == ["BEGIN", "UPDATE", "UPDATE", "INSERT", "INSERT", "COMMIT"]
        assert run.count("SAVEPOINT") == run.count("RELEASE") == 2
        assert (run[0], run[-1]) == ("BEGIN", "COMMIT")

    asyncio.run(use())
    assert balance(path) == (1000 - 40 - 100, 140, 3)


def test_a_reservation_alone_that_the_tokens_cap_does_not_cover_changes_nothing(tmp_path: Path) -> None:
    """The balance covers it and is taken first; the token's cap does not: with no savepoint, the
    whole transaction is rolled back, and the balance is as it was."""
    path = database_with_a_token(tmp_path, credits=1000)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE api_tokens SET quota_cap = 50 WHERE id = 7")
    fast = SqliteFastPath(path)
    run = statements_of(fast)

    async def use() -> bool:
        covered = await fast.reserve(user_id=1, token_id=7, trace_id="t0", amount=100, model="m", owner="o")
        fast.close()
        return covered

    assert asyncio.run(use()) is False
    assert run == ["BEGIN", "UPDATE", "UPDATE", "ROLLBACK"]
    assert balance(path) == (1000, 0, 0)
    assert held(path) == []


class FailingCommit:
    """A connection whose next ``COMMIT`` fails, as SQLite's does on a disk error, leaving the
    transaction open; every other statement goes to the real connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.failed = False

    def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
        if sql == "COMMIT" and not self.failed:
            self.failed = True
            raise sqlite3.OperationalError("disk I/O error")
        return self.conn.execute(sql, *args)

    @property
    def in_transaction(self) -> bool:
        return self.conn.in_transaction


@pytest.mark.parametrize("size", [1, 2])
def test_a_commit_that_fails_leaves_no_transaction_open_and_nothing_written(
    tmp_path: Path, size: int
) -> None:
    path = database_with_a_token(tmp_path, credits=1000)
    conn = sqlite3.connect(path, isolation_level=None)
    failing = FailingCommit(conn)
    group: list[Reservation | Settlement] = [Reservation(1, 7, f"t{i}", 100, "m", "o") for i in range(size)]
    with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
        fastpath._write_group(failing, group)  # type: ignore[arg-type]
    assert not conn.in_transaction
    assert fastpath._write_group(conn, [Reservation(1, 7, "after", 100, "m", "o")]) == [True]
    conn.close()
    assert balance(path) == (900, 100, 1)
