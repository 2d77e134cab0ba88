"""Deployment state (disabled or not) and per-minute traffic figures, shared by every replica."""

import json
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from chatgate.storage.fastpath import SQLITE_TIME
from chatgate.storage.tables import DeploymentMinute, DeploymentState
from chatgate.storage.users import now


async def states(session: AsyncSession) -> dict[str, DeploymentState]:
    rows = await session.execute(select(DeploymentState))
    return {row.deployment_id: row for row in rows.scalars()}


async def set_state(
    session: AsyncSession,
    *,
    deployment_id: str,
    disabled: bool,
    automatic: bool,
    reason: str | None,
    changed_by: int | None,
) -> bool:
    """Disable or enable a deployment; False if it already was in that state (nothing changed).

    An automatic change only applies to a deployment in the other state; by hand, always.
    """
    values = {
        "disabled": disabled,
        "automatic": automatic,
        "reason": reason,
        "changed_by": changed_by,
        "changed_at": now(),
    }
    query = update(DeploymentState).where(DeploymentState.deployment_id == deployment_id)
    if automatic:
        query = query.where(DeploymentState.disabled.is_not(disabled))
        if not disabled:  # the probe re-enables only what the policy disabled, never a hand's choice
            query = query.where(DeploymentState.automatic.is_(True))
    changed = await session.execute(query.values(**values))
    if changed.rowcount:  # type: ignore[attr-defined]
        return True
    if (await session.get(DeploymentState, deployment_id)) is not None:
        return False  # already in that state
    if not disabled:
        return False  # never disabled: nothing to enable
    # Another replica may insert it at the same moment: then this raises IntegrityError, and the
    # caller's transaction (with its audit row) is rolled back.
    session.add(DeploymentState(deployment_id=deployment_id, **values))
    await session.flush()
    return True


@dataclass
class MinuteFigures:
    """What one replica saw of one deployment in one minute (written whole each time)."""

    deployment_id: str
    minute: int
    requests: int = 0
    errors: int = 0
    latency: dict[str, int] | None = None
    in_flight: int = 0
    cooling_until: float = 0.0
    last_error: str | None = None
    last_error_at: datetime | None = None
    row_id: int | None = None  # once written


async def write_minutes(session: AsyncSession, *, replica: str, figures: list[MinuteFigures]) -> None:
    """Insert each minute's row the first time, then overwrite it (only this replica writes it)."""
    written = now()
    for f in figures:
        values: dict[str, Any] = {
            "requests": f.requests,
            "errors": f.errors,
            "latency": dict(f.latency or {}),
            "in_flight": f.in_flight,
            "cooling_until": f.cooling_until,
            "last_error": f.last_error[:500] if f.last_error else None,
            "last_error_at": f.last_error_at,
            "updated_at": written,
        }
        if f.row_id is not None:
            await session.execute(
                update(DeploymentMinute).where(DeploymentMinute.id == f.row_id).values(**values)
            )
            continue
        row = DeploymentMinute(deployment_id=f.deployment_id, replica=replica, minute=f.minute, **values)
        session.add(row)
        await session.flush()
        f.row_id = row.id


def write_minutes_inline(
    conn: sqlite3.Connection, *, replica: str, figures: list[MinuteFigures]
) -> list[tuple[MinuteFigures, int]]:
    """``write_minutes`` on SQLite's fast-path connection, inside its transaction (see
    ``SqliteFastPath.write``): the same rows, as SQLAlchemy stores them. The ids of new rows are
    returned, to be set on the figures once the transaction has committed."""
    written = now().strftime(SQLITE_TIME)
    inserted: list[tuple[MinuteFigures, int]] = []
    for f in figures:
        values = (
            f.requests,
            f.errors,
            json.dumps(dict(f.latency or {})),
            f.in_flight,
            f.cooling_until,
            f.last_error[:500] if f.last_error else None,
            f.last_error_at.strftime(SQLITE_TIME) if f.last_error_at else None,
            written,
        )
        if f.row_id is not None:
            conn.execute(
                "UPDATE deployment_stats SET requests = ?, errors = ?, latency = ?, in_flight = ?,"
                " cooling_until = ?, last_error = ?, last_error_at = ?, updated_at = ? WHERE id = ?",
                (*values, f.row_id),
            )
            continue
        cursor = conn.execute(
            "INSERT INTO deployment_stats (deployment_id, replica, minute, requests, errors, latency,"
            " in_flight, cooling_until, last_error, last_error_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (f.deployment_id, replica, f.minute, *values),
        )
        assert cursor.lastrowid is not None
        inserted.append((f, cursor.lastrowid))
    return inserted


async def since(session: AsyncSession, *, minute: int) -> list[DeploymentMinute]:
    """Every replica's rows from ``minute`` on."""
    rows = await session.execute(select(DeploymentMinute).where(DeploymentMinute.minute >= minute))
    return list(rows.scalars())


async def last_errors(session: AsyncSession) -> dict[str, tuple[str, datetime]]:
    """Each deployment's most recent error, whenever it was (within what is kept)."""
    rows = await session.execute(
        select(DeploymentMinute.deployment_id, DeploymentMinute.last_error, DeploymentMinute.last_error_at)
        .where(DeploymentMinute.last_error_at.is_not(None))
        .order_by(DeploymentMinute.last_error_at)
    )
    return {row[0]: (row[1], row[2]) for row in rows if row[1] is not None and row[2] is not None}


async def prune(session: AsyncSession, *, before_minute: int) -> None:
    await session.execute(delete(DeploymentMinute).where(DeploymentMinute.minute < before_minute))
