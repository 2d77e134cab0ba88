"""The host's bound on heavy work: lock files shared by every process that uses the directory."""

import asyncio
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from chatgate.errors import EngineBusy
from chatgate.providers.heavy import HeavyWork

# Another process holding the host's only slot until told to let go (a line on its stdin).
HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.readline()
"""


async def test_a_slot_held_by_another_process_makes_a_job_wait_then_refuses_it(tmp_path: Path) -> None:
    command = [sys.executable, "-c", HOLDER, str(tmp_path / "heavy-0.lock")]
    busy, patient = HeavyWork(tmp_path, slots=1, wait_seconds=0.3), HeavyWork(tmp_path, slots=1)
    with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as holder:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(EngineBusy):
            await busy.run(sum, [1, 2])
        waiting = asyncio.create_task(patient.run(sum, [1, 2]))
        await asyncio.sleep(0.1)
        assert not waiting.done()  # the other process still holds it
        assert holder.stdin is not None
        holder.stdin.write("go\n")
        holder.stdin.flush()
        assert await waiting == 3  # the holder is gone: the job ran
    busy.close()
    patient.close()


async def test_jobs_of_one_process_never_run_more_than_the_slots_at_once(tmp_path: Path) -> None:
    heavy = HeavyWork(tmp_path, slots=2)
    running, most = 0, 0
    lock = threading.Lock()
    release = threading.Event()

    def job() -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        release.wait(5)
        with lock:
            running -= 1

    jobs = [asyncio.create_task(heavy.run(job)) for _ in range(5)]
    while most < 2:
        await asyncio.sleep(0.01)
    release.set()
    await asyncio.gather(*jobs)
    assert most == 2
    heavy.close()


async def test_a_cancelled_job_keeps_its_slot_until_its_thread_is_done(tmp_path: Path) -> None:
    heavy = HeavyWork(tmp_path, slots=1, wait_seconds=0.2)
    started, release = threading.Event(), threading.Event()

    def job() -> None:
        started.set()
        release.wait(5)

    task = asyncio.create_task(heavy.run(job))
    while not started.is_set():
        await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.sleep(0.05)
    with pytest.raises(EngineBusy):  # the thread still runs: its slot is not free
        await heavy.run(sum, [1])
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await heavy.run(sum, [1, 1]) == 2
    heavy.close()
