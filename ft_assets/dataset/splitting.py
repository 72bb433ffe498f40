"""Which split each example goes to: a seeded hash of its group, cut at the ratios.

Every row of a group lands in the same split, the assignment of a group never depends on any
other row (so it can be decided while scanning, and adding data never moves an existing
example to another split), and split sizes follow the ratios up to sampling noise (about
the square root of the number of groups).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xxhash

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class SplitConfig:
    """How kept examples are divided: ratios for train/validation/test and the seed."""

    seed: int = 0
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)

    def __post_init__(self) -> None:
        if len(self.ratios) != 3 or any(r < 0 for r in self.ratios) or abs(sum(self.ratios) - 1) > 1e-6:
            raise ValueError(f"ratios must be three non-negative numbers summing to 1, got {self.ratios}")


def _mix64(values: np.ndarray) -> np.ndarray:
    """SplitMix64 finalizer: a fixed, platform-independent scramble of 64-bit values."""
    with np.errstate(over="ignore"):
        x = values.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def assign_splits(group_hash: np.ndarray, config: SplitConfig) -> np.ndarray:
    """Return 0/1/2 (train/validation/test) for each row's group hash."""
    seed_key = np.uint64(xxhash.xxh3_64_intdigest(str(config.seed).encode()))
    position = (_mix64(group_hash.astype(np.uint64) ^ seed_key) >> np.uint64(11)).astype(np.float64) / 2.0**53
    bounds = np.cumsum(config.ratios)[:2]
    return np.searchsorted(bounds, position, side="right").astype(np.uint8)
