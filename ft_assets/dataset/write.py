"""Write stage: each chunk's surviving rows go to their place in the outputs, in parallel.

Once duplicates and splits are known, the byte offset of every chunk's share of every output
follows from the row sizes, so each worker writes its chunk at that offset: it reads the
chunk's kept rows once, gathers each output's rows into one buffer (input order) and writes
that buffer with one seek and write per output. Only portable calls: outputs are
byte-identical however chunks are scheduled and on every platform.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np


@dataclass(frozen=True)
class WriteTask:
    """One chunk: its kept rows' file and sizes, which rows go to each output, and from which offset."""

    part: str
    sizes: np.ndarray
    keep: tuple[np.ndarray, ...]
    outputs: tuple[str, ...]
    offsets: tuple[int, ...]


def read_at(handle: BinaryIO, length: int, offset: int) -> bytes:
    """Return ``length`` bytes of an unbuffered binary file from ``offset`` (``pread`` where there is one)."""
    if hasattr(os, "pread"):
        return os.pread(handle.fileno(), length, offset)
    handle.seek(offset)
    return handle.read(length)


def kept_runs(keep: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (byte offset, byte length) in the part of each run of consecutive kept rows."""
    ends = np.cumsum(sizes)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], keep.view(np.int8), [0]])))
    first, last = edges[0::2], edges[1::2] - 1
    starts = ends[first] - sizes[first]
    return starts, ends[last] - starts


def write_chunk(task: WriteTask) -> None:
    """Write one chunk's surviving rows into every output at the planned offsets.

    The chunk's kept rows (about a chunk's bytes) are read once; each output gets its rows
    gathered into one buffer and written with one seek and write, however scattered they are.
    """
    if not any(keep.any() for keep in task.keep):
        return
    with open(task.part, "rb") as source:
        data = memoryview(source.read())
    if len(data) < int(task.sizes.sum()):
        raise OSError(f"{task.part} is {int(task.sizes.sum()) - len(data)} bytes short of its rows")
    for keep, output, offset in zip(task.keep, task.outputs, task.offsets, strict=True):
        if not keep.any():
            continue
        starts, lengths = kept_runs(keep, task.sizes)
        ends = starts + lengths
        rows = b"".join([data[start:end] for start, end in zip(starts.tolist(), ends.tolist(), strict=True)])
        with open(output, "r+b") as target:
            target.seek(offset)
            target.write(rows)


def plan_writes(
    parts: list[Path],
    rows_per_chunk: list[int],
    keep: np.ndarray,
    targets: np.ndarray,
    sizes: np.ndarray,
    outputs: list[Path],
) -> list[WriteTask]:
    """Return one task per chunk and create the outputs at their final sizes.

    ``keep``, ``targets`` (output index) and ``sizes`` (bytes with newline) are per scanned row.
    """
    tasks = []
    position = np.zeros(len(outputs), dtype=np.int64)
    start = 0
    for part, rows in zip(parts, rows_per_chunk, strict=True):
        chunk = slice(start, start + rows)
        start += rows
        keeps = tuple(keep[chunk] & (targets[chunk] == output) for output in range(len(outputs)))
        tasks.append(
            WriteTask(str(part), sizes[chunk], keeps, tuple(str(o) for o in outputs), tuple(position.tolist()))
        )
        position += [int(sizes[chunk][k].sum()) for k in keeps]
    for output, total in zip(outputs, position.tolist(), strict=True):
        with open(output, "wb") as handle:
            handle.truncate(total)
    return tasks
