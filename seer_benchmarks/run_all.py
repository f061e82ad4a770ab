"""Runs every ``seer_benchmarks/bench_*.py`` in turn (``make bench``); each rewrites its docs page.

Usage::

    python -m seer_benchmarks.run_all            # full benchmarks
    python -m seer_benchmarks.run_all --quick    # smaller datasets and fewer repeats
    python -m seer_benchmarks.run_all delta_storage seer   # a selection
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent


def available() -> list[str]:
    """Names of the benchmark modules, without the ``bench_`` prefix."""
    return sorted(p.stem.removeprefix("bench_") for p in BENCH_DIR.glob("bench_*.py"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "names", nargs="*", help=f"benchmarks to run (default: all of {available()})"
    )
    parser.add_argument("--quick", action="store_true", help="small datasets and few repeats")
    args = parser.parse_args(argv)
    names = args.names or available()
    unknown = sorted(set(names) - set(available()))
    if unknown:
        parser.error(f"unknown benchmarks {unknown}; available: {available()}")
    failures = []
    for name in names:
        print(f"== benchmark {name}", flush=True)
        start = time.perf_counter()
        module = importlib.import_module(f"seer_benchmarks.bench_{name}")
        try:
            module.main(["--quick"] if args.quick else [])
        except Exception as err:  # report every benchmark, then fail
            print(f"benchmark {name} failed: {err!r}", file=sys.stderr)
            failures.append(name)
        print(f"== {name} done in {time.perf_counter() - start:.0f} s", flush=True)
    if failures:
        print(f"failed benchmarks: {failures}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
