"""The usage log and credit refunds: buffered per request, written together in batches off the request path."""

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.exc import IntegrityError

from chatgate.services.auth import Principal
from chatgate.storage import ledger, tokens, usage, users
from chatgate.storage.database import Database
from chatgate.storage.ledger import Refund

log = logging.getLogger("chatgate.usage")
MAX_BUFFER = 100_000
# On PostgreSQL a batch is written once this many rows wait, without waiting for the next round.
# The write's Python work runs on the event loop, so a second's worth of rows at 200 requests/s
# (10 ms of it, and more when a new batch size is first prepared) stalled the requests behind it:
# p99 added 53 ms, 4 ms with batches this size. Not on SQLite: there every batch takes the
# database's one write lock, which reservations need too, and batches this small cut the most
# requests/s from 1,875 to 1,333, while one batch a second leaves p99 at 2 ms.
POSTGRES_BATCH_ROWS = 64


class UsageRecorder:
    def __init__(self, db: Database, *, flush_seconds: float, batch_rows: int | None = None) -> None:
        self._db = db
        self._flush_seconds = flush_seconds
        self._batch_rows = batch_rows  # None: only once a round
        self._rows: list[dict[str, Any]] = []
        self._refunds: list[Refund] = []
        self._last_used: dict[int, datetime] = {}
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._full: asyncio.Event | None = None  # a whole batch is waiting; made in start(), on its loop

    def record(
        self,
        *,
        trace_id: str,
        principal: Principal,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        cost: int,
        latency_ms: int,
        status: str,
        error_code: str | None,
        refund: Refund | None = None,
    ) -> None:
        """Queue the request's usage row and its credit refund; both are written in the next batch."""
        now = datetime.now(UTC)
        if refund is not None:
            self._refunds.append(refund)
        self._rows.append(
            {
                "trace_id": trace_id,
                "user_id": principal.user_id,
                "token_id": principal.token_id,
                "model": model,
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "cost": cost,
                "latency_ms": latency_ms,
                "status": status,
                "error_code": error_code,
                "day": now.date().isoformat(),
                "created_at": now,
            }
        )
        if principal.token_id is not None:
            self._last_used[principal.token_id] = now
        if self._full is not None and self._batch_rows is not None and len(self._rows) >= self._batch_rows:
            self._full.set()
        if len(self._rows) > MAX_BUFFER:  # the database has been unreachable for a long time
            del self._rows[: len(self._rows) - MAX_BUFFER]  # refunds are kept: they are owed

    def refund(self, refund: Refund | None) -> None:
        """Queue a refund that has no usage row of its own."""
        if refund is not None:
            self._refunds.append(refund)

    async def flush(self) -> None:
        async with self._lock:
            rows, self._rows = self._rows, []
            refunds, self._refunds = self._refunds, []
            last_used, self._last_used = self._last_used, {}
            if not rows and not refunds and not last_used:
                return
            try:
                try:
                    await self._write(rows, refunds, last_used)
                except IntegrityError:
                    # One bad row must not hold back the rest: write them one by one, drop the offenders.
                    await self._write_each(rows, refunds)
            except BaseException:  # the database is unreachable, or this task is being cancelled
                log.exception(
                    "could not write %d usage rows and %d refunds; will retry", len(rows), len(refunds)
                )
                self._rows[:0] = rows
                self._refunds[:0] = refunds
                self._last_used = {**last_used, **self._last_used}
                raise

    async def _write(
        self, rows: list[dict[str, Any]], refunds: list[Refund], last_used: dict[int, datetime]
    ) -> None:
        async with self._db.transaction() as session:
            # Usage rows first: the updates of balances and tokens lock rows that reservations wait
            # on, so they come last, just before the commit.
            await usage.insert_many(session, rows=rows)
            await ledger.settle_many(session, refunds=refunds)
            await tokens.touch(session, last_used=last_used)

    async def _write_each(self, rows: list[dict[str, Any]], refunds: list[Refund]) -> None:
        for refund in refunds:
            try:
                await self._write([], [refund], {})
            except IntegrityError:
                log.error("dropped a refund already settled: trace %s", refund.trace_id)
        for row in rows:
            try:
                await self._write([row], [], {})
            except IntegrityError:
                log.error("dropped a usage row that does not fit the schema: trace %s", row["trace_id"])

    async def start(self) -> None:
        self._full = asyncio.Event()
        self._task = asyncio.create_task(self._run(self._full), name="usage-recorder")

    async def _run(self, full: asyncio.Event) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(full.wait(), self._flush_seconds)
            full.clear()
            try:
                await self.flush()
            except Exception:  # logged in flush; the rows wait, and the next try a whole round
                await asyncio.sleep(self._flush_seconds)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()  # whatever a cancelled flush put back

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
        }

    async def user_summary(self, user_id: int) -> dict[str, Any]:
        """The console's usage page: a user's totals over all their tokens, per day and per model."""
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
