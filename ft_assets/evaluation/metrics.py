"""Scores of model answers against gold answers. Pure Python (numpy, rouge-score, sacrebleu); no dagster, no torch.

The flow: :func:`detect_task` picks ``labels``, ``json`` or ``free_text`` from the gold answers,
:func:`score_examples` gives per-example scores in [0, 1] by metric name (NaN where a metric does not apply
to an example), :func:`summarize` averages them ignoring NaN, :func:`bootstrap_ci` puts an interval on a
mean and :func:`paired_test` compares two models on the same examples.
"""

from __future__ import annotations

import functools
import json
import math
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict

import numpy as np

_FIELD = re.compile(r"^\s*([A-Za-z][\w ]{0,40}?)\s*:\s*(.*?)\s*$")

TASKS = ("labels", "json", "free_text")
MAIN_METRIC = {"labels": "exact_match", "json": "key_accuracy", "free_text": "rouge_l"}
SHORT_WORDS = 4  # an answer of at most this many words is "short"
REPEAT_RATIO = 0.5  # values "repeat" when distinct values / answers is at most this
FEW_TEST_EXAMPLES = 30  # below this, a bootstrap interval understates the spread and a user is told so
_MISSING = object()


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


def perplexity(loss: float) -> float:
    """Return exp(loss), infinite where the loss is unknown or too large to exponentiate."""
    return math.exp(loss) if math.isfinite(loss) and loss < 700 else math.inf


