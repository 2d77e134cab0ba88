"""Invite codes for ``CHATGATE_SIGNUP=invite``: made by the operator (CLI or admin console), shown
once, kept only as a hash, each good for a number of sign-ups until it expires or is withdrawn."""

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from chatgate import ranges
from chatgate.errors import InvalidRequest, NotFound
from chatgate.services.auth import hash_secret
from chatgate.storage import invites
from chatgate.storage.database import Database
from chatgate.storage.tables import Invite

PREFIX_LENGTH = 10  # "inv-" and 6 more characters
MAX_NOTE = 200


@dataclass(frozen=True)
class InviteInfo:
    id: int
    prefix: str
    note: str
    max_uses: int
    uses: int
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, row: Invite) -> "InviteInfo":
        return cls(
            row.id,
            row.prefix,
            row.note,
            row.max_uses,
            row.uses,
            row.created_at,
            row.expires_at,
            row.revoked_at,
        )


class InviteService:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, *, uses: int = 1, days: int | None = 30, note: str = "") -> tuple[InviteInfo, str]:
        """A new code and its text, which is shown this once and never stored."""
        ranges.INVITE_USES.check(uses, "uses")
        ranges.INVITE_DAYS.check_optional(days, "days")
        if len(note) > MAX_NOTE:
            raise InvalidRequest(f"A note has at most {MAX_NOTE} characters.", param="note")
        code = "inv-" + secrets.token_urlsafe(18)
        expires = datetime.now(UTC) + timedelta(days=days) if days is not None else None
        async with self._db.transaction() as session:
            row = await invites.insert(
                session,
                code_hash=hash_secret(code),
                prefix=code[:PREFIX_LENGTH],
                note=note.strip(),
                max_uses=uses,
                expires_at=expires,
            )
            return InviteInfo.of(row), code

    async def list(self, *, limit: int = 100, offset: int = 0) -> "list[InviteInfo]":
        ranges.PAGE_OFFSET.check(offset, "offset")
        async with self._db.sessions() as session:
            return [InviteInfo.of(row) for row in await invites.list_all(session, limit=limit, offset=offset)]

    async def revoke(self, invite_id: int) -> InviteInfo:
        ranges.ID.check(invite_id, "invite_id")
        async with self._db.transaction() as session:
            if await invites.by_id(session, invite_id=invite_id) is None:
                raise NotFound("No such invite code.", param="invite_id")
            await invites.revoke(session, invite_id=invite_id)
        async with self._db.sessions() as session:
            row = await invites.by_id(session, invite_id=invite_id)
        assert row is not None
        return InviteInfo.of(row)
