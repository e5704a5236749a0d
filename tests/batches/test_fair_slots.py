"""FairSlots (server/services/batch_budget.py): a replica's batch-line slots, handed to waiting owners in turn."""

from __future__ import annotations

import asyncio

from server.services.batch_budget import FairSlots


def test_a_freed_slot_goes_to_the_owners_in_turn_not_to_the_first_in_line():
    async def scenario() -> list[str]:
        slots, order = FairSlots(2), []
        release = asyncio.Event()

        async def line(owner: str) -> None:
            async with slots.slot(owner):
                order.append(owner)
                await release.wait()

        tasks = [asyncio.create_task(line("a")) for _ in range(6)]  # a long batch: 2 run, 4 wait
        await asyncio.sleep(0)
        tasks.append(asyncio.create_task(line("b")))  # another owner's one line, queued last
        await asyncio.sleep(0)
        release.set()
        await asyncio.gather(*tasks)
        return order

    order = asyncio.run(scenario())
    assert order[:2] == ["a", "a"] and order.index("b") == 3  # b runs after one more of a's, not after all four


def test_a_cancelled_waiter_gives_its_place_and_its_slot_back():
    async def scenario() -> int:
        slots = FairSlots(1)
        hold = asyncio.Event()

        async def line(owner: str) -> None:
            async with slots.slot(owner):
                await hold.wait()

        first = asyncio.create_task(line("a"))
        await asyncio.sleep(0)
        waiting = asyncio.create_task(line("b"))
        await asyncio.sleep(0)
        waiting.cancel()
        hold.set()
        await asyncio.gather(first, waiting, return_exceptions=True)
        return slots.free

    assert asyncio.run(scenario()) == 1
