"""A diagnostic watchdog of the event loop's lag: off unless OZWELL_LOOP_WATCHDOG_MS is set (issue #35).

Every request shares one event loop, so any synchronous work a request does on it delays every other
request. A thread pings the loop every few milliseconds (call_soon_threadsafe) and measures how long the
ping waited to run; a wait over the threshold is logged as `event loop blocked for N ms (in: ...)`, the
"in" being where the loop's thread was when the threshold passed (file:line function, innermost last), and
the worst one is kept. The security tier runs the server with it and asserts no such line after hostile
bodies on every route. The line holds code locations only: never a value, so never a prompt.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
import traceback

log = logging.getLogger("ozwell.server")

ENV = "OZWELL_LOOP_WATCHDOG_MS"
INTERVAL_S = 0.005


class LoopWatchdog:
    def __init__(self, loop: asyncio.AbstractEventLoop, threshold_ms: float):
        self.loop = loop
        self.threshold_ms = threshold_ms
        self.worst_ms = 0.0
        self._loop_thread = threading.get_ident()  # made on the loop's thread (from_env)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="ozwell-loop-watchdog", daemon=True)

    @classmethod
    def from_env(cls) -> LoopWatchdog | None:
        """A started watchdog on the running loop when the environment asks for one, else None."""
        value = os.environ.get(ENV, "").strip()
        if not value:
            return None
        watchdog = cls(asyncio.get_running_loop(), float(value))
        watchdog._thread.start()
        log.info("event loop watchdog on: lags over %g ms are logged", watchdog.threshold_ms)
        return watchdog

    def _watch(self) -> None:
        while not self._stop.wait(INTERVAL_S):
            answered = threading.Event()
            ran: list[float] = []

            def ping(ran: list[float] = ran, answered: threading.Event = answered) -> None:
                ran.append(time.perf_counter())  # on the loop: the time it ran, read there (not when we next run)
                answered.set()

            sent = time.perf_counter()
            try:
                self.loop.call_soon_threadsafe(ping)
            except RuntimeError:  # the loop is closed
                return
            where = "" if answered.wait(self.threshold_ms / 1000) else self._where()
            while not answered.wait(1.0):  # a loop blocked for seconds is still measured, once it answers
                if self._stop.is_set():
                    return
            lag_ms = (ran[0] - sent) * 1000
            self.worst_ms = max(self.worst_ms, lag_ms)
            if lag_ms > self.threshold_ms:
                log.warning("event loop blocked for %.0f ms (in: %s)", lag_ms, where or "?")

    def _where(self) -> str:
        frame = sys._current_frames().get(self._loop_thread)
        if frame is None:
            return ""
        stack = traceback.extract_stack(frame)[-6:]
        return " < ".join(f"{os.path.basename(f.filename)}:{f.lineno} {f.name}" for f in reversed(stack))

    def stop(self) -> None:
        self._stop.set()
