"""The server's life cycle: admission, in-flight accounting and the graceful drain on SIGTERM.

The drain, in order:
1. Stop admitting: new requests get 503 with Retry-After (`/health` still answers, `/ready` turns
   503 so that load balancers move traffic away).
2. Let in-flight requests finish, up to the drain timeout.
3. Abort the generations still running. Each ends in a way that says so: a non-streaming request
   gets 503 `server_shutting_down`; a stream gets an `error` event with that code, then `[DONE]`.
   Their usage records are written with what they used.
4. Wait (briefly) until every response, and the usage record each writes when it ends, is done.
Then the caller (the CLI's uvicorn server) exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from engines.protocol import GenerationEngine

log = logging.getLogger("ozwell.server")


@dataclass(frozen=True)
class _Generation:
    engine: GenerationEngine
    request_id: str


class Lifecycle:
    def __init__(self, retry_after_s: int = 5):
        self.draining = False
        self.retry_after_s = retry_after_s
        self._in_flight = 0
        self._idle: asyncio.Event | None = None
        self._generations: set[_Generation] = set()
        self._cut: set[str] = set()  # request ids aborted by the drain

    # ---- HTTP requests (the guard middleware counts them) -------------------------------------
    @property
    def in_flight(self) -> int:
        return self._in_flight

    def request_started(self) -> None:
        self._in_flight += 1

    def request_finished(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0 and self._idle is not None:
            self._idle.set()

    async def _wait_idle(self, timeout_s: float) -> bool:
        if self._in_flight == 0:
            return True
        self._idle = asyncio.Event()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=max(timeout_s, 0.0))
            return True
        except TimeoutError:
            return self._in_flight == 0
        finally:
            self._idle = None

    # ---- generations (the services register them) ---------------------------------------------
    def register(self, engine: GenerationEngine, request_id: str) -> _Generation:
        generation = _Generation(engine, request_id)
        self._generations.add(generation)
        return generation

    def unregister(self, generation: _Generation) -> None:
        self._generations.discard(generation)
        self._cut.discard(generation.request_id)

    def was_cut(self, request_id: str) -> bool:
        return request_id in self._cut

    # ---- the drain -------------------------------------------------------------------------------
    async def drain(self, timeout_s: float, grace_s: float = 10.0) -> None:
        self.draining = True
        started = time.perf_counter()
        log.info("draining: %d request(s) in flight, waiting up to %.0fs", self._in_flight, timeout_s)
        if not await self._wait_idle(timeout_s):
            cut = list(self._generations)
            log.warning("drain timeout: aborting %d generation(s) still running", len(cut))
            for generation in cut:
                self._cut.add(generation.request_id)
                await generation.engine.abort(generation.request_id)
            if not await self._wait_idle(grace_s):
                log.warning("%d request(s) still open after the drain; closing anyway", self._in_flight)
        log.info("drained in %.1fs", time.perf_counter() - started)

