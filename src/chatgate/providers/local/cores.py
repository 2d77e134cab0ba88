"""How many of the machine's cores other work leaves free: what a llama.cpp step may spread over.

llama.cpp's threads meet at a barrier after every operation of every layer, spinning until all have
arrived. When another process holds one of the cores, a step on two threads waits at each barrier
for a thread the kernel has parked: measured on this machine (2 cores, load average 6-9, SmolLM2
135M, 600 tokens of context) one thread decoded a token in 16-43 ms and two threads in 190-650 ms.
So a step uses more than one thread only where cores are idle for them.

Other work is the load average less this process's own CPU use, both smoothed over the same
minute: the load average counts every runnable thread on the machine, ours included. Where our
threads wait for a core, they count in the load and not in our CPU time, so contention reads as
other work, which errs towards one thread: the safe side (a lone stream loses at most a quarter of
its speed on one thread; on a busy machine it gains ten times).
"""

import math
import os
import threading
import time
from collections.abc import Callable

REFRESH_SECONDS = 1.0
WINDOW_SECONDS = 60.0  # the kernel's one-minute load average


class FreeCores:
    """The cores other processes leave idle, refreshed at most once a second (cheap to call per step)."""

    def __init__(
        self,
        *,
        cores: int | None = None,
        load: Callable[[], float] = lambda: os.getloadavg()[0],
        cpu_seconds: Callable[[], float] = time.process_time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cores = cores or os.cpu_count() or 1
        self._load = load
        self._cpu_seconds = cpu_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._at = clock()
        self._spent = cpu_seconds()
        self._own: float | None = None  # this process's CPU use in cores, smoothed as the load is
        self._free = self.cores

    def __call__(self) -> int:
        """Cores free for the engine's next step, at least 1."""
        now = self._clock()
        if now - self._at < REFRESH_SECONDS:
            return self._free
        with self._lock:
            elapsed = now - self._at
            if elapsed < REFRESH_SECONDS:
                return self._free
            spent = self._cpu_seconds()
            rate = (spent - self._spent) / elapsed
            keep = math.exp(-elapsed / WINDOW_SECONDS)
            self._own = rate if self._own is None else keep * self._own + (1 - keep) * rate
            self._at, self._spent = now, spent
            others = max(0.0, self._load() - self._own)
            self._free = max(1, min(self.cores, math.floor(self.cores - others + 0.5)))
            return self._free
