"""Open reservations and their owners' leases: what a sweep refunds, and the ledger's own check.

The hot path (reserving, settling) is in the fast paths; these run every few seconds at most.
"""

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from chatgate.storage.tables import ApiToken, LedgerEntry, OpenReservation, UsageRecord, User
from chatgate.storage.tables import Lease as LeaseRow
from chatgate.storage.usage import UsageRow


@dataclass(frozen=True)
class Lease:
    owner: str
    host: str
    pid: int
    process_start: int
    expires_at: datetime


@dataclass(frozen=True)
class Held:
    """An open reservation."""

    user_id: int
    token_id: int | None
    trace_id: str
    amount: int
    model: str | None
    owner: str
    created_at: datetime


async def leases(session: AsyncSession) -> list[Lease]:
    rows = await session.execute(select(LeaseRow))
    return [Lease(r.owner, r.host, r.pid, r.process_start, r.expires_at) for r in rows.scalars()]


async def drop_lease(session: AsyncSession, *, owner: str) -> None:
    await session.execute(delete(LeaseRow).where(LeaseRow.owner == owner))


async def open_reservations(session: AsyncSession) -> list[Held]:
    rows = await session.execute(select(OpenReservation).order_by(OpenReservation.id))
    return [
        Held(r.user_id, r.token_id, r.trace_id, r.amount, r.model, r.owner, r.created_at)
        for r in rows.scalars()
    ]


async def release(session: AsyncSession, *, held: Held, usage: UsageRow) -> bool:
    """Refund a reservation in full and log its request (``usage``, with no cost), if it is still
    open; False if it was settled or released meanwhile. The deletion decides, so it happens once."""
    gone = await session.execute(
        delete(OpenReservation).where(
            OpenReservation.user_id == held.user_id, OpenReservation.trace_id == held.trace_id
        )
    )
    if gone.rowcount != 1:  # type: ignore[attr-defined]
        return False
    await session.execute(
        insert(LedgerEntry).values(
            trace_id=held.trace_id,
            kind="settle",
            user_id=held.user_id,
            token_id=held.token_id,
            amount=held.amount,
            created_at=usage.created_at,
        )
    )
    await session.execute(
        update(User).where(User.id == held.user_id).values(credits=User.credits + held.amount)
    )
    if held.token_id is not None:
        await session.execute(
            update(ApiToken).where(ApiToken.id == held.token_id).values(spent=ApiToken.spent - held.amount)
        )
    await session.execute(insert(UsageRecord).values(**usage.values()))
    return True


# The ledger's kinds that bring credits in: an operator's grant (free credits too), a redeemed code.
GRANTED = ("grant", "redeem")


