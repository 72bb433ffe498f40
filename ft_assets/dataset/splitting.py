"""Split stage: which split each group of examples goes to.

Sizes follow the ratios as exactly as groups allow: the target row count of each split is
the largest-remainder rounding of ratio x rows, groups are put in a seeded order (a hash of
each group's key, so the order never depends on input order) and cut where their running row
count passes the targets. With at least three groups, validation and test each get at least
one (when their ratio is not 0). A user's own assignment is kept: rows whose ``split`` field
or file says where they belong stay there, and pull the rest of their group with them; the
targets of the other rows are what remains of each split's share.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import xxhash

from ft_assets.dataset.read import NO_SPLIT

SPLITS = ("train", "validation", "test")


class SplitError(Exception):
    """The examples cannot be split as configured; the message says what is needed."""


@dataclass(frozen=True)
class SplitConfig:
    """How kept examples are divided: ratios for train/validation/test, the seed, the smallest dataset."""

    seed: int = 0
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    min_examples: int = 10

    def __post_init__(self) -> None:
        finite = all(math.isfinite(r) and r >= 0 for r in self.ratios)
        if len(self.ratios) != 3 or not finite or abs(sum(self.ratios) - 1) > 1e-6:
            raise ValueError(f"ratios must be three non-negative numbers summing to 1, got {self.ratios}")
        if self.ratios[0] == 0:
            raise ValueError(
                f"the train ratio must be above 0: a model cannot be fine-tuned on no rows, got {self.ratios}"
            )
        if self.min_examples < 1:
            raise ValueError(f"min_examples must be at least 1, got {self.min_examples}")


def mix64(values: np.ndarray) -> np.ndarray:
    """SplitMix64 finalizer: a fixed, platform-independent scramble of 64-bit values."""
    with np.errstate(over="ignore"):
        x = values.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def target_sizes(rows: int, ratios: tuple[float, float, float]) -> np.ndarray:
    """Return the rows each split should get: ratio x rows rounded by largest remainder."""
    exact = np.asarray(ratios, dtype=np.float64) * rows
    sizes = np.floor(exact).astype(np.int64)
    remainder = exact - sizes
    order = np.argsort(-remainder, kind="stable")  # ties go to train, then validation, then test
    sizes[order[: rows - int(sizes.sum())]] += 1
    return sizes


def require_examples(rows: int, config: SplitConfig, detail: str = "") -> None:
    """Raise ``SplitError``, saying how many more are needed, when ``rows`` examples are too few to split.

    ``detail`` (what was read and why rows were rejected) ends the message.
    """
    if rows < config.min_examples:
        raise SplitError(
            f"{rows} examples after cleaning; splitting needs at least {config.min_examples} "
            f"({config.min_examples - rows} more), or lower min_examples (ft-assets prep: --min-examples)"
            + (f". {detail}" if detail else "")
        )


def assign_splits(
    group_of_row: np.ndarray, group_key: np.ndarray, user_split: np.ndarray, config: SplitConfig
) -> tuple[np.ndarray, int]:
    """Return 0/1/2 (train/validation/test) for each row, and how many groups had rows pinned to different splits.

    ``group_of_row`` numbers each row's group (0..groups-1), ``group_key`` is a stable 64-bit key
    per group (orders groups for the seed), ``user_split`` a row's own split or ``NO_SPLIT``. A
    group whose rows are pinned to different splits goes to the first of them (train before
    validation before test), so it still never straddles two splits.
    """
    rows = len(group_of_row)
    require_examples(rows, config)
    groups = len(group_key)
    sizes = np.bincount(group_of_row, minlength=groups)
    anchored = user_split != NO_SPLIT
    anchor = np.full(groups, NO_SPLIT, dtype=np.int64)
    np.minimum.at(anchor, group_of_row[anchored], user_split[anchored].astype(np.int64))
    last_anchor = np.full(groups, -1, dtype=np.int64)
    np.maximum.at(last_anchor, group_of_row[anchored], user_split[anchored].astype(np.int64))
    target = np.full(groups, -1, dtype=np.int64)
    fixed = anchor != NO_SPLIT
    target[fixed] = anchor[fixed]
    conflicts = int(np.count_nonzero(fixed & (anchor != last_anchor)))
    taken = np.bincount(target[fixed], weights=sizes[fixed], minlength=3).astype(np.int64)
    free = np.flatnonzero(~fixed)
    # The free rows make up what the pinned ones leave of each split's share, in proportion.
    deficit = np.maximum(target_sizes(rows, config.ratios) - taken, 0)
    shares = tuple(deficit / deficit.sum()) if deficit.sum() else config.ratios
    wanted = target_sizes(int(sizes[free].sum()), shares)  # type: ignore[arg-type]
    seed_key = np.uint64(xxhash.xxh3_64_intdigest(str(config.seed).encode()))
    free = free[np.argsort(mix64(group_key[free] ^ seed_key), kind="stable")]
    middle = np.cumsum(sizes[free]) - sizes[free] / 2
    target[free] = np.searchsorted(np.cumsum(wanted)[:2], middle, side="right")
    if groups >= 3:
        _give_each_split_a_group(target, free, sizes, config.ratios)
    if not (target == 0).any():
        why = (
            "every example is pinned to validation or test (by its split field or its file or folder name)"
            if fixed.all()
            else f"the train ratio {config.ratios[0]:g} gives it none of the {groups} groups of examples"
        )
        raise SplitError(f"the train split would be empty: {why}; a model cannot be fine-tuned on no rows")
    return target[group_of_row].astype(np.uint8), conflicts


def _give_each_split_a_group(
    target: np.ndarray, free: np.ndarray, sizes: np.ndarray, ratios: tuple[float, float, float]
) -> None:
    """Move the smallest free group of the split with most groups into an empty split whose ratio is not 0."""
    for split in (0, 1, 2):
        if ratios[split] == 0 or (target == split).any():
            continue
        counts = np.bincount(target[free], minlength=3)
        donor = int(np.argmax(counts))
        if counts[donor] < 2:
            continue
        candidates = free[target[free] == donor]
        target[candidates[np.argmin(sizes[candidates])]] = split
