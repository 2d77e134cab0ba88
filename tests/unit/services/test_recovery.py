"""Telling a dead owner from a live one on this host: by process id and start time."""

import subprocess
import sys
from datetime import UTC, datetime, timedelta

from chatgate.services.recovery import Recovery, new_owner, process_start
from chatgate.storage.reservations import Lease
from tests.unit.fakes import FakeStore


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
