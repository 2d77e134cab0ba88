"""Responses API answers kept per user (``store``), for reading back and for ``previous_response_id``."""

from datetime import UTC, datetime, timedelta
from typing import Any

from chatgate.errors import NotFound
from chatgate.services.auth import Principal
from chatgate.storage import responses
from chatgate.storage.database import Database
from chatgate.storage.tables import StoredResponse


def _missing(response_id: str, param: str | None = None) -> NotFound:
    # Another user's response is missing too: its existence is not theirs to learn.
    return NotFound(f"No response found with id '{response_id}'.", param=param, code="response_not_found")


class ResponseStore:
    def __init__(self, db: Database, *, retention_seconds: int) -> None:
        self._db = db
        self._retention = timedelta(seconds=retention_seconds)

    async def save(
        self,
        principal: Principal,
        *,
        response: dict[str, Any],
        input_items: list[dict[str, Any]],
        context: list[dict[str, Any]],
    ) -> None:
        now = datetime.now(UTC)
        row = {
            "id": response["id"],
            "user_id": principal.user_id,
            "token_id": principal.token_id,
            "model": response["model"],
            "input_items": input_items,
            "context": context,
            "response": response,
            "created_at": now,
            "expires_at": now + self._retention,
        }
        async with self._db.transaction() as session:
            await responses.insert_one(session, row=row)

    async def get(
        self, principal: Principal, response_id: str, *, param: str | None = None
    ) -> StoredResponse:
        async with self._db.sessions() as session:
            found = await responses.get(
                session, response_id=response_id, user_id=principal.user_id, now=datetime.now(UTC)
            )
        if found is None:
            raise _missing(response_id, param)
        return found

    async def delete(self, principal: Principal, response_id: str) -> None:
        async with self._db.transaction() as session:
            deleted = await responses.delete_one(
                session, response_id=response_id, user_id=principal.user_id, now=datetime.now(UTC)
            )
        if not deleted:
            raise _missing(response_id)

    async def sweep(self) -> int:
        async with self._db.transaction() as session:
            return await responses.sweep(session, now=datetime.now(UTC))
