"""PostgreSQL's hot-path queries against a real server: exact under concurrency, all or nothing."""

import asyncio
import itertools
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from alembic import command

from chatgate.services.usage import UsageRecorder
from chatgate.storage import reservations
from chatgate.storage.database import Database, alembic_config, migrate
from chatgate.storage.fastpath import DuplicateReservation, Settlement
from chatgate.storage.fastpath_postgres import PostgresFastPath
from chatgate.storage.reservations import Lease
from chatgate.storage.usage import UsageRow
from tests.e2e import infra

_names = itertools.count()


@pytest.fixture
def url(postgres: infra.Postgres) -> Iterator[str]:
    url = postgres.create_database(f"fastpath{next(_names)}")
    migrate(url)
    yield url


async def seed(url: str, *, credits: int, quota_cap: int | None) -> None:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    now = datetime.now(UTC)
    try:
        await conn.execute(
            "INSERT INTO users (id, email, is_admin, disabled, credits, created_at, concurrency_limit)"
            " VALUES (1, 'a@b.c', false, false, $1, $2, 3)",
            credits,
            now,
        )
        await conn.execute(
            "INSERT INTO api_tokens (id, user_id, name, prefix, secret_hash, created_at, expires_at, allowed_models, quota_cap, spent, rpm_limit)"
            " VALUES (7, 1, 'k', 'sk-x', 'h', $1, $2, '[\"m1\"]', $3, 0, 9)",
            now,
            now + timedelta(days=1),
            quota_cap,
        )
    finally:
        await conn.close()


async def state(url: str) -> tuple[int, int, int]:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    try:
        credits = await conn.fetchval("SELECT credits FROM users WHERE id = 1")
        spent = await conn.fetchval("SELECT spent FROM api_tokens WHERE id = 7")
        entries = await conn.fetchval("SELECT count(*) FROM ledger")
    finally:
        await conn.close()
    return credits, spent, entries


def test_the_token_row_reads_back_typed(url: str) -> None:
    async def run() -> None:
        await seed(url, credits=10, quota_cap=None)
        fast = PostgresFastPath(url)
        try:
            row = await fast.token("h")
            assert await fast.token("nope") is None
        finally:
            await fast.aclose()
        assert row is not None
        assert (row.token_id, row.user_id, row.revoked, row.user_disabled) == (7, 1, False, False)
        assert row.allowed_models == ["m1"] and row.rpm_limit == 9 and row.tpm_limit is None
        assert (row.user_rpm, row.user_tpm, row.user_concurrency) == (None, None, 3)  # the user's, same query
        assert row.expires_at is not None and row.expires_at > datetime.now(UTC)

    asyncio.run(run())


def test_a_lease_is_taken_then_moved_on_and_reads_back_as_written(url: str) -> None:
    start = datetime(2026, 12, 6, 12, 0, 0, 123456, tzinfo=UTC)
    first = Lease("me", "host/boot/ns", 42, 4242, start)
    later = replace(first, expires_at=start + timedelta(seconds=30))

    async def run() -> list[Lease]:
        db = Database(url)
        try:
            await db.fast.renew(first)
            await db.fast.renew(later)
            async with db.sessions() as session:
                return await reservations.leases(session)
        finally:
            await db.dispose()

    assert asyncio.run(run()) == [later]


def test_concurrent_reservations_never_pass_the_token_cap(url: str) -> None:
    async def run() -> list[bool]:
        await seed(url, credits=1000, quota_cap=500)
        fast = PostgresFastPath(url)
        try:
            return await asyncio.gather(
                *(
                    fast.reserve(user_id=1, token_id=7, trace_id=f"t{i}", amount=20, model="m", owner="o")
                    for i in range(60)
                )
            )
        finally:
            await fast.aclose()

    results = asyncio.run(run())
    assert results.count(True) == 25  # 500 / 20
    assert asyncio.run(state(url)) == (500, 500, 25)


def test_concurrent_reservations_never_pass_the_balance(url: str) -> None:
    async def run() -> list[bool]:
        await seed(url, credits=100, quota_cap=None)
        fast = PostgresFastPath(url)
        try:
            with_token = [
                fast.reserve(user_id=1, token_id=7, trace_id=f"a{i}", amount=30, model="m", owner="o")
                for i in range(10)
            ]
            without = [
                fast.reserve(user_id=1, token_id=None, trace_id=f"b{i}", amount=30, model="m", owner="o")
                for i in range(10)
            ]
            return await asyncio.gather(*with_token, *without)
        finally:
            await fast.aclose()

    results = asyncio.run(run())
    assert results.count(True) == 3  # 100 // 30, whichever path took them
    credits, spent, entries = asyncio.run(state(url))
    assert credits == 10 and entries == 3 and spent == 30 * results[:10].count(True)


