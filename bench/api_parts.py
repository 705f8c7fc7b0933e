"""The api's per-push CPU work, part by part, in-process on the bench's own bodies (no servers).

`python -m bench.api_parts [--sizes 100,500] [--pushes 40]`

Each part is timed with timeit (best of 7 rounds, so a hot cache: under load the
same code costs more, see "Where the time goes" in bench/README.md). Besides what
the api does now, it times what an envelope-only check would cost (the body's
syntax and envelope, each record left undecoded), the design change proposed for
the e2e / writer target: the difference is the most that change could save.
"""

from __future__ import annotations

import argparse
import timeit
from collections.abc import Callable
from typing import Any

from bench.gen import PushStream, make_templates
from queueing.rq_compat import compress_job_data
from schema import envelope, validation
from schema.jsonbytes import first_invalid_utf8, has_nul_escape


def parts() -> dict[str, Callable[[bytes], Any]]:
    return {
        "validate_push (what the api does now)": validation.validate_push,
        "  UTF-8 check": first_invalid_utf8,
        "  NUL-escape scan": has_nul_escape,
        "  typed decode of every record, nesting checks": validation.decode_valid_records,
        "envelope only (syntax, envelope, records raw)": envelope.split_records,
        "lz4 of the job data (the body)": compress_job_data,
    }


def time_per_push(fn: Callable[[bytes], Any], bodies: list[bytes], rounds: int = 7, number: int = 3) -> float:
    """Microseconds per push, best of `rounds`."""
    timer = timeit.Timer(lambda: [fn(b) for b in bodies])
    return min(timer.repeat(repeat=rounds, number=number)) / (number * len(bodies)) * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,500", help="records per push, comma-separated")
    parser.add_argument("--pushes", type=int, default=40, help="distinct bodies per size")
    args = parser.parse_args(argv)
    for size in (int(s) for s in args.sizes.split(",")):
        stream = PushStream(make_templates(size), phase=1)
        pushes = [stream.fresh_push(n) for n in range(args.pushes)]
        bodies = [p.body for p in pushes]
        per_push_records = sum(p.records for p in pushes) / len(pushes)
        kb = sum(map(len, bodies)) / len(bodies) / 1024
        print(f"{size}-record pushes ({kb:.0f} KB on average): us per push (us per record)")
        for name, fn in parts().items():
            us = time_per_push(fn, bodies)
            print(f"  {name:50s} {us:7.0f}  ({us / per_push_records:.2f})")


if __name__ == "__main__":
    main()
