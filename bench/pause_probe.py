"""A pause probe for a server under benchmark: how long its event loop stalls, and what the collector costs.

Installed into a server process (and every worker it spawns) by ``bench/probe/sitecustomize.py`` when
``CHATGATE_BENCH_PROBE`` names a directory; nothing in chatgate itself knows of it. In the process it

- times every garbage collection through ``gc.callbacks`` (count, total and longest, per generation);
- runs a task on the server's event loop that sleeps ``TICK`` seconds again and again and records
  how late each wake-up comes: the longest lateness is the longest stretch the loop could run
  nothing else (a collection, a blocking call, a long stretch of Python between two awaits). On a
  shared machine the process can also be descheduled, which makes a wake-up late without any
  work; so the main thread's CPU time within each wait is kept too (``longest_busy``): what the
  loop itself was doing, whatever else the machine ran.

On ``SIGUSR1`` it writes what it saw since the last signal to ``<dir>/<pid>.json`` and starts
afresh, so a benchmark brackets each run with two signals. ``read_probes`` is the benchmark's side.
"""

import asyncio
import contextlib
import gc
import json
import os
import signal
import sys
import threading
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

TICK = 0.002  # seconds between the sampler's wake-ups: its overhead is a few microseconds a tick


class Probe:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.sequence = 0
        self._gc_started = self._gc_cpu = 0.0
        self.last_tick = self.last_cpu = 0.0
        self.reset()

    def reset(self) -> None:
        # per generation: count, total wall seconds, longest wall, longest CPU (this thread's)
        self.gc: dict[int, list[float]] = {gen: [0, 0.0, 0.0, 0.0] for gen in (0, 1, 2)}
        self.longest_stall = 0.0
        self.longest_busy = 0.0  # of the main thread's CPU time within one wake-up's wait: load-independent
        self.stalls_over = {1: 0, 5: 0, 10: 0, 50: 0}  # milliseconds: how many wake-ups were that late
        self.ticks = 0
        self.cpu_started = time.process_time()
        self.collected = 0  # objects the collections freed: garbage in reference cycles
        self.stacks: Counter[str] = Counter()  # where the loop was when a watchdog found it stuck

    def on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started, self._gc_cpu = time.perf_counter(), time.thread_time()
            return
        took, cpu = time.perf_counter() - self._gc_started, time.thread_time() - self._gc_cpu
        entry = self.gc[int(info["generation"])]
        entry[0] += 1
        entry[1] += took
        entry[2] = max(entry[2], took)
        entry[3] = max(entry[3], cpu)
        self.collected += int(info.get("collected", 0))

    async def sample(self) -> None:
        while True:
            before, cpu = time.perf_counter(), time.thread_time()  # not loop.time(): uvloop's counts whole ms
            self.last_tick, self.last_cpu = before, cpu
            reports = self.sequence
            await asyncio.sleep(TICK)
            late = time.perf_counter() - before - TICK
            busy = time.thread_time() - cpu
            if self.sequence != reports:  # a report was written meanwhile: its own time (gc.get_objects()
                continue  # over every object, about 20 ms) is the probe's, not the server's
            self.ticks += 1
            if busy > self.longest_busy:
                self.longest_busy = busy
            if late > self.longest_stall:
                self.longest_stall = late
            for threshold in self.stalls_over:
                if late * 1000 > threshold:
                    self.stalls_over[threshold] += 1

    def watch(self, main: int, threshold: float) -> None:
        """A thread that notes where the main thread is whenever it has spent more than ``threshold``
        seconds of CPU since the sampler last woke (``CHATGATE_BENCH_PROBE_STACKS``, in ms): what the
        stalls are made of. CPU time, not wall time, so a descheduled process is not mistaken for a
        busy loop. (It can look only when the main thread lets go of the GIL, so a collection, which
        never does, is seen by the collector's callback instead.)"""
        clock = time.pthread_getcpuclockid(main)
        seen = 0.0
        while True:
            time.sleep(0.001)
            tick, cpu = self.last_tick, self.last_cpu
            if tick != seen and time.clock_gettime(clock) - cpu > threshold:
                seen = tick
                frame = sys._current_frames().get(main)
                if frame is not None:
                    self.stacks["".join(traceback.format_stack(frame, limit=14))] += 1

    def dump(self) -> None:
        self.sequence += 1
        report = {
            "pid": os.getpid(),
            "sequence": self.sequence,
            "longest_stall_ms": round(self.longest_stall * 1000, 3),
            "longest_busy_ms": round(self.longest_busy * 1000, 3),
            "stalls_over_ms": {str(k): v for k, v in self.stalls_over.items()},
            "ticks": self.ticks,
            "gc": {
                str(gen): {
                    "count": int(c),
                    "total_ms": round(t * 1000, 3),
                    "longest_ms": round(m * 1000, 3),
                    "longest_cpu_ms": round(u * 1000, 3),
                }
                for gen, (c, t, m, u) in self.gc.items()
            },
            "gc_frozen": gc.get_freeze_count(),
            "gc_collected": self.collected,
            "gc_tracked": len(gc.get_objects()),  # what a full collection visits (the frozen ones are not)
            "garbage_types": _garbage_types(),
            "stacks": [{"count": n, "stack": text} for text, n in self.stacks.most_common(8)],
            "rss_mib": rss_mib(os.getpid()),
            "cpu_ms": round((time.process_time() - self.cpu_started) * 1000, 1),  # the whole process's
        }
        partial = self.directory / f"{os.getpid()}.part"
        partial.write_text(json.dumps(report))
        os.replace(partial, self.directory / f"{os.getpid()}.json")
        self.reset()


