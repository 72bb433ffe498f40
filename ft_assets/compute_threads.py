"""Thread pools sized to the CPUs a process can actually get, waiting without spinning.

On a shared laptop, OpenMP threads that busy-wait (libgomp's default spins for a while before
sleeping) and pools sized to every CPU of the machine (rather than the affinity mask or the
container's quota) turn a fair share of the CPU into a crawl. ``configure()`` sets the standard
variables before torch, OpenMP or the tokenizers library load, and resizes torch's pool when
torch is already loaded. Values the user set are kept. No heavy import here.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


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


def configure() -> int:
    """Size compute thread pools to ``available_cores()`` (or the user's OMP_NUM_THREADS) and make idle threads sleep.

    Returns the pool size.
    """
    given = os.environ.get("OMP_NUM_THREADS", "").split(",")[0]  # OpenMP allows a list for nested levels
    threads = given if given.isdigit() and int(given) > 0 else str(available_cores())
    for name, value in (
        ("OMP_WAIT_POLICY", "PASSIVE"),  # idle OpenMP threads sleep instead of spinning
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