async def discrepancies(session: AsyncSession) -> tuple[list[str], dict[str, int]]:
    """Every way the ledger fails to add up, one line each, and what was checked.

    For every user: the ledger's rows add up to the balance, and credits granted (the GRANTED kinds)
    = balance + settled charges (the usage log's costs) + open reservations. For every token: what
    it has spent = its settled charges + its open reservations. For every request: a reserve row is
    either settled (a settle row) or open (a reservation row of the same amount), never both, never
    neither.
    """
    problems: list[str] = []
    balances = {r.id: r.credits for r in (await session.execute(select(User.id, User.credits))).all()}
    ledger_sums = _sums(
        await session.execute(
            select(LedgerEntry.user_id, func.sum(LedgerEntry.amount)).group_by(LedgerEntry.user_id)
        )
    )
    granted = _sums(
        await session.execute(
            select(LedgerEntry.user_id, func.sum(LedgerEntry.amount))
            .where(LedgerEntry.kind.in_(GRANTED))
            .group_by(LedgerEntry.user_id)
        )
    )
    charged = _sums(
        await session.execute(
            select(UsageRecord.user_id, func.sum(UsageRecord.cost))
            .where(UsageRecord.user_id.is_not(None))
            .group_by(UsageRecord.user_id)
        )
    )
    held = await open_reservations(session)
    open_per_user: dict[int, int] = defaultdict(int)
    open_per_token: dict[int, int] = defaultdict(int)
    for reservation in held:
        open_per_user[reservation.user_id] += reservation.amount
        if reservation.token_id is not None:
            open_per_token[reservation.token_id] += reservation.amount
    for user_id, balance in sorted(balances.items()):
        if ledger_sums.get(user_id, 0) != balance:
            problems.append(
                f"user {user_id}: the ledger adds up to {ledger_sums.get(user_id, 0)}, the balance is {balance}"
            )
        total = balance + charged.get(user_id, 0) + open_per_user[user_id]
        if granted.get(user_id, 0) != total:
            problems.append(
                f"user {user_id}: granted {granted.get(user_id, 0)} != balance {balance} + settled "
                f"{charged.get(user_id, 0)} + open {open_per_user[user_id]} (= {total})"
            )
    token_charges = _sums(
        await session.execute(
            select(UsageRecord.token_id, func.sum(UsageRecord.cost))
            .where(UsageRecord.token_id.is_not(None), UsageRecord.user_id.is_not(None))
            .group_by(UsageRecord.token_id)
        )
    )
    spent = (await session.execute(select(ApiToken.id, ApiToken.spent))).all()
    for token_id, token_spent in sorted((r[0], r[1]) for r in spent):
        expected = token_charges.get(token_id, 0) + open_per_token[token_id]
        if token_spent != expected:
            problems.append(
                f"token {token_id}: spent {token_spent} != settled {token_charges.get(token_id, 0)} + "
                f"open {open_per_token[token_id]} (= {expected})"
            )
    problems += await _requests(session)
    counts = {"users": len(balances), "tokens": len(spent), "open": len(held)}
    return problems, counts


# Requests whose money does not add up, found by the database: (user, request, what is wrong).
_REQUEST_CHECKS = {
    "reserved, never settled and not open": (
        "SELECT r.user_id, r.trace_id FROM ledger r WHERE r.kind = 'reserve'"
        " AND NOT EXISTS (SELECT 1 FROM ledger s WHERE s.kind = 'settle' AND s.user_id = r.user_id"
        " AND s.trace_id = r.trace_id)"
        " AND NOT EXISTS (SELECT 1 FROM reservations o WHERE o.user_id = r.user_id AND o.trace_id = r.trace_id)"
    ),
    "settled and still open": (
        "SELECT o.user_id, o.trace_id FROM reservations o JOIN ledger s ON s.user_id = o.user_id"
        " AND s.trace_id = o.trace_id AND s.kind = 'settle'"
    ),
    "open for another amount than reserved": (
        "SELECT o.user_id, o.trace_id FROM reservations o JOIN ledger r ON r.user_id = o.user_id"
        " AND r.trace_id = o.trace_id AND r.kind = 'reserve' WHERE o.amount != -r.amount"
    ),
    "open but never reserved": (
        "SELECT o.user_id, o.trace_id FROM reservations o WHERE NOT EXISTS (SELECT 1 FROM ledger r"
        " WHERE r.kind = 'reserve' AND r.user_id = o.user_id AND r.trace_id = o.trace_id)"
    ),
    "settled but never reserved": (
        "SELECT s.user_id, s.trace_id FROM ledger s WHERE s.kind = 'settle' AND NOT EXISTS (SELECT 1"
        " FROM ledger r WHERE r.kind = 'reserve' AND r.user_id = s.user_id AND r.trace_id = s.trace_id)"
    ),
}


async def _requests(session: AsyncSession) -> list[str]:
    """Every request whose reserve row is neither settled nor open, or both, or open for another
    amount, and every settle or open row without a reserve row."""
    problems = []
    for what, query in _REQUEST_CHECKS.items():
        for user_id, trace_id in (await session.execute(text(query))).all():
            problems.append(f"user {user_id}, request {trace_id}: {what}")
    return problems


def _sums(result: object) -> dict[int, int]:
    return {int(key): int(value or 0) for key, value in result.all()}  # type: ignore[attr-defined]
