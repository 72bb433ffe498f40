"""Benchmark, run by hand: the main job on a quiet machine, then beside CPU-bound busy processes.

Each run is a fresh project (``dagster job execute -j main``, default config unless ``--tiny``).
Target: with two busy processes on 2 cores the main job takes at most 2.5x its quiet time,
measured in the same session. ``--busy`` sets how many busy processes run beside it.

Usage: ``python benchmarks/under_load.py [--busy 2] [--tiny] [--work /tmp/under_load]``
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ft_assets_tests.project_runs import TINY_CONFIG, finish, make_project, start_job

BUSY = "while True:\n    pass\n"


def _timed_main(project: Path, config: dict) -> float:
    started = time.monotonic()
    job = start_job(project, "main", config)
    if finish(job, timeout_s=3600) != 0:
        raise SystemExit(f"the main job failed:\n{job.output()}")
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy", type=int, default=2, help="CPU-bound processes beside the loaded run")
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny model instead of the default config")
    parser.add_argument("--work", type=Path, default=Path("/tmp/under_load"))
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    config = TINY_CONFIG if args.tiny else {}
    quiet = _timed_main(make_project(args.work / "quiet"), config)
    print(f"quiet: {quiet:.1f} s")
    busy = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(args.busy)]
    try:
        loaded = _timed_main(make_project(args.work / "loaded"), config)
    finally:
        for process in busy:
            process.kill()
            process.wait()
    print(f"with {args.busy} busy processes: {loaded:.1f} s; ratio {loaded / quiet:.2f} (target <= 2.5)")
    return 0 if loaded / quiet <= 2.5 else 1


if __name__ == "__main__":
    sys.exit(main())
