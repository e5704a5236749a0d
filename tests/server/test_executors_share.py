"""The per-owner share of the CPU pool (server/executors.py, issue #35): one owner's jobs beyond its share
wait, while another owner's job runs at once."""

import asyncio
import threading
import time

from server import executors


def test_one_owner_cannot_fill_the_cpu_pool():
    share = executors.OWNER_CPU_SHARE
    release = threading.Event()
    running = {"greedy": 0, "most": 0}
    lock = threading.Lock()

    def hold(owner: str) -> None:
        with lock:
            running[owner] += 1
            running["most"] = max(running["most"], running["greedy"])
        release.wait(10)
        with lock:
            running[owner] -= 1

    async def as_owner(owner: str, func, *args):
        executors.cpu_owner.set(owner)
        return await executors.run_cpu(func, *args)

    async def main():
        greedy = [asyncio.create_task(as_owner("greedy", hold, "greedy")) for _ in range(executors.CPU_THREADS)]
        await asyncio.sleep(0.2)
        begun = time.perf_counter()
        assert await as_owner("other", lambda: "ran") == "ran"  # a thread was free for it
        waited = time.perf_counter() - begun
        release.set()
        await asyncio.gather(*greedy)
        return waited

    waited = asyncio.run(main())
    assert running["most"] == share and waited < 1.0
    assert executors._shares.in_flight("greedy") == 0  # each place given back when its job ended
