"""Write stage: each chunk's surviving rows go to their place in the outputs, in parallel.

Once duplicates and splits are known, the byte offset of every chunk's share of every output
follows from the row sizes, so each worker writes its chunk at that offset: every run of
consecutive surviving rows is copied in the kernel with ``copy_file_range`` where the system
has it (Linux), and read and written in blocks elsewhere. Outputs are byte-identical however
chunks are scheduled and whichever copy is used.
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


COPY_BLOCK = 1 << 20


def read_at(handle: BinaryIO, length: int, offset: int) -> bytes:
    """Return ``length`` bytes of an unbuffered binary file from ``offset`` (``pread`` where there is one)."""
    if hasattr(os, "pread"):
        return os.pread(handle.fileno(), length, offset)
    handle.seek(offset)
    return handle.read(length)


def _copy_range(source: BinaryIO, target: BinaryIO, count: int, source_offset: int, target_offset: int) -> None:
    """Copy ``count`` bytes between open files at the given offsets."""
    copied = 0
    kernel_copy = getattr(os, "copy_file_range", None)
    while copied < count:
        if kernel_copy is not None:
            try:
                step = kernel_copy(
                    source.fileno(), target.fileno(), count - copied, source_offset + copied, target_offset + copied
                )
            except OSError:  # not allowed here (seccomp, some FUSE/overlay file systems): copy in blocks
                kernel_copy = None
                continue
        else:
            block = read_at(source, min(COPY_BLOCK, count - copied), source_offset + copied)
            target.seek(target_offset + copied)
            step = target.write(block)
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


def write_chunk(task: WriteTask) -> None:
    """Write one chunk's surviving rows into every output at the planned offsets."""
    with open(task.part, "rb", buffering=0) as source:
        for keep, output, offset in zip(task.keep, task.outputs, task.offsets, strict=True):
            if not keep.any():
                continue
            starts, lengths = kept_runs(keep, task.sizes)
            targets = offset + np.cumsum(lengths) - lengths
            with open(output, "r+b", buffering=0) as target:
                for start, length, at in zip(starts.tolist(), lengths.tolist(), targets.tolist(), strict=True):
                    _copy_range(source, target, length, start, at)


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
