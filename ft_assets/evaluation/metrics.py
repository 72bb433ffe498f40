"""Scores of model answers against gold answers. Pure Python, no dagster, no torch."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

_FIELD = re.compile(r"^\s*([A-Za-z][\w ]{0,40}?)\s*:\s*(.*?)\s*$")


def parse_fields(text: str) -> dict[str, str]:
    """Return the ``Key: value`` lines of an answer as {lower-case key: value}; the first of a key wins."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        match = _FIELD.match(line)
        if match:
            fields.setdefault(match.group(1).strip().lower(), match.group(2))
    return fields


def normalize_answer(text: str) -> str:
    """Return an answer with outer whitespace trimmed and line endings unified (exact match compares these)."""
    return "\n".join(line.rstrip() for line in text.replace("\r\n", "\n").strip().split("\n"))


def percentile(values: Sequence[float], q: float) -> float:
    """Return the ``q``-th percentile (0-100) with linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass
class AnswerScores:
    """Exact match and per-field accuracy of a list of answers."""

    n: int
    exact_match: float
    field_accuracy: dict[str, float] = field(default_factory=dict)


def score_answers(predictions: Sequence[str], golds: Sequence[str]) -> AnswerScores:
    """Score predictions against golds: exact match, and accuracy per field the gold answers carry."""
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions for {len(golds)} gold answers")
    if not golds:
        return AnswerScores(0, math.nan)
    exact = sum(normalize_answer(p) == normalize_answer(g) for p, g in zip(predictions, golds, strict=True))
    hits: dict[str, int] = {}
    seen: dict[str, int] = {}
    for prediction, gold in zip(predictions, golds, strict=True):
        predicted = parse_fields(prediction)
        for key, value in parse_fields(gold).items():
            seen[key] = seen.get(key, 0) + 1
            hits[key] = hits.get(key, 0) + (predicted.get(key, "").strip().lower() == value.strip().lower())
    accuracy = {key: hits[key] / count for key, count in sorted(seen.items())}
    return AnswerScores(len(golds), exact / len(golds), accuracy)