def _garbage_types() -> dict[str, int]:
    """With ``CHATGATE_BENCH_PROBE_GARBAGE`` set, the collector keeps what it frees (``DEBUG_SAVEALL``):
    the types of those objects, most common first, tell which code makes reference cycles."""
    if not gc.garbage:
        return {}
    counts = Counter(type(o).__qualname__ for o in gc.garbage)
    gc.garbage.clear()
    return dict(counts.most_common(15))


def rss_mib(pid: int) -> float:
    """A process's resident set, from /proc (Linux)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def install(directory: str) -> None:
    """Hook the probe into this process: the collector now, the loop sampler once uvicorn has started."""
    import uvicorn.server

    probe = Probe(Path(directory))
    gc.callbacks.append(probe.on_gc)
    if os.environ.get("CHATGATE_BENCH_PROBE_GARBAGE"):
        gc.set_debug(gc.DEBUG_SAVEALL)
    if os.environ.get("CHATGATE_BENCH_NO_FREEZE"):  # chatgate as it was: start-up's objects collected too
        import chatgate.heap

        chatgate.heap.settle = lambda: None
    original = uvicorn.server.Server.startup

    async def startup(self: uvicorn.server.Server, sockets: Any = None) -> None:
        await original(self, sockets=sockets)
        loop = asyncio.get_running_loop()
        self._pause_probe = loop.create_task(probe.sample())  # type: ignore[attr-defined]
        if os.environ.get("CHATGATE_BENCH_PROBE_STACKS"):
            threshold = float(os.environ["CHATGATE_BENCH_PROBE_STACKS"]) / 1000
            main = threading.get_ident()
            threading.Thread(target=probe.watch, args=(main, threshold), daemon=True).start()
        loop.add_signal_handler(signal.SIGUSR1, probe.dump)
        probe.dump()  # the first report says that this process answers: the benchmark signals only those

    uvicorn.server.Server.startup = startup  # type: ignore[method-assign]


# ---------------------------------------------------------------------------------------------
# The benchmark's side


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (a server and the workers it started)."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                found += process_tree(int(child))
    return found


def signal_probes(directory: Path, pid: int) -> dict[int, int]:
    """Ask every probed process under ``pid`` for its report; the sequence each had before.

    Only processes that have written a report are probed (a supervisor that serves nothing is not).
    """
    before: dict[int, int] = {}
    for each in process_tree(pid):
        path = directory / f"{each}.json"
        if not path.exists():
            continue
        before[each] = json.loads(path.read_text())["sequence"]
        with contextlib.suppress(ProcessLookupError):
            os.kill(each, signal.SIGUSR1)
    return before


def read_probes(directory: Path, before: dict[int, int], timeout: float = 5.0) -> list[dict[str, Any]]:
    """The reports asked for by ``signal_probes`` (processes without a probe, e.g. a supervisor, are left out)."""
    deadline = time.monotonic() + timeout
    reports: dict[int, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        for pid, sequence in before.items():
            path = directory / f"{pid}.json"
            with contextlib.suppress(OSError, ValueError):
                report = json.loads(path.read_text())
                if report["sequence"] > sequence:
                    reports[pid] = report
        if len(reports) == len(before):
            break
        time.sleep(0.05)
    return list(reports.values())


def summarise(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One line's worth over a server's processes: the longest stall and collection of any of them."""
    if not reports:
        return {}
    return {
        "longest_stall_ms": max(r["longest_stall_ms"] for r in reports),
        "longest_busy_ms": max(r["longest_busy_ms"] for r in reports),
        "stalls_over_5ms": sum(r["stalls_over_ms"]["5"] for r in reports),
        "gc_gen2": sum(r["gc"]["2"]["count"] for r in reports),
        "gc_longest_ms": max(max(g["longest_ms"] for g in r["gc"].values()) for r in reports),
        "gc_gen2_longest_ms": max(r["gc"]["2"]["longest_ms"] for r in reports),
        "gc_gen2_longest_cpu_ms": max(r["gc"]["2"]["longest_cpu_ms"] for r in reports),
        "gc_longest_cpu_ms": max(max(g["longest_cpu_ms"] for g in r["gc"].values()) for r in reports),
        "rss_mib": round(sum(r["rss_mib"] for r in reports), 1),
        "cpu_ms": round(sum(r["cpu_ms"] for r in reports), 1),
        "stacks": sorted((s for r in reports for s in r["stacks"]), key=lambda s: -s["count"])[:8],
    }
