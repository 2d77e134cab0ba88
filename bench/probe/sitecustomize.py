"""Loaded by every Python process started with this directory on PYTHONPATH: the benchmark's pause probe
(and, for ``bench/breakdown.py``, its step timers).

``bench/gateway.py`` starts the servers it measures with ``PYTHONPATH=bench/probe`` and
``CHATGATE_BENCH_PROBE=<directory>``; worker processes inherit both. See ``bench/pause_probe.py``.
"""

import os
import sys

if os.environ.get("CHATGATE_BENCH_PROBE"):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import pause_probe

    pause_probe.install(os.environ["CHATGATE_BENCH_PROBE"])

if os.environ.get("CHATGATE_BENCH_BREAKDOWN"):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import breakdown

    breakdown.install(os.environ["CHATGATE_BENCH_BREAKDOWN"])
