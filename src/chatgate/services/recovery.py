"""Credits held by requests that will never settle, found and refunded in full.

Every serving process (each replica, each worker of a host) is an owner: a fresh id, under which its
reservations are opened, and a lease it moves ``lease_seconds`` ahead every third of that. A
reservation is released (refunded in full and logged as ``interrupted``, since its settlement was
never recorded) by the next sweep of any process when:

- its owner is this process but the request is no longer in flight (its settlement could not be
  written, so the request failed closed);
- its owner's lease has lapsed (the process died, or lost the database for longer than a lease);
- its owner ran on this host and its process is gone (checked by pid and start time, so a restart
  after ``kill -9`` gives the credits back at once, not a lease later);
- it has no owner lease at all (reservations left open before migration 0003).

A live owner's reservations are never touched: one replica's start-up leaves the others' in-flight
requests alone. Sweeps run at start-up and then every third of a lease.
"""

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Callable, Collection
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from chatgate.storage.reservations import Held, Lease
from chatgate.storage.usage import UsageRow

log = logging.getLogger("chatgate.recovery")

INTERRUPTED = "interrupted"  # the usage log's error code for a request released by a sweep


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def host_identity() -> str:
    """This host as its processes see it: its name, its boot, and its process-id namespace, so two
    containers with one host name (or one host rebooted) never take each other's pids for their own."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    identity = f"{socket.gethostname()}/{_read('/proc/sys/kernel/random/boot_id')}/{namespace}"
    return identity[:255]


def process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks after boot), or None if there is no such process."""
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return None
    fields = stat.rpartition(")")[2].split()  # after the command name, which may hold spaces
    try:
        return int(fields[19])  # field 22 of stat(5); the first two are before the name
    except (IndexError, ValueError):
        return None


def new_owner(pid: int | None = None) -> Lease:
    """This process as an owner of reservations (its lease not yet written)."""
    pid = os.getpid() if pid is None else pid
    return Lease(
        owner=f"{pid}-{uuid.uuid4().hex[:20]}",
        host=host_identity(),
        pid=pid,
        process_start=process_start(pid) or 0,
        expires_at=datetime.now(UTC),
    )


class Ledger(Protocol):
    """The sweep's queries (storage.money.DatabaseMoney; a fake in unit tests)."""

    async def renew(self, lease: Lease) -> None: ...

    async def leases(self) -> list[Lease]: ...

    async def drop_lease(self, owner: str) -> None: ...

    async def open_reservations(self) -> list[Held]: ...

    async def release(self, held: Held, usage: UsageRow) -> bool: ...


class Recovery:
    def __init__(
        self,
        ledger: Ledger,
        me: Lease,
        *,
        lease_seconds: float,
        in_flight: Callable[[], Collection[tuple[int, str]]],
        alive: Callable[[Lease], bool | None] | None = None,
    ) -> None:
        self._ledger = ledger
        self.me = me
        self._lease = timedelta(seconds=lease_seconds)
        self._in_flight = in_flight
        self._alive = alive or self._alive_here
        self._task: asyncio.Task[None] | None = None

    def _alive_here(self, lease: Lease) -> bool | None:
        """Whether the lease's process still runs, if it ran on this host; None if it ran elsewhere
        (or this system has no /proc to tell by)."""
        if lease.host != self.me.host or self.me.process_start == 0:
            return None
        started = process_start(lease.pid)
        return started is not None and (lease.process_start == 0 or started == lease.process_start)

    def dead(self, lease: Lease, now: datetime) -> bool:
        return lease.expires_at <= now or self._alive(lease) is False

    async def renew(self) -> None:
        await self._ledger.renew(
            Lease(self.me.owner, self.me.host, self.me.pid, self.me.process_start, _now() + self._lease)
        )

    async def sweep(self) -> list[Held]:
        """Release every reservation no live process will settle; the ones released."""
        now = _now()
        # The reservations first, then who holds them: a request admitted while these queries wait
        # is in flight before its reservation is written, and a process's lease is written before
        # its first reservation, so every reservation read here has its holder in what is read after
        # it. (Read the other way round, a reservation made meanwhile had no live holder yet, and a
        # request in flight was refunded and then served free.)
        # A request counts itself in flight before it reserves, and out once it has settled. So one
        # of this process's reservations is left alone if it was in flight before the reservations
        # were read (it may have settled since: nothing to refund, and no write to find that out),
        # if it was made since, or if it is in flight after they were read (a request admitted
        # while the query waited: under load it can reserve, and even settle, meanwhile).
        begun, in_flight = _now(), set(self._in_flight())
        opened = await self._ledger.open_reservations()
        leases = {lease.owner: lease for lease in await self._ledger.leases()}
        in_flight |= set(self._in_flight())
        released: list[Held] = []
        holders: set[str] = set()
        for held in opened:
            if held.owner == self.me.owner:
                if (held.user_id, held.trace_id) in in_flight or held.created_at >= begun:
                    continue
            else:
                lease = leases.get(held.owner)
                if lease is not None and not self.dead(lease, now):
                    holders.add(held.owner)
                    continue
            if await self._ledger.release(held, _interrupted(held)):
                released.append(held)
        for owner, lease in leases.items():
            if owner != self.me.owner and owner not in holders and self.dead(lease, now):
                await self._ledger.drop_lease(owner)
        if released:
            log.warning(
                "refunded %d reservations no live process would settle (%d credits)",
                len(released),
                sum(h.amount for h in released),
            )
        return released

    async def start(self) -> None:
        """Take the lease, release what dead processes left, and keep both up to date from now on."""
        await self.renew()
        await self.sweep()
        self._task = asyncio.create_task(self._run(), name="reservation-sweeper")

    async def _run(self) -> None:
        period = self._lease.total_seconds() / 3
        while True:
            await asyncio.sleep(period)
            try:
                await self.renew()
                await self.sweep()
            except Exception:  # the database is unreachable: requests fail closed meanwhile
                log.exception("could not renew the lease or sweep reservations")

    async def stop(self) -> None:
        """Stop sweeping; the lease goes (anything this process still holds is then swept by others)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self.sweep()  # settlements that failed: give them back now
            await self._ledger.drop_lease(self.me.owner)


def _now() -> datetime:
    return datetime.now(UTC)


def _interrupted(held: Held) -> UsageRow:
    return UsageRow(
        trace_id=held.trace_id,
        user_id=held.user_id,
        token_id=held.token_id,
        model=held.model or "unknown",
        prompt_tokens=0,
        completion_tokens=0,
        cost=0,
        latency_ms=max(0, int((_now() - held.created_at).total_seconds() * 1000)),
        status="error",
        error_code=INTERRUPTED,
        created_at=_now(),
    )
