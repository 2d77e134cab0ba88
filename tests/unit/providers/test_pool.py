"""Engine admission: first come, first served, with a bounded queue."""

import asyncio
from pathlib import Path

import pytest

from chatgate.errors import EngineBusy
from chatgate.providers.local.pool import EnginePool, Slot, ThreadBudget


def pool_with_one_instance(max_queue: int) -> EnginePool:
    pool = EnginePool(
        path=Path("unused.gguf"), context_length=512, instances=1, budget=ThreadBudget(2), max_queue=max_queue
    )
    slot = Slot(index=0, sequence=None)  # no model: admission never touches it
    pool.slots.append(slot)
    pool.release(slot)
    return pool


async def test_a_freed_instance_goes_to_the_longest_waiter() -> None:
    pool = pool_with_one_instance(max_queue=4)
    held = await pool.acquire()
    order: list[str] = []

    async def wait(name: str) -> None:
        slot = await pool.acquire()
        order.append(name)
        pool.release(slot)

    first, second = asyncio.create_task(wait("first")), asyncio.create_task(wait("second"))
    await asyncio.sleep(0)
    assert pool.queued == 2
    pool.release(held)
    late = asyncio.create_task(wait("late"))  # arrives after the release: still behind both
    await asyncio.gather(first, second, late)
    assert order == ["first", "second", "late"]
    assert pool.busy == 0


async def test_a_full_queue_refuses_at_once_with_retry_after() -> None:
    pool = pool_with_one_instance(max_queue=1)
    await pool.acquire()
    waiting = asyncio.create_task(pool.acquire())
    await asyncio.sleep(0)
    with pytest.raises(EngineBusy) as refused:
        await pool.acquire()
    assert refused.value.retry_after >= 1
    waiting.cancel()


async def test_a_waiter_that_gives_up_does_not_swallow_the_instance() -> None:
    pool = pool_with_one_instance(max_queue=4)
    held = await pool.acquire()
    quitter = asyncio.create_task(pool.acquire())
    stayer = asyncio.create_task(pool.acquire())
    await asyncio.sleep(0)
    quitter.cancel()
    await asyncio.sleep(0)
    pool.release(held)
    slot = await asyncio.wait_for(stayer, 1)
    assert slot is held and pool.queued == 0


def pool_on(budget: ThreadBudget, instances: int) -> EnginePool:
    pool = EnginePool(
        path=Path("unused.gguf"), context_length=512, instances=instances, budget=budget, max_queue=4
    )
    for index in range(instances):
        slot = Slot(index=index, sequence=None)
        pool.slots.append(slot)
        pool.release(slot)
    return pool


async def test_threads_are_shared_among_the_models_with_requests_from_the_moment_one_is_taken() -> None:
    """One model's sequences share its context, one call at a time: its steps get every thread
    however many of its sequences are taken, and two models with requests split them."""
    budget = ThreadBudget(2)
    qwen, smol = pool_on(budget, 2), pool_on(budget, 1)
    assert budget.share() == 2
    first = await qwen.acquire()
    second = await qwen.acquire()
    assert budget.share() == 2 and budget.active == 1  # one model: its batched steps on both threads
    waiting = asyncio.create_task(qwen.acquire())
    await asyncio.sleep(0)
    qwen.release(first)  # straight to the waiter: the model still has requests
    third = await waiting
    assert budget.active == 1
    other = await smol.acquire()
    assert budget.share() == 1  # before either model's next step, so neither starts on both
    smol.release(other)
    assert budget.share() == 2
    qwen.release(second)
    qwen.release(third)
    assert budget.share() == 2 and budget.active == 0


async def test_the_lowest_free_sequence_is_handed_out_so_those_at_work_keep_consecutive_ids() -> None:
    pool = EnginePool(
        path=Path("unused.gguf"), context_length=512, instances=3, budget=ThreadBudget(2), max_queue=4
    )
    for index in (2, 0, 1):  # freed in another order
        slot = Slot(index=index, sequence=None)
        pool.slots.append(slot)
        pool.release(slot)
    taken = [await pool.acquire() for _ in range(2)]
    assert [slot.index for slot in taken] == [0, 1]
    pool.release(taken[0])
    assert (await pool.acquire()).index == 0  # the gap is filled first
    pool.release(taken[1])
    assert (await pool.acquire(exact=True)).index == 2  # a seeded request's calls are its own: out of the way
