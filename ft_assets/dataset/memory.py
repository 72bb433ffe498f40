"""The environment worker processes start with, so they reuse freed memory instead of faulting it in.

Data preparation allocates and frees buffers of several MB per chunk. By default glibc serves
them with fresh mmaps and trims the heap after each free, and Python's small-object arenas are
unmapped when they empty, so each chunk faults its pages in again; on virtual machines a page
fault costs microseconds. Worker processes therefore use the system allocator for Python
objects with raised mmap and trim thresholds: the same pages serve every chunk. Peak memory is
unchanged. Workers forked without a fresh interpreter read no environment: they raise the
glibc thresholds with ``mallopt`` when they start instead (Python objects keep their own
allocator there, so the scan avoids holding many small ones at once).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

KEEP_BYTES = str(256 * 1024 * 1024)
WORKER_ENVIRONMENT = {
    "PYTHONMALLOC": "malloc",
    "MALLOC_MMAP_THRESHOLD_": KEEP_BYTES,
    "MALLOC_TRIM_THRESHOLD_": KEEP_BYTES,
    "MALLOC_TOP_PAD_": KEEP_BYTES,
}
# mallopt() parameters of glibc's malloc.h, in the order of the environment variables above.
_M_MMAP_THRESHOLD, _M_TRIM_THRESHOLD, _M_TOP_PAD = -3, -1, -2


def _mallopt() -> Any:
    """Return glibc's ``mallopt``, or None where the C library has none (macOS, Windows, musl)."""
    try:
        return getattr(ctypes.CDLL(None), "mallopt", None)
    except (OSError, TypeError):  # Windows cannot open the running program as a library
        return None


def keep_freed_memory(limit: int = int(KEEP_BYTES)) -> None:
    """Set this process's glibc mmap, trim and top-pad thresholds to ``limit``, as ``WORKER_ENVIRONMENT`` does.

    Blocks below ``limit`` then come from the heap, which keeps up to ``limit`` freed bytes for
    reuse. Does nothing where the C library has no ``mallopt`` (not glibc).
    """
    mallopt = _mallopt()
    if mallopt is None:
        return
    for option in (_M_MMAP_THRESHOLD, _M_TRIM_THRESHOLD, _M_TOP_PAD):
        mallopt(option, limit)


@contextmanager
def worker_environment() -> Iterator[None]:
    """Set ``WORKER_ENVIRONMENT`` while worker processes are started, then restore the old values."""
    saved = {name: os.environ.get(name) for name in WORKER_ENVIRONMENT}
    os.environ.update(WORKER_ENVIRONMENT)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
