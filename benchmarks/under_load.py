"""Benchmark, run by hand: the main job on a quiet machine, then beside CPU-bound busy processes.

Each run is a fresh project (``dagster job execute -j main``, default config unless ``--tiny``).
Target: with two busy processes on 2 cores the main job takes at most 2.5x its quiet time,
measured in the same session. ``--busy`` sets how many busy processes run beside it.

``--baseline-python`` names an interpreter whose ``ft_assets`` is an older commit; its main job
runs quiet (and, with ``--baseline-loaded``, loaded) in the same session, so "the quiet time is
no worse than before" is compared pair for pair. One way to make such an interpreter::

    git worktree add /tmp/baseline <commit>
    python3 -m venv /tmp/basevenv
    printf '/tmp/baseline\n%s\n' .venv/lib/python3*/site-packages > /tmp/basevenv/lib/python3*/site-packages/b.pth

Usage: ``python benchmarks/under_load.py [--busy 2] [--tiny] [--baseline-python PY] [--work /tmp/under_load]``
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


def _timed_main(project: Path, config: dict, python: str = sys.executable) -> float:
    started = time.monotonic()
    job = start_job(project, "main", config, python=python)
    if finish(job, timeout_s=3600) != 0:
        raise SystemExit(f"the main job failed:\n{job.output()}")
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy", type=int, default=2, help="CPU-bound processes beside the loaded run")
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny model instead of the default config")
    parser.add_argument("--baseline-python", help="an interpreter whose ft_assets is the baseline commit")
    parser.add_argument("--baseline-loaded", action="store_true", help="also time the baseline beside busy processes")
    parser.add_argument("--work", type=Path, default=Path("/tmp/under_load"))
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    config = TINY_CONFIG if args.tiny else {}
    if args.baseline_python:
        baseline = _timed_main(make_project(args.work / "baseline-quiet"), config, args.baseline_python)
        print(f"baseline quiet: {baseline:.1f} s")
    quiet = _timed_main(make_project(args.work / "quiet"), config)
    print(f"quiet: {quiet:.1f} s" + (f"; {quiet / baseline:.2f}x the baseline's" if args.baseline_python else ""))
    busy = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(args.busy)]
    try:
        loaded = _timed_main(make_project(args.work / "loaded"), config)
        print(f"with {args.busy} busy processes: {loaded:.1f} s; ratio {loaded / quiet:.2f} (target <= 2.5)")
        if args.baseline_python and args.baseline_loaded:
            old = _timed_main(make_project(args.work / "baseline-loaded"), config, args.baseline_python)
            print(f"baseline with {args.busy} busy processes: {old:.1f} s; ratio {old / baseline:.2f}")
    finally:
        for process in busy:
            process.kill()
            process.wait()
    return 0 if loaded / quiet <= 2.5 else 1


if __name__ == "__main__":
    sys.exit(main())