def test_a_refused_or_repeated_reservation_changes_nothing(url: str) -> None:
    async def run() -> None:
        await seed(url, credits=100, quota_cap=50)
        fast = PostgresFastPath(url)
        try:
            assert not await fast.reserve(
                user_id=1, token_id=7, trace_id="big", amount=60, model="m", owner="o"
            )  # over the cap
            assert await fast.reserve(user_id=1, token_id=7, trace_id="once", amount=20, model="m", owner="o")
            with pytest.raises(DuplicateReservation):
                await fast.reserve(user_id=1, token_id=7, trace_id="once", amount=20, model="m", owner="o")
        finally:
            await fast.aclose()

    asyncio.run(run())
    assert asyncio.run(state(url)) == (80, 20, 1)


def test_reservations_beside_group_committed_settlements_never_deadlock(url: str) -> None:
    """Reservations and settlements (usage rows, refunds, group-committed) from many tasks at once,
    beside refusals' usage batches: no deadlock, exact sums, nothing left open."""

    async def run() -> int:
        await seed(url, credits=10**6, quota_cap=None)
        db = Database(url)
        recorder = UsageRecorder(db, flush_seconds=0.05, batch_rows=8)
        await recorder.start()
        spent = 0

        async def client(n: int) -> None:
            nonlocal spent
            for i in range(25):
                trace = f"c{n}-{i}"
                assert await db.fast.reserve(
                    user_id=1, token_id=7, trace_id=trace, amount=10, model="m", owner="o"
                )
                await asyncio.sleep(0)
                assert await db.fast.settle(Settlement(row(trace, cost=4), refund=6))
                spent += 4
                recorder.record(row(f"refused-{trace}", cost=0))

        try:
            await asyncio.gather(*(client(n) for n in range(16)))
        finally:
            await recorder.stop()
            await db.dispose()
        return spent

    spent = asyncio.run(run())
    assert spent == 16 * 25 * 4
    assert asyncio.run(state(url)) == (10**6 - spent, spent, 2 * 16 * 25)  # a reserve and a settle row each
    assert asyncio.run(open_reservations(url)) == 0


def test_a_settlement_group_closes_each_reservation_once(url: str) -> None:
    async def run() -> list[bool]:
        await seed(url, credits=1000, quota_cap=None)
        fast = PostgresFastPath(url)
        try:
            for trace in ("a", "b"):
                assert await fast.reserve(
                    user_id=1, token_id=7, trace_id=trace, amount=100, model="m", owner="o"
                )
            return list(
                await asyncio.gather(
                    fast.settle(Settlement(row("a", cost=30), refund=70)),
                    fast.settle(Settlement(row("b", cost=100, api="responses"), refund=0)),
                    fast.settle(Settlement(row("a", cost=30), refund=70)),  # again: no second refund
                    fast.settle(Settlement(row("m", cost=5, user_id=None, token_id=None))),
                )
            )
        finally:
            await fast.aclose()

    assert asyncio.run(run()) == [True, True, False, True]
    credits, spent, entries = asyncio.run(state(url))
    assert (credits, spent, entries) == (870, 130, 4)
    assert asyncio.run(open_reservations(url)) == 0
    apis = asyncio.run(fetch(url, "SELECT trace_id, api FROM usage_log ORDER BY id"))
    assert apis == [
        ("a", "chat.completions"),
        ("b", "responses"),
        ("a", "chat.completions"),
        ("m", "chat.completions"),
    ]


def test_revision_0006_gives_settle_the_rows_api_and_takes_it_back(url: str) -> None:
    """Revision 0006 (after 0008, which added the prices) takes the rows' APIs too; going back to
    0008 gives back 0008's function, and 0003 its own."""
    arguments = "SELECT pronargs FROM pg_proc WHERE proname = 'chatgate_settle'"
    assert asyncio.run(fetch(url, arguments)) == [(18,)]
    command.downgrade(alembic_config(url), "0008")
    assert asyncio.run(fetch(url, arguments)) == [(17,)]
    command.downgrade(alembic_config(url), "0003")
    assert asyncio.run(fetch(url, arguments)) == [(14,)]
    migrate(url)
    assert asyncio.run(fetch(url, arguments)) == [(18,)]


async def fetch(url: str, query: str) -> list[tuple[object, ...]]:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    try:
        return [tuple(record) for record in await conn.fetch(query)]
    finally:
        await conn.close()


def row(
    trace_id: str,
    *,
    cost: int,
    user_id: int | None = 1,
    token_id: int | None = 7,
    api: str = "chat.completions",
) -> UsageRow:
    return UsageRow(
        trace_id=trace_id,
        user_id=user_id,
        token_id=token_id,
        model="m",
        prompt_tokens=1,
        completion_tokens=1,
        cost=cost,
        latency_ms=1,
        status="ok",
        error_code=None,
        created_at=datetime.now(UTC),
        api=api,
    )


async def open_reservations(url: str) -> int:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    try:
        return int(await conn.fetchval("SELECT count(*) FROM reservations"))
    finally:
        await conn.close()


def test_driver_options_in_the_url_are_read_as_sqlalchemy_reads_them(url: str) -> None:
    async def run() -> None:
        await seed(url, credits=10, quota_cap=None)
        fast = PostgresFastPath(url + "?ssl=disable&prepared_statement_cache_size=0")
        try:
            assert await fast.token("h") is not None
        finally:
            await fast.aclose()

    asyncio.run(run())
