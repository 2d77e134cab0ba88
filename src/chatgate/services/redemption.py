"""Top-up codes: admins (or the operator's CLI) create them in batches, a user redeems one once,
and its credits land in the ledger as their own entry kind, ``redeem``.

Redemption is one transaction: a conditional update takes the code (only if unused, not disabled,
not expired), and the balance and the ledger row follow; so the same code redeemed at once from two
sessions, or through two replicas, credits exactly one of them. Unknown, used, expired and disabled
codes each have their own error; attempts are throttled per user and per client address, by the
rate limiter's counters (shared by a host's workers, and by every replica through Redis).
"""

import csv
import io
import math
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

from chatgate.errors import Conflict, Forbidden, Gone, InvalidRequest, NotFound, RateLimited
from chatgate.services import codes
from chatgate.services.audit import Actor, record
from chatgate.services.ratelimit import HOUR, RateLimiter
from chatgate.services.requestlog import cell
from chatgate.storage import codes as store
from chatgate.storage import users
from chatgate.storage.database import Database
from chatgate.storage.tables import RedemptionCode

MAX_CREDITS = 10**12
MAX_COUNT = 10_000
MAX_DAYS = 3650
STATES = ("unused", "used", "expired", "disabled")
COLUMNS = ["id", "code", "credits", "state", "note", "created_at", "expires_at", "redeemed_at", "redeemed_by"]


def state_of(row: RedemptionCode, at: datetime) -> str:
    if row.redeemed_at is not None:
        return "used"
    if row.disabled_at is not None:
        return "disabled"
    if row.expires_at is not None and row.expires_at <= at:
        return "expired"
    return "unused"


async def throttle(limiter: RateLimiter, key: str, *, limit: int, what: str) -> None:
    """Count an attempt under ``key``; RateLimited once ``limit`` were counted in the last hour."""
    wait = await limiter.hit(key, limit, HOUR)
    if wait is not None:
        retry = max(1, math.ceil(wait))
        raise RateLimited(
            f"Too many {what}: at most {limit} in {int(HOUR) // 60} minutes. Try again in {retry}s.",
            retry_after=retry,
            headers={},
        )


def _unknown() -> NotFound:
    return NotFound("There is no such code: check what you typed.", param="code", code="code_unknown")


def _view(row: RedemptionCode, email: str | None, at: datetime) -> dict[str, Any]:
    return {
        "id": row.id,
        "code": f"{row.hint}...",
        "credits": row.credits,
        "state": state_of(row, at),
        "note": row.note,
        "created_at": row.created_at.isoformat(),
        "expires_at": row.expires_at.isoformat() if row.expires_at else None,
        "redeemed_at": row.redeemed_at.isoformat() if row.redeemed_at else None,
        "redeemed_by": email,
    }


class RedemptionService:
    def __init__(
        self, db: Database, limiter: RateLimiter, *, per_user: int = 10, per_address: int = 30
    ) -> None:
        self._db = db
        self._limiter = limiter
        self._per_user = per_user
        self._per_address = per_address

    async def create(
        self, *, credits: int, count: int, expires_in_days: int | None, note: str | None, actor: Actor
    ) -> list[str]:
        """``count`` new codes worth ``credits`` each, in the clear: shown this once, never stored."""
        if not 1 <= credits <= MAX_CREDITS:
            raise InvalidRequest(f"credits is between 1 and {MAX_CREDITS:,}.", param="credits")
        if not 1 <= count <= MAX_COUNT:
            raise InvalidRequest(f"count is between 1 and {MAX_COUNT:,}.", param="count")
        if expires_in_days is not None and not 1 <= expires_in_days <= MAX_DAYS:
            raise InvalidRequest(f"expires_in_days is between 1 and {MAX_DAYS}.", param="expires_in_days")
        if note is not None and len(note) > 200:
            raise InvalidRequest("A note has at most 200 characters.", param="note")
        expires_at = datetime.now(UTC) + timedelta(days=expires_in_days) if expires_in_days else None
        made = [codes.new_code() for _ in range(count)]
        pairs = []
        for code in made:
            characters = codes.body(code)
            assert characters is not None
            pairs.append((codes.digest(characters), codes.hint(characters)))
        async with self._db.transaction() as session:
            await store.insert_many(
                session,
                codes=pairs,
                credits=credits,
                note=note,
                expires_at=expires_at,
                created_by=actor.user_id,
            )
            detail = {
                "count": count,
                "credits": credits,
                "expires_at": expires_at.isoformat() if expires_at else None,
                "note": note,
            }
            await record(session, actor, "codes.create", f"{count} codes", detail)
        return made

    async def redeem(self, user_id: int, code: str, *, address: str | None) -> dict[str, int]:
        """Redeem a code for a user: its credits and the new balance."""
        what = "redemption attempts"
        await throttle(self._limiter, f"redeem:u{user_id}", limit=self._per_user, what=what)
        if address:
            await throttle(self._limiter, f"redeem:a{address}", limit=self._per_address, what=what)
        characters = codes.body(code)
        if characters is None:
            raise _unknown()
        code_hash = codes.digest(characters)
        async with self._db.transaction() as session:
            # The code is taken and its credits land in one transaction: both or neither.
            taken = await store.take(session, code_hash=code_hash, user_id=user_id)
            if taken is not None:
                code_id, credits = taken
                if not await users.grant(
                    session, user_id=user_id, credits=credits, trace_id=f"redeem_{code_id}", kind="redeem"
                ):  # raised inside the transaction: the code is not taken either
                    raise InvalidRequest(
                        f"This code would take the balance past {users.MAX_CREDITS:,} credits.",
                        param="code",
                        code="balance_too_large",
                    )
                user = await users.by_id(session, user_id=user_id)
                assert user is not None
                await session.refresh(user)
                return {"credits": credits, "balance": user.credits}
            row = await store.by_hash(session, code_hash=code_hash)
        if row is None:
            raise _unknown()
        state = state_of(row, datetime.now(UTC))
        if state == "used":
            raise Conflict("This code has been redeemed already.", param="code", code="code_used")
        if state == "disabled":
            raise Forbidden("This code has been disabled.", param="code", code="code_disabled")
        raise Gone("This code has expired.", param="code", code="code_expired")

    async def page(self, *, state: str | None, limit: int, offset: int) -> dict[str, Any]:
        if state is not None and state not in STATES:
            raise InvalidRequest(f"state is one of {', '.join(STATES)}.", param="state")
        async with self._db.sessions() as session:
            rows, total = await store.page(session, state=state, limit=limit, offset=offset)
        at = datetime.now(UTC)
        return {"total": total, "data": [_view(row, email, at) for row, email in rows]}

    async def csv(self, *, state: str | None) -> AsyncIterator[str]:
        """The list as CSV (the codes themselves are not kept: each row names its first characters)."""
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(COLUMNS)
        offset = 0
        while True:
            page = await self.page(state=state, limit=1000, offset=offset)
            for row in page["data"]:
                writer.writerow([cell(row[c]) for c in COLUMNS])
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
            offset += len(page["data"])
            if len(page["data"]) < 1000:
                return

    async def disable(self, code_id: int, actor: Actor) -> None:
        async with self._db.transaction() as session:
            if not await store.disable(session, code_id=code_id):
                raise NotFound("No unused code with that id.", param="id")
            await record(session, actor, "code.disable", f"code {code_id}")
