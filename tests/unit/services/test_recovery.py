"""Telling a dead owner from a live one on this host (by process id and start time), and a sweep
that runs while requests are being admitted."""

import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from chatgate.config import Price
from chatgate.providers.base import Accepted, Bound, Finished, ProviderEvent, TextDelta
from chatgate.services.auth import Principal
from chatgate.services.metering import Caller, Metering
from chatgate.services.recovery import Recovery, new_owner, process_start
from chatgate.storage.reservations import Held, Lease
from tests.unit.fakes import CountingLimiter, FakeStore, Refusals


def lease_of(pid: int, *, host: str | None = None, expires_in: float = 30) -> Lease:
    me = new_owner()
    return Lease(
        f"{pid}-x",
        me.host if host is None else host,
        pid,
        process_start(pid) or 0,
        datetime.now(UTC) + timedelta(seconds=expires_in),
    )


def test_a_process_of_this_host_is_dead_once_it_has_exited_and_a_reused_pid_does_not_fool_it() -> None:
    recovery = Recovery(FakeStore(), new_owner(), lease_seconds=30, in_flight=set)
    now = datetime.now(UTC)
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as child:
        alive = lease_of(child.pid)
        assert not recovery.dead(alive, now)
        reused = Lease(alive.owner, alive.host, alive.pid, alive.process_start + 1, alive.expires_at)
        assert recovery.dead(reused, now)  # the same pid, another process
        child.kill()
    assert recovery.dead(alive, now)


def test_another_hosts_process_lives_as_long_as_its_lease() -> None:
    recovery = Recovery(FakeStore(), new_owner(), lease_seconds=30, in_flight=set)
    now = datetime.now(UTC)
    assert not recovery.dead(lease_of(999_999, host="elsewhere"), now)
    assert recovery.dead(lease_of(999_999, host="elsewhere", expires_in=-1), now)


@dataclass
class BusyStore(FakeStore):
    """A store whose open-reservations query lets other work run while it waits (``meanwhile``,
    once), as a database query does: the event loop admits requests in the meantime."""

    meanwhile: Callable[[], Awaitable[None]] | None = None

    async def open_reservations(self) -> list[Held]:
        work, self.meanwhile = self.meanwhile, None
        if work is not None:
            await work()
        return await super().open_reservations()


@pytest.mark.parametrize("admitted_by", ["this process", "a sibling that has just started"])
async def test_a_request_admitted_while_a_sweep_reads_is_left_to_settle_and_is_charged(
    admitted_by: str,
) -> None:
    store = BusyStore()
    store.grant(1, 1000)
    me = new_owner()
    owner = me.owner if admitted_by == "this process" else "sibling"
    metering = Metering(store, CountingLimiter(), Refusals(), owner=owner)
    mine = metering.in_flight if owner == me.owner else set  # what the sweeping process has in flight
    sweeper = Recovery(store, me, lease_seconds=30, in_flight=mine, alive=lambda lease: True)
    await sweeper.renew()
    meter = metering.admit(
        Caller(Principal(user_id=1, token_id=None), "t1"), model="m", price=Price(), bound=Bound(5, 16)
    )

    async def admit() -> None:
        if owner == "sibling":  # a process takes its lease before it serves
            await store.renew(Lease(owner, me.host, 2, 2, datetime.now(UTC) + timedelta(seconds=30)))
        await meter.open()

    store.meanwhile = admit
    assert await sweeper.sweep() == []
    assert list(store.open) == [(1, "t1")]  # still held by the request in flight
    answer: list[ProviderEvent] = [Accepted(5), TextDelta("Hi", tokens=1), Finished("stop", 5, 1)]
    for event in answer:
        meter.observe(event)
    await meter.settle()
    await meter.close()
    assert store.balances[1] == 1000 - 6 and [r.cost for r in store.usage] == [6]  # served, and paid
    assert store.discrepancies() == []
