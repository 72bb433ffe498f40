"""Assemble output files from the scan's per-chunk parts, in input order, leaving duplicates out.

A part whose rows are all kept is copied in the kernel (``copy_file_range``); only the rare
part holding a duplicate is filtered in memory.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np


def _copy_whole(source: Path, out: int) -> None:
    with open(source, "rb") as handle:
        remaining = os.fstat(handle.fileno()).st_size
        try:
            while remaining:
                copied = os.copy_file_range(handle.fileno(), out, remaining)
                if copied == 0:
                    break
                remaining -= copied
        except OSError:
            handle.seek(os.fstat(handle.fileno()).st_size - remaining)
            with os.fdopen(os.dup(out), "wb", closefd=True) as target:
                shutil.copyfileobj(handle, target, 1 << 20)
            remaining = 0
        if remaining:
            raise OSError(f"copy of {source} stopped {remaining} bytes short")


def assemble(
    outputs: list[Path],
    parts: list[list[Path]],
    rows_per_chunk: list[int],
    keep: np.ndarray,
    targets: np.ndarray,
    sizes: np.ndarray,
) -> None:
    """Write ``outputs[t]`` as the concatenation of every chunk's part ``t``, minus rows not kept.

    ``keep``, ``targets`` and ``sizes`` (bytes with newline) are per scanned row, chunk after chunk.
    """
    descriptors = [os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644) for path in outputs]
    try:
        start = 0
        for chunk_parts, rows in zip(parts, rows_per_chunk, strict=True):
            chunk = slice(start, start + rows)
            start += rows
            for target, (part, descriptor) in enumerate(zip(chunk_parts, descriptors, strict=True)):
                mine = targets[chunk] == target
                if keep[chunk][mine].all():
                    _copy_whole(part, descriptor)
                    continue
                data = np.frombuffer(part.read_bytes(), dtype=np.uint8)
                byte_kept = np.repeat(keep[chunk][mine], sizes[chunk][mine])
                os.write(descriptor, data[byte_kept].tobytes())
    finally:
        for descriptor in descriptors:
            os.close(descriptor)
