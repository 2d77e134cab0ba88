"""Stored responses on a real (SQLite) database: their owner's only, gone once expired or deleted."""

import asyncio
from pathlib import Path

import pytest

from chatgate.errors import NotFound
from chatgate.services.auth import Principal
from chatgate.services.stored_responses import ResponseStore
from chatgate.storage.database import Database, migrate

ADA = Principal(user_id=None, token_id=None)  # the master key: a store of its own


async def test_a_response_is_its_owners_until_it_expires(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    await asyncio.to_thread(migrate, url)  # migrate runs its own event loop
    db = Database(url)
    try:
        kept, expired = ResponseStore(db, retention_seconds=3600), ResponseStore(db, retention_seconds=-1)
        response = {"id": "resp_1", "model": "m", "output": []}
        await kept.save(ADA, response=response, input_items=[{"id": "msg_1"}], context=[])
        await expired.save(ADA, response={**response, "id": "resp_2"}, input_items=[], context=[])
        assert (await kept.get(ADA, "resp_1")).response == response
        with pytest.raises(NotFound) as caught:
            await kept.get(ADA, "resp_2", param="previous_response_id")
        assert caught.value.param == "previous_response_id"
        assert await kept.sweep() == 1
        await kept.delete(ADA, "resp_1")
        with pytest.raises(NotFound):
            await kept.delete(ADA, "resp_1")
    finally:
        await db.dispose()
