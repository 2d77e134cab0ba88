"""The usage rows of refused requests are written in batches: every round, and at once when a batch is full."""

import asyncio
from datetime import UTC, datetime
from pathlib import Path

from chatgate.services.usage import UsageRecorder
from chatgate.storage import usage
from chatgate.storage.database import Database, migrate
from chatgate.storage.usage import UsageRow

BATCH_ROWS = 16


async def written(db: Database) -> int:
    async with db.sessions() as session:
        return (await usage.totals(session)).requests


def record(recorder: UsageRecorder, count: int) -> None:
    for i in range(count):
        recorder.record(
            UsageRow(
                trace_id=f"t{i}-{id(recorder)}",
                user_id=None,
                token_id=None,
                model="m",
                prompt_tokens=0,
                completion_tokens=0,
                cost=0,
                latency_ms=1,
                status="error",
                error_code="too_many_requests",
                created_at=datetime.now(UTC),
            )
        )


def test_a_full_batch_is_written_without_waiting_for_the_round(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'usage.db'}"
    migrate(url)

    async def run() -> tuple[int, int, int]:
        db = Database(url)
        recorder = UsageRecorder(db, flush_seconds=3600, batch_rows=BATCH_ROWS)
        await recorder.start()
        try:
            record(recorder, BATCH_ROWS - 1)
            await asyncio.sleep(0.3)
            before = await written(db)  # not full: waits for the (hour-long) round
            record(recorder, 1)
            for _ in range(100):  # a bound on waiting, not a timing test
                await asyncio.sleep(0.05)
                if await written(db):
                    break
            after = await written(db)
            record(recorder, 3)
        finally:
            await recorder.stop()  # writes what is left
        stopped = await written(db)
        await db.dispose()
        return before, after, stopped

    assert asyncio.run(run()) == (0, BATCH_ROWS, BATCH_ROWS + 3)


def test_stop_ends_the_writer_even_as_a_batch_fills(tmp_path: Path) -> None:
    """Stopped in the turns around a batch filling up: on Python 3.11 a cancelled ``wait_for`` whose
    event is set meanwhile swallows the cancellation, and a writer stopped by cancelling ran on
    forever (a hung test on PostgreSQL). Each stop here must end, with every row written."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'usage.db'}"
    migrate(url)

    async def run() -> list[int]:
        db = Database(url)
        counts = []
        for turns in range(6):
            recorder = UsageRecorder(db, flush_seconds=3600, batch_rows=BATCH_ROWS)
            await recorder.start()
            await asyncio.sleep(0.05)  # the writer waits on its event
            record(recorder, BATCH_ROWS)
            for _ in range(turns):
                await asyncio.sleep(0)
            await asyncio.wait_for(recorder.stop(), 20)  # a bound on a hang, not a timing test
            counts.append(await written(db))
        await db.dispose()
        return counts

    assert asyncio.run(run()) == [BATCH_ROWS * n for n in range(1, 7)]