def percentile(values: Sequence[float], q: float) -> float:
    """Return the ``q``-th percentile (0-100) with linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


# --- task detection -------------------------------------------------------------------------------------------


def _load_json(text: str) -> tuple[bool, Any]:
    """Return (parsed, value) of a text read as JSON."""
    try:
        return True, json.loads(text)
    except ValueError:
        return False, None


def _is_json_container(text: str) -> bool:
    ok, value = _load_json(text)
    return ok and isinstance(value, dict | list)


def _is_structured(text: str) -> bool:
    """Whether every non-empty line of an answer is a ``Key: value`` line (and there is one)."""
    lines = [line for line in text.splitlines() if line.strip()]
    return bool(lines) and all(_FIELD.match(line) for line in lines)


def _norm_value(text: str) -> str:
    return " ".join(text.split()).casefold()


def shared_fields(golds: Sequence[str]) -> list[str]:
    """Return the fields that more than half of the gold answers carry, sorted."""
    counts: dict[str, int] = {}
    for gold in golds:
        for key in parse_fields(gold):
            counts[key] = counts.get(key, 0) + 1
    return sorted(key for key, count in counts.items() if count > len(golds) / 2)


def _repeating_field(golds: Sequence[str], fields: Sequence[str]) -> tuple[str, int, int] | None:
    """Return (field, distinct values, answers with it) of the most repetitive shared field, if it repeats."""
    best: tuple[str, int, int] | None = None
    for key in fields:
        values = [parsed[key] for parsed in map(parse_fields, golds) if key in parsed]
        distinct = len({_norm_value(v) for v in values})
        if distinct <= REPEAT_RATIO * len(values) and (best is None or distinct / len(values) < best[1] / best[2]):
            best = (key, distinct, len(values))
    return best


def _detect_structured(golds: Sequence[str]) -> tuple[str, str] | None:
    n = len(golds)
    structured = sum(map(_is_structured, golds))
    fields = shared_fields(golds)
    if structured <= n / 2 or not fields:
        return None
    repeating = _repeating_field(golds, fields)
    if repeating is None:
        return None
    key, distinct, count = repeating
    return "labels", (
        f"{structured} of {n} gold answers are Key: value lines sharing {len(fields)} field(s); "
        f"field '{key}' repeats ({distinct} distinct values in {count} answers)."
    )


def detect_task(golds: Sequence[str], requested: str = "auto") -> tuple[str, str]:
    """Return (task, reason): the kind of answers the gold answers are, and a sentence with the numbers why.

    ``json`` when more than half parse as JSON objects or arrays; ``labels`` when more than half are
    ``Key: value`` lines with a field shared by more than half whose values repeat, or when more than half
    have at most ``SHORT_WORDS`` words and the whole answers repeat; ``free_text`` otherwise.
    "Repeat" means distinct (case- and space-folded) values / answers <= ``REPEAT_RATIO``.
    """
    if requested != "auto":
        if requested not in TASKS:
            raise ValueError(f"unknown task {requested!r}; expected auto or one of {', '.join(TASKS)}")
        return requested, "configured"
    n = len(golds)
    if n == 0:
        return "free_text", "No gold answers: nothing to detect, free_text by default."
    as_json = sum(map(_is_json_container, golds))
    if as_json > n / 2:
        return "json", f"{as_json} of {n} gold answers parse as JSON objects or arrays."
    structured = _detect_structured(golds)
    if structured:
        return structured
    short = sum(len(g.split()) <= SHORT_WORDS for g in golds)
    distinct = len({_norm_value(g) for g in golds})
    if short > n / 2 and distinct <= REPEAT_RATIO * n:
        return "labels", f"{short} of {n} gold answers have at most {SHORT_WORDS} words; {distinct} distinct answers."
    words = statistics.median(len(g.split()) for g in golds)
    return "free_text", (
        f"{as_json} of {n} gold answers are JSON, {sum(map(_is_structured, golds))} are Key: value lines, "
        f"{short} have at most {SHORT_WORDS} words; {distinct} distinct answers, median {words:g} word(s)."
    )


# --- per-example scores ---------------------------------------------------------------------------------------


def _field_scores(predictions: Sequence[str], golds: Sequence[str]) -> dict[str, list[float]]:
    """Return ``field_accuracy:<field>`` per example (1/0; NaN where the gold lacks it) for the shared fields."""
    fields = shared_fields(golds)
    scores: dict[str, list[float]] = {f"field_accuracy:{key}": [] for key in fields}
    for prediction, gold in zip(predictions, golds, strict=True):
        predicted, expected = parse_fields(prediction), parse_fields(gold)
        for key in fields:
            hit = _norm_value(predicted.get(key, "")) == _norm_value(expected[key]) if key in expected else math.nan
            scores[f"field_accuracy:{key}"].append(float(hit))
    return scores


def _same(a: Any, b: Any) -> bool:
    """JSON value equality where ``true`` is not ``1``."""
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def _get(container: Any, key: Any) -> Any:
    if isinstance(container, dict):
        return container.get(key, _MISSING)
    if isinstance(container, list) and isinstance(key, int) and key < len(container):
        return container[key]
    return _MISSING


def _keys(value: Any) -> set[Any]:
    """Top-level keys of an object, or indices of an array."""
    return set(value) if isinstance(value, dict) else set(range(len(value)))


def _json_example(prediction: str, gold: str) -> tuple[float, float, float]:
    """Return (valid_json, schema_match, key_accuracy); the last two NaN when the gold is no JSON object/array."""
    ok, predicted = _load_json(prediction.strip())
    gold_ok, expected = _load_json(gold.strip())
    if not (gold_ok and isinstance(expected, dict | list)):
        return float(ok), math.nan, math.nan
    same_kind = ok and isinstance(predicted, dict) == isinstance(expected, dict) and isinstance(predicted, dict | list)
    schema = float(same_kind and _keys(predicted) == _keys(expected))
    if not expected:
        return float(ok), schema, schema
    hits = sum(_same(_get(predicted, key), expected[key]) for key in _keys(expected)) if same_kind else 0
    return float(ok), schema, hits / len(expected)


def _json_scores(predictions: Sequence[str], golds: Sequence[str]) -> dict[str, list[float]]:
    rows = [_json_example(p, g) for p, g in zip(predictions, golds, strict=True)]
    names = ("valid_json", "schema_match", "key_accuracy")
    return {name: [row[i] for row in rows] for i, name in enumerate(names)}


@functools.cache
def _rouge() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


@functools.cache
def _chrf() -> Any:
    from sacrebleu.metrics import CHRF

    return CHRF()


def rouge_l(prediction: str, gold: str) -> float:
    """ROUGE-L F-measure; its tokenizer keeps only ASCII letters and digits, so identical answers count as 1."""
    if normalize_answer(prediction) == normalize_answer(gold):
        return 1.0
    return float(_rouge().score(gold, prediction)["rougeL"].fmeasure)


def chrf(prediction: str, gold: str) -> float:
    """Sentence chrF (sacrebleu defaults) scaled to [0, 1]; identical answers count as 1 (also when empty)."""
    if normalize_answer(prediction) == normalize_answer(gold):
        return 1.0
    return min(1.0, max(0.0, _chrf().sentence_score(prediction, [gold]).score / 100))


def _free_text_scores(predictions: Sequence[str], golds: Sequence[str]) -> dict[str, list[float]]:
    pairs = list(zip(predictions, golds, strict=True))
    return {"rouge_l": [rouge_l(p, g) for p, g in pairs], "chrf": [chrf(p, g) for p, g in pairs]}


def score_examples(predictions: Sequence[str], golds: Sequence[str], task: str) -> dict[str, list[float]]:
    """Return per-example scores in [0, 1] by metric name: ``exact_match`` plus the metrics of the task.

    labels: ``field_accuracy:<field>`` for fields more than half of the golds carry (NaN where a gold lacks
    it); json: ``valid_json``, ``schema_match``, ``key_accuracy``; free_text: ``rouge_l``, ``chrf``.
    ``task="auto"`` detects it from the golds.
    """
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions for {len(golds)} gold answers")
    task = detect_task(golds, task)[0]
    pairs = zip(predictions, golds, strict=True)
    scores = {"exact_match": [float(normalize_answer(p) == normalize_answer(g)) for p, g in pairs]}
    extra = {"labels": _field_scores, "json": _json_scores, "free_text": _free_text_scores}[task]
    return scores | extra(predictions, golds)


def _nanmean(values: Sequence[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def summarize(per_example: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """Return the mean of each metric over the examples where it is not NaN (NaN if it is NaN everywhere)."""
    return {name: _nanmean(values) for name, values in per_example.items()}


# --- uncertainty ----------------------------------------------------------------------------------------------


def _clean(values: Sequence[float]) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    return array[~np.isnan(array)]


def _bootstrap_means(values: np.ndarray, samples: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``samples`` resamples with replacement, drawn in chunks to bound memory."""
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    n = len(values)
    chunk = max(1, 2_000_000 // n)
    sizes = [min(chunk, samples - start) for start in range(0, samples, chunk)]
    return np.concatenate([values[rng.integers(0, n, size=(size, n))].mean(axis=1) for size in sizes])


def _interval(values: np.ndarray, samples: int, rng: np.random.Generator, level: float) -> tuple[float, float]:
    if len(values) == 0:
        return math.nan, math.nan
    if len(values) == 1:
        return float(values[0]), float(values[0])
    low, high = np.quantile(_bootstrap_means(values, samples, rng), [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def few_test_examples(n: int) -> str:
    """Say what ``n`` test examples, fewer than ``FEW_TEST_EXAMPLES``, mean for the intervals shown."""
    return (
        f"only {n} test examples: a bootstrap interval over so few understates the spread, so scores this close "
        "cannot tell models apart; give the test split more data"
    )


def bootstrap_ci(
    values: Sequence[float], *, samples: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Return the percentile-bootstrap ``level`` interval of the mean of ``values`` (NaN values dropped)."""
    return _interval(_clean(values), samples, np.random.default_rng(seed), level)


class PairedTest(TypedDict):
    """Result of :func:`paired_test`."""

    n: int
    difference: float
    ci_low: float
    ci_high: float
    p_value: float
    significant: bool


def _sign_flip_p(differences: np.ndarray, samples: int, rng: np.random.Generator) -> float:
    """Two-sided p of mean difference 0 by random sign flips, with the +1 correction."""
    observed = abs(differences.mean())
    signs = rng.choice(np.array([-1.0, 1.0]), size=(samples, len(differences)))
    flipped = np.abs((signs * differences).mean(axis=1))
    extreme = int(np.count_nonzero(flipped >= observed - 1e-12))
    return (extreme + 1) / (samples + 1)


def paired_test(a: Sequence[float], b: Sequence[float], *, samples: int = 2000, seed: int = 0) -> PairedTest:
    """Compare two models' per-example scores on the same examples (pairs with a NaN on either side dropped).

    ``difference`` is mean(a) - mean(b), ``ci_low``/``ci_high`` its 95% paired bootstrap interval, ``p_value``
    a two-sided paired sign-flip (approximate randomization) test, ``significant`` is ``p_value < 0.05``.
    """
    if len(a) != len(b):
        raise ValueError(f"{len(a)} scores against {len(b)}: a paired test needs the same examples")
    differences = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    differences = differences[~np.isnan(differences)]
    if len(differences) == 0:
        nan = math.nan
        return PairedTest(n=0, difference=nan, ci_low=nan, ci_high=nan, p_value=nan, significant=False)
    rng = np.random.default_rng(seed)
    low, high = _interval(differences, samples, rng, 0.95)
    p_value = _sign_flip_p(differences, samples, rng)
    return PairedTest(
        n=len(differences),
        difference=float(differences.mean()),
        ci_low=low,
        ci_high=high,
        p_value=p_value,
        significant=p_value < 0.05,
    )


# --- compatibility --------------------------------------------------------------------------------------------


@dataclass
class AnswerScores:
    """Exact match, per-field accuracy and the task's mean metrics of a list of answers."""

    n: int
    exact_match: float
    field_accuracy: dict[str, float] = field(default_factory=dict)
    task: str = "free_text"
    metrics: dict[str, float] = field(default_factory=dict)


def score_answers(predictions: Sequence[str], golds: Sequence[str], task: str = "auto") -> AnswerScores:
    """Score predictions against golds: the task's mean metrics, and accuracy per field most golds share."""
    task = detect_task(golds, task)[0]
    means = summarize(score_examples(predictions, golds, task))
    fields = summarize(_field_scores(predictions, golds))
    return AnswerScores(
        n=len(golds),
        exact_match=means["exact_match"],
        field_accuracy={key.removeprefix("field_accuracy:"): value for key, value in fields.items()},
        task=task,
        metrics=means,
    )
