"""Keep freed heap memory for reuse instead of handing it back to the kernel at once.

Data preparation allocates and frees buffers of several MB per chunk. By default glibc serves
those with fresh mmaps and trims the heap after each free, so every chunk faults its pages in
again; on virtual machines a page fault costs microseconds. Raising the mmap and trim
thresholds (what MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_ would do at start-up) lets
the same pages serve every chunk. Peak memory is unchanged; memory is returned at exit.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
KEEP_BYTES = 256 * 1024 * 1024


def keep_freed_memory() -> bool:
    """Tune glibc's malloc for buffer reuse; return False where it is not glibc (nothing done)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return all(
        mallopt(option, value) == 1
        for option, value in ((M_MMAP_THRESHOLD, KEEP_BYTES), (M_TRIM_THRESHOLD, 4 * KEEP_BYTES), (M_TOP_PAD, KEEP_BYTES))
    )
