"""The garbage collector tuned for a long-running server: start-up's objects kept out of every collection.

CPython's full (generation-2) collection visits every container object alive in the process. A
gateway imports a web framework, an ORM, a database driver and an HTTP client: about 180,000 such
objects before its first request, none of which ever becomes garbage. Visiting them all took 41 to
97 ms on this project's 2-core machine, at a moment no request chooses (issue 18): the tail of
the latency was these pauses, not work. ``settle()`` runs once start-up is complete: one full
collection to clear start-up's own garbage, then ``gc.freeze()`` moves every survivor to the
permanent generation, which no collection visits again. Full collections after that visit only
what requests and caches created since, a few thousand objects.
"""

import gc


def settle() -> None:
    """Freeze what start-up left alive (call once, when the server is ready to serve)."""
    gc.collect()
    gc.freeze()
