"""The admins' request log: every user's requests, filtered by user, token, model, status and time;
paged for the console and exported as CSV."""

import csv
import io
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any

from chatgate.errors import InvalidRequest, NotFound
from chatgate.storage import requestlog, tokens, users
from chatgate.storage.database import Database
from chatgate.storage.requestlog import Filters, Row

COLUMNS = [
    "time", "trace_id", "user_id", "email", "token_id", "token", "model", "prompt_tokens",
    "completion_tokens", "cost", "latency_ms", "status", "error_code", "price_prompt",
    "price_completion", "price_multiplier",
]  # fmt: skip
EXPORT_BATCH = 1000
STATUSES = {"ok", "error", "cancelled"}


def _row(row: Row) -> dict[str, Any]:
    record, email, prefix = row
    return {
        "time": record.created_at.isoformat(),
        "trace_id": record.trace_id,
        "user_id": record.user_id,
        "email": email,
        "token_id": record.token_id,
        "token": f"{prefix}..." if prefix else None,
        "model": record.model,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "cost": record.cost,
        "latency_ms": record.latency_ms,
        "status": record.status,
        "error_code": record.error_code,
        "price_prompt": record.price_prompt,
        "price_completion": record.price_completion,
        "price_multiplier": record.price_multiplier / 1000 if record.price_multiplier is not None else None,
    }


def cell(value: Any) -> Any:
    """A value as a spreadsheet shows it and never runs it: text that starts like a formula is quoted."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return "" if value is None else value


class RequestLog:
    def __init__(self, db: Database, *, flush: Callable[[], Awaitable[None]]) -> None:
        self._db = db
        self._flush = flush  # the usage rows still waiting to be written

    async def filters(
        self,
        *,
        user: str | None = None,
        token: str | None = None,
        model: str | None = None,
        status: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> Filters:
        """The filters as an admin types them: a user by id or email, a token by id or prefix."""
        if status and status not in STATUSES:
            raise InvalidRequest("status is one of ok, error, cancelled.", param="status")
        if since is not None and until is not None and since >= until:
            raise InvalidRequest("since must be before until.", param="since")
        user_id = token_id = None
        async with self._db.sessions() as session:
            if user:
                user = user.strip()
                found = (
                    await users.by_id(session, user_id=int(user))
                    if user.isdigit()
                    else await users.by_email(session, email=user.lower())
                )
                if found is None:
                    raise NotFound(f"No user {user!r}.", param="user")
                user_id = found.id
            if token:
                token = token.strip().removesuffix("...").removesuffix("\u2026")
                if token.isdigit():
                    token_id = int(token)
                else:
                    matches = await tokens.by_prefix(session, prefix=token) if token else []
                    if len(matches) != 1:
                        raise NotFound(
                            f"{'No' if not matches else 'More than one'} token matches {token!r}.",
                            param="token",
                        )
                    token_id = matches[0].id
        return Filters(user_id, token_id, model or None, status or None, since, until)

    async def page(self, filters: Filters, *, limit: int, offset: int) -> dict[str, Any]:
        await self._flush()
        async with self._db.sessions() as session:
            rows, total = await requestlog.page(session, filters=filters, limit=limit, offset=offset)
        return {"total": total, "data": [_row(row) for row in rows]}

    async def csv(self, filters: Filters) -> AsyncIterator[str]:
        """The whole matching log as CSV, newest first, read a batch at a time."""
        await self._flush()
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(COLUMNS)
        before: int | None = None
        while True:
            async with self._db.sessions() as session:
                rows = await requestlog.batch(session, filters=filters, before_id=before, size=EXPORT_BATCH)
            for row in rows:
                data = _row(row)
                writer.writerow([cell(data[column]) for column in COLUMNS])
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
            if len(rows) < EXPORT_BATCH:
                return
            before = rows[-1][0].id
