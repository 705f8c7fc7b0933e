"""Keep the long-lived startup heap out of Python's cyclic garbage collector."""

from __future__ import annotations

import gc


def freeze_startup_heap() -> int:
    """Collect once, then move every object alive now to the GC's permanent generation.

    A process imports ~50,000 container objects (modules, classes, functions of
    starlette, RQ, redis, psycopg, msgspec, ...) that live as long as it does.
    Every full (generation 2) collection traversed all of them again: 22-35 ms
    with the process stopped, measured in the api at half its maximum rate,
    about every 2 s, and each pause is added to every push in flight. After a
    freeze, full collections only walk what was made since, which is what can
    become garbage. Call it once startup is done; returns the objects frozen.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
