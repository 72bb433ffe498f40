"""Parallel write phase: the scan's per-chunk, per-output parts go to their place in the outputs.

Once duplicates are known, the byte offset of every chunk's share of every output follows
from the row sizes, so each worker writes its chunk at that offset: every run of consecutive
surviving rows of a part is copied in the kernel (``copy_file_range``), without passing through
the worker's memory. Outputs are byte-identical however chunks are scheduled.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class RouteTask:
    """One chunk: its part file per output, which rows of each part survive, and where they go."""

    parts: tuple[str, ...]
    keep: tuple[np.ndarray, ...]
    sizes: tuple[np.ndarray, ...]
    outputs: tuple[str, ...]
    offsets: tuple[int, ...]


def _copy_range(source: int, target: int, count: int, source_offset: int, target_offset: int) -> None:
    copied = 0
    while copied < count:
        step = os.copy_file_range(source, target, count - copied, source_offset + copied, target_offset + copied)
        if step == 0:
            raise OSError(f"copy stopped {count - copied} bytes short")
        copied += step


def kept_runs(keep: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (byte offset, byte length) in the part of each run of consecutive kept rows."""
    ends = np.cumsum(sizes)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], keep.view(np.int8), [0]])))
    first, last = edges[0::2], edges[1::2] - 1
    starts = ends[first] - sizes[first]
    return starts, ends[last] - starts


def route_chunk(task: RouteTask) -> None:
    """Write one chunk's surviving rows into every output at the planned offsets."""
    for part, keep, sizes, output, offset in zip(
        task.parts, task.keep, task.sizes, task.outputs, task.offsets, strict=True
    ):
        if not keep.any():
            continue
        starts, lengths = kept_runs(keep, sizes)
        targets = offset + np.cumsum(lengths) - lengths
        source = os.open(part, os.O_RDONLY)
        try:
            target = os.open(output, os.O_WRONLY)
            try:
                for start, length, at in zip(starts.tolist(), lengths.tolist(), targets.tolist(), strict=True):
                    _copy_range(source, target, length, start, at)
            finally:
                os.close(target)
        finally:
            os.close(source)


def plan_routes(
    parts: list[list[Path]],
    rows_per_chunk: list[int],
    keep: np.ndarray,
    targets: np.ndarray,
    sizes: np.ndarray,
    outputs: list[Path],
) -> list[RouteTask]:
    """Return one task per chunk and create the outputs at their final sizes.

    ``keep``, ``targets`` (output index) and ``sizes`` (bytes with newline) are per scanned row.
    """
    tasks = []
    position = np.zeros(len(outputs), dtype=np.int64)
    start = 0
    for chunk_parts, rows in zip(parts, rows_per_chunk, strict=True):
        chunk = slice(start, start + rows)
        start += rows
        masks = [targets[chunk] == output for output in range(len(outputs))]
        keeps = tuple(keep[chunk][mask] for mask in masks)
        part_sizes = tuple(sizes[chunk][mask] for mask in masks)
        tasks.append(
            RouteTask(
                tuple(str(p) for p in chunk_parts),
                keeps,
                part_sizes,
                tuple(str(o) for o in outputs),
                tuple(position.tolist()),
            )
        )
        position += [int(s[k].sum()) for s, k in zip(part_sizes, keeps, strict=True)]
    for output, total in zip(outputs, position.tolist(), strict=True):
        with open(output, "wb") as handle:
            handle.truncate(total)
    return tasks
