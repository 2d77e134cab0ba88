"""Where credits move, as one object: reserving and settling (the fast paths), and the sweep's
queries (open reservations, leases, releasing what a dead process held)."""

from chatgate.storage import reservations
from chatgate.storage.database import Database
from chatgate.storage.fastpath import Settlement
from chatgate.storage.reservations import Held, Lease
from chatgate.storage.usage import UsageRow


class DatabaseMoney:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def reserve(
        self, *, user_id: int, token_id: int | None, trace_id: str, amount: int, model: str, owner: str
    ) -> bool:
        return await self._db.fast.reserve(
            user_id=user_id, token_id=token_id, trace_id=trace_id, amount=amount, model=model, owner=owner
        )

    async def settle(self, settlement: Settlement) -> bool:
        return await self._db.fast.settle(settlement)

    async def renew(self, lease: Lease) -> None:
        await self._db.fast.renew(lease)

    async def leases(self) -> list[Lease]:
        async with self._db.sessions() as session:
            return await reservations.leases(session)

    async def drop_lease(self, owner: str) -> None:
        async with self._db.transaction() as session:
            await reservations.drop_lease(session, owner=owner)

    async def open_reservations(self) -> list[Held]:
        async with self._db.sessions() as session:
            return await reservations.open_reservations(session)

    async def release(self, held: Held, usage: UsageRow) -> bool:
        async with self._db.transaction() as session:
            return await reservations.release(session, held=held, usage=usage)
