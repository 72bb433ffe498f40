"""Benchmark: how long loading ``ft_assets.definitions`` takes against ``import dagster`` (target <= 1.3x).

Usage: ``python benchmarks/definitions_import.py [--runs 9]``. Each contender runs in a fresh
interpreter, interleaved, so both see the same machine state; medians are compared. Also
checks that no heavy library (torch, transformers, peft, trl, datasets) was imported.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

HEAVY = ("torch", "transformers", "peft", "trl", "datasets", "matplotlib")
CONTENDERS = {
    "import dagster": "import dagster",
    "import ft_assets.definitions": (
        "import sys, ft_assets.definitions; "
        f"loaded = [m for m in {HEAVY!r} if m in sys.modules]; "
        "assert not loaded, f'heavy imports: {loaded}'"
    ),
}


def timed(code: str) -> float:
    """Return the wall seconds of a fresh interpreter running ``code``."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    for code in CONTENDERS.values():
        timed(code)  # warm the file cache and byte-code
    seconds: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    for _ in range(args.runs):
        for name, code in CONTENDERS.items():
            seconds[name].append(timed(code))
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    for name, median in medians.items():
        print(f"{name}: median {median:.3f} s over {args.runs} runs (min {min(seconds[name]):.3f} s)")
    ratio = medians["import ft_assets.definitions"] / medians["import dagster"]
    print(f"ratio definitions/dagster: {ratio:.2f} (target <= 1.30); no heavy import")


if __name__ == "__main__":
    main()
