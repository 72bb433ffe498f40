"""Parallel write phase: kept rows go from the scan's scratch files straight into the output files.

Once duplicates and split targets are known, the byte offset of every chunk's share of every
output file follows from the row sizes, so each worker writes its chunk with ``pwrite`` at
that offset: no process copies the whole dataset, and the outputs are byte-identical however
the chunks were scheduled.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class RouteTask:
    """One chunk's kept rows, which of them survive, where each goes, and at which offsets."""

    kept_path: str
    sizes: np.ndarray
    keep: np.ndarray
    targets: np.ndarray
    outputs: tuple[str, ...]
    offsets: tuple[int, ...]


def route_chunk(task: RouteTask) -> None:
    """Write the surviving rows of one chunk into their outputs at the planned offsets."""
    data = np.frombuffer(Path(task.kept_path).read_bytes(), dtype=np.uint8)
    sizes = task.sizes
    if int(sizes.sum()) != len(data):
        raise RuntimeError(f"{task.kept_path}: {len(data)} bytes, index says {int(sizes.sum())}")
    byte_target = np.repeat(np.where(task.keep, task.targets, 255).astype(np.uint8), sizes)
    for output, (path, offset) in enumerate(zip(task.outputs, task.offsets, strict=True)):
        selected = data[byte_target == output]
        if not len(selected):
            continue
        descriptor = os.open(path, os.O_WRONLY)
        try:
            os.pwrite(descriptor, selected, offset)
        finally:
            os.close(descriptor)


def plan_routes(
    kept_paths: list[str],
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
    for path, rows in zip(kept_paths, rows_per_chunk, strict=True):
        chunk = slice(start, start + rows)
        start += rows
        tasks.append(
            RouteTask(path, sizes[chunk], keep[chunk], targets[chunk], tuple(str(o) for o in outputs), tuple(position.tolist()))
        )
        for output in range(len(outputs)):
            position[output] += int(sizes[chunk][keep[chunk] & (targets[chunk] == output)].sum())
    for output, total in zip(outputs, position.tolist(), strict=True):
        with open(output, "wb") as handle:
            handle.truncate(total)
    return tasks
