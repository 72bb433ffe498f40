"""Crash check, run by hand: kill -9 the main job at many moments; nothing half-done may stay, and reruns agree.

For each kill point a fresh project runs ``dagster job execute -j main`` (tiny model) and the run
process gets SIGKILL: at chosen moments (splits being written, splits being published, training)
and at random times over a whole run. After each kill: no published folder whose content does not
hash to its name, no visible stray entry, no trainer left running. Then one rerun in the same
project must give exactly the versions of an undisturbed reference run, and leave no hidden
staging or scratch entry behind.

Usage: ``python benchmarks/kill_anywhere.py [--random 6] [--seed 0] [--work /tmp/kill_anywhere]``
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ft_assets_tests.project_runs import (
    TINY_CONFIG,
    finish,
    hidden_leftovers,
    kill_when,
    make_project,
    published_folders,
    run_versions,
    runs,
    start_job,
    trainers_gone,
)


def _versions(project: Path) -> dict[str, str]:
    return {asset: v["version"] for asset, v in run_versions(project, runs(project)[-1].run_id).items()}


def _moments(artifacts: Path) -> dict[str, Callable[[], bool]]:
    def any_in(folder: Path, pattern: str) -> Callable[[], bool]:
        return lambda: folder.is_dir() and any(folder.glob(pattern))

    return {
        "splitting": any_in(artifacts, ".scratch-*"),
        "publishing splits": any_in(artifacts / "test_split", ".staging-*"),
        "training": any_in(artifacts / "lora_adapter", ".scratch-*/job.json"),
        "merging": any_in(artifacts / "merged_model", ".staging-*"),
        "evaluating": any_in(artifacts / "evaluation_table", ".staging-*"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--random", type=int, default=6, help="kills at random times (besides the chosen moments)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/kill_anywhere"))
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    reference = make_project(args.work / "reference")
    started = time.monotonic()
    if finish(job := start_job(reference, "main", TINY_CONFIG)) != 0:
        print(job.output())
        return 1
    duration = time.monotonic() - started
    expected = _versions(reference)
    print(f"reference run: {duration:.1f} s, {len(expected)} assets")
    rng = random.Random(args.seed)
    points: list[tuple[str, Callable[[Path], Callable[[], bool]]]] = [
        (name, lambda artifacts, name=name: _moments(artifacts)[name]) for name in _moments(Path())
    ]
    for _ in range(args.random):
        at = rng.uniform(0.05, 0.95) * duration
        points.append((f"at {at:.1f} s", lambda _artifacts, at=at: _after(at)))
    failures = 0
    print(f"{'kill point':<20} {'killed':>6} {'trainer gone':>12} {'corrupt':>7} {'stray':>5} {'rerun same':>10} "
          f"{'leftovers':>9}")  # fmt: skip
    for index, (name, moment) in enumerate(points):
        project = make_project(args.work / f"kill-{index}")
        artifacts = project / "data" / "artifacts"
        job = start_job(project, "main", TINY_CONFIG)
        killed = kill_when(job, moment(artifacts))
        gone = trainers_gone(project)
        corrupt, stray = published_folders(artifacts) if artifacts.exists() else ([], [])
        rerun = start_job(project, "main", TINY_CONFIG)
        same = finish(rerun) == 0 and _versions(project) == expected
        left = hidden_leftovers(artifacts)
        ok = gone and not corrupt and not stray and same and not left
        failures += not ok
        print(f"{name:<20} {killed!s:>6} {gone!s:>12} {len(corrupt):>7} {len(stray):>5} {same!s:>10} {len(left):>9}")
    print(f"{len(points) - failures}/{len(points)} kill points left nothing half-done and reran to the same versions")
    return 1 if failures else 0


def _after(seconds: float) -> Callable[[], bool]:
    """Return a condition that holds ``seconds`` after it is first asked."""
    begun: list[float] = []

    def ready() -> bool:
        if not begun:
            begun.append(time.monotonic())
        return time.monotonic() - begun[0] >= seconds

    return ready


if __name__ == "__main__":
    sys.exit(main())
