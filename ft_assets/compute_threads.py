"""Thread pools sized to the CPUs a process can actually get, waiting without spinning.

On a shared laptop, OpenMP threads that busy-wait (libgomp's default spins for a while before
sleeping) and pools sized to every CPU of the machine (rather than the affinity mask or the
container's quota) turn a fair share of the CPU into a crawl. ``configure()`` sets the standard
variables before torch, OpenMP or the tokenizers library load, and resizes torch's pool when
torch is already loaded. Values the user set are kept. No heavy import here.

How idle threads wait is chosen when the process starts (benchmarks/under_load.py and
benchmarks/lora_throughput.py measure it): when other tasks already want the CPUs, they sleep at
once (``OMP_WAIT_POLICY=PASSIVE``: a spinning thread would take the CPU its partner needs); on
free CPUs they spin briefly first (``GOMP_SPINCOUNT``), which is as fast as libgomp's default
there (sleeping at once costs about a fifth of the training speed) and a third of its slowdown
when load arrives later.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
LOADAVG = Path("/proc/loadavg")
SPIN_COUNT = "10000"  # spins of an idle OpenMP thread before it sleeps, when the CPUs were free at start


def _quota_cores() -> int | None:
    """Return the CPUs a cgroup v2 quota allows (rounded up), or None without one."""
    try:
        quota, period = CGROUP_CPU_MAX.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return max(1, math.ceil(int(quota) / int(period)))


def available_cores() -> int:
    """Return the CPUs this process may run on: its affinity mask and its cgroup quota, else the CPU count."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _quota_cores()
    return min(cores, quota) if quota else cores


def others_runnable() -> float:
    """Return how many other tasks want a CPU now (Linux: runnable tasks, median of 5 looks), else the 1-min load."""
    try:
        samples = []
        for _ in range(5):
            samples.append(int(LOADAVG.read_text().split()[3].split("/")[0]))
            time.sleep(0.01)
        return sorted(samples)[2] - 1  # less this process
    except (OSError, ValueError, IndexError):
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0


def configure() -> int:
    """Size compute thread pools to ``available_cores()`` (or the user's OMP_NUM_THREADS); choose how idle threads wait.

    Returns the pool size.
    """
    given = os.environ.get("OMP_NUM_THREADS", "").split(",")[0]  # OpenMP allows a list for nested levels
    threads = given if given.isdigit() and int(given) > 0 else str(available_cores())
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        if others_runnable() >= int(threads):
            os.environ["OMP_WAIT_POLICY"] = "PASSIVE"  # the CPUs are taken: idle threads sleep at once
        else:
            os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT  # free CPUs: spin briefly, then sleep
    for name, value in (
        ("OMP_NUM_THREADS", threads),  # kept as the user wrote it
        ("MKL_NUM_THREADS", threads),  # torch sizes its pool from this one too
        ("OPENBLAS_NUM_THREADS", threads),
        ("RAYON_NUM_THREADS", threads),  # the tokenizers library's pool
    ):
        os.environ.setdefault(name, value)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(int(threads))
    return int(threads)
