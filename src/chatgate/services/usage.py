"""The usage log: the rows of refused requests, written in batches off the request path, and the totals.

A request that was admitted writes its own row, with its settlement, before its answer ends (see
metering.py). A refused one moves no credits, so its row waits for the next batch: every
``flush_seconds``, or (on PostgreSQL) as soon as ``batch_rows`` wait. Rows are never dropped:
while the database cannot be reached they wait, and once ``MAX_BACKLOG`` wait, new requests are
refused (``backlogged``) until the batch goes through.
"""

import asyncio
import contextlib
import logging
from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError

from chatgate.services.auth import Principal
from chatgate.storage import tokens, usage, users
from chatgate.storage.database import Database
from chatgate.storage.usage import UsageRow

log = logging.getLogger("chatgate.usage")
MAX_BACKLOG = 100_000
# On PostgreSQL a batch is written once this many rows wait, without waiting for the next round.
# The write's Python work runs on the event loop, so a second's worth of rows at 200 requests/s
# (10 ms of it, and more when a new batch size is first prepared) stalled the requests behind it:
# p99 added 53 ms, 4 ms with batches this size. Not on SQLite: there every batch takes the
# database's one write lock, which reservations need too.
POSTGRES_BATCH_ROWS = 64
STOP_WAIT = 10.0  # seconds stop() lets the writer finish its round before cancelling it


class UsageRecorder:
    def __init__(self, db: Database, *, flush_seconds: float, batch_rows: int | None = None) -> None:
        self._db = db
        self._flush_seconds = flush_seconds
        self._batch_rows = batch_rows  # None: only once a round
        self._rows: list[UsageRow] = []
        self._last_used: dict[int, datetime] = {}
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._full: asyncio.Event | None = None  # a whole batch is waiting; made in start(), on its loop
        self._stopping = False

    def record(self, row: UsageRow) -> None:
        """Queue a refused request's usage row; it is written in the next batch."""
        self._rows.append(row)
        if row.token_id is not None:
            self._last_used[row.token_id] = row.created_at
        if self._full is not None and self._batch_rows is not None and len(self._rows) >= self._batch_rows:
            self._full.set()

    @property
    def backlogged(self) -> bool:
        return len(self._rows) >= MAX_BACKLOG

    async def flush(self) -> None:
        async with self._lock:
            rows, self._rows = self._rows, []
            last_used, self._last_used = self._last_used, {}
            if not rows and not last_used:
                return
            try:
                try:
                    await self._write(rows, last_used)
                except IntegrityError:
                    # One bad row must not hold back the rest: write them one by one, drop the offenders.
                    await self._write_each(rows)
            except BaseException:  # the database is unreachable, or this task is being cancelled
                log.exception("could not write %d usage rows; will retry", len(rows))
                self._rows[:0] = rows
                self._last_used = {**last_used, **self._last_used}
                raise

    async def _write(self, rows: list[UsageRow], last_used: dict[int, datetime]) -> None:
        async with self._db.transaction() as session:
            await usage.insert_many(session, rows=[row.values() for row in rows])
            await tokens.touch(session, last_used=last_used)

    async def _write_each(self, rows: list[UsageRow]) -> None:
        for row in rows:
            try:
                await self._write([row], {})
            except IntegrityError:
                log.error("dropped a usage row that does not fit the schema: trace %s", row.trace_id)

    async def start(self) -> None:
        self._full, self._stopping = asyncio.Event(), False
        self._task = asyncio.create_task(self._run(self._full), name="usage-recorder")

    async def _run(self, full: asyncio.Event) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(full.wait(), self._flush_seconds)
            full.clear()
            try:
                await self.flush()
            except Exception:  # logged in flush; the rows wait, and the next try a whole round
                await asyncio.sleep(self._flush_seconds)

    async def stop(self) -> None:
        """Ends the writer after its current round, then writes what is left.

        Asked, not cancelled: on Python 3.11 ``wait_for`` swallows a cancellation that comes as the
        event it waits on is set (a batch filling up), and the writer then ran on forever while
        ``stop`` waited for it (seen as a hung test on PostgreSQL)."""
        if self._task is not None:
            self._stopping = True
            if self._full is not None:
                self._full.set()
            done, _ = await asyncio.wait({self._task}, timeout=STOP_WAIT)
            if not done:  # a write that hangs (the database unreachable): cancelled, its rows kept
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        await self.flush()  # whatever a failed flush put back

    async def summary(self, principal: Principal, *, whole_user: bool = False) -> dict[str, Any]:
        """What ``GET /v1/usage`` answers for the calling token (or, for the console, a whole user).

        The master key sees every request and has no limit (``credits_left`` null).
        """
        await self.flush()
        scope: dict[str, Any] = {}
        if whole_user:
            scope = {"user_id": principal.user_id}
        elif principal.token_id is not None:
            scope = {"token_id": principal.token_id}
        async with self._db.sessions() as session:
            total = await usage.totals(session, **scope)
            by_day = await usage.totals_by(session, column="day", **scope)
            by_model = await usage.totals_by(session, column="model", **scope)
            by_api = await usage.totals_by(session, column="api", **scope)
            left = await self._credits_left(session, principal, whole_user=whole_user)

        def row(totals: usage.Totals) -> dict[str, int]:
            return {
                "requests": totals.requests,
                "prompt_tokens": totals.prompt_tokens,
                "completion_tokens": totals.completion_tokens,
                "total_tokens": totals.prompt_tokens + totals.completion_tokens,
                "credits_used": totals.cost,
            }

        return {
            "object": "usage",
            **row(total),
            "credits_left": left,
            "daily": [{"date": day, **row(t)} for day, t in by_day.items()],
            "models": [{"model": model, **row(t)} for model, t in by_model.items()],
            "apis": [{"api": api, **row(t)} for api, t in by_api.items()],
        }

    async def user_summary(self, user_id: int) -> dict[str, Any]:
        """The console's usage page: a user's totals over all their tokens, per day, model and API."""
        return await self.summary(Principal(user_id=user_id, token_id=None), whole_user=True)

    async def requests(
        self, user_id: int, *, limit: int, offset: int, model: str | None, status: str | None
    ) -> dict[str, Any]:
        await self.flush()
        async with self._db.sessions() as session:
            rows, total = await usage.page(
                session, user_id=user_id, model=model, status=status, limit=limit, offset=offset
            )
        return {
            "total": total,
            "data": [
                {
                    "time": row.created_at.isoformat(),
                    "trace_id": row.trace_id,
                    "token_id": row.token_id,
                    "model": row.model,
                    "api": row.api,
                    "prompt_tokens": row.prompt_tokens,
                    "completion_tokens": row.completion_tokens,
                    "cost": row.cost,
                    "latency_ms": row.latency_ms,
                    "status": row.status,
                    "error_code": row.error_code,
                }
                for row in rows
            ],
        }

    async def _credits_left(self, session: Any, principal: Principal, *, whole_user: bool) -> int | None:
        """The balance, or less when the token has a cap; None for the unmetered master key."""
        if principal.user_id is None:
            return None
        user = await users.by_id(session, user_id=principal.user_id)
        balance = user.credits if user is not None else 0
        if whole_user or principal.token_id is None:
            return balance
        token = await tokens.by_id(session, token_id=principal.token_id)
        if token is not None and token.quota_cap is not None:
            return max(0, min(balance, token.quota_cap - token.spent))
        return balance
