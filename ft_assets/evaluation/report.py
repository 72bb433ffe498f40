"""From answers to evaluation rows: the task's metrics per example, the main metric with its interval, comparisons.

Shared by the local evaluation and the Azure evaluation, so every row of the ``evaluations``
table means the same thing. Pure Python, no dagster, no torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ft_assets.evaluation.metrics import (
    MAIN_METRIC,
    PairedTest,
    bootstrap_ci,
    paired_test,
    percentile,
    perplexity,
    score_examples,
    summarize,
)

if TYPE_CHECKING:
    from ft_assets.evaluation.runners import LocalResult

FIELD_PREFIX = "field_accuracy:"


@dataclass(frozen=True)
class Answered:
    """What one model answered on the test cases, with its measurements (one entry per case)."""

    model: str
    model_version: str
    provider: str
    answers: list[str]
    latencies_s: list[float]
    output_tokens: list[int]
    prompt_tokens: list[int]
    truncated: list[bool]


@dataclass(frozen=True)
class Scored:
    """A model's evaluations row and its per-example scores by metric."""

    row: dict[str, Any]
    per_example: dict[str, list[float]]


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def score_model(answered: Answered, golds: Sequence[str], task: str, *, samples: int = 2000, seed: int = 0) -> Scored:
    """Return the evaluations row of one model: every metric of the task, the main one with a bootstrap 95% interval."""
    per_example = score_examples(answered.answers, golds, task)
    metrics = summarize(per_example)
    main = MAIN_METRIC[task]
    low, high = bootstrap_ci(per_example[main], samples=samples, seed=seed)
    latencies = [s for s in answered.latencies_s if math.isfinite(s)]  # cached or failed requests have none
    row = {
        "model": answered.model,
        "model_version": answered.model_version,
        "provider": answered.provider,
        "n": len(golds),
        "task": task,
        "main_metric": main,
        "main_score": metrics[main],
        "ci_low": low,
        "ci_high": high,
        "metrics": metrics,
        "exact_match": metrics["exact_match"],
        "field_accuracy": {k.removeprefix(FIELD_PREFIX): v for k, v in metrics.items() if k.startswith(FIELD_PREFIX)},
        "latency_p50_ms": percentile(latencies, 50) * 1000,
        "latency_p95_ms": percentile(latencies, 95) * 1000,
        "output_tokens_mean": _mean(answered.output_tokens),
        "prompt_tokens_mean": _mean(answered.prompt_tokens),
        "truncated_share": _mean([float(t) for t in answered.truncated]),
    }
    return Scored(row, per_example)


def score_local(
    result: LocalResult, model: str, version: str, golds: Sequence[str], task: str, *, samples: int, seed: int
) -> tuple[Answered, Scored]:
    """Return what a local model answered and its evaluations row, with its loss and token accuracy."""
    answered = Answered(
        model, version, "local", result.answers, result.latencies_s, result.output_tokens,
        [p.prompt_tokens for p in result.predictions], [p.truncated for p in result.predictions],
    )  # fmt: skip
    scored = score_model(answered, golds, task, samples=samples, seed=seed)
    row = scored.row
    row["metrics"] = {**row["metrics"], "token_accuracy": result.token_accuracy, "loss": result.loss}
    row.update(token_accuracy=result.token_accuracy, loss=result.loss, perplexity=perplexity(result.loss),
               cost_per_1k_requests_usd=None)  # fmt: skip
    return answered, scored


def prediction_rows(
    answered: Answered,
    scored: Scored,
    example_ids: Sequence[str | None],
    prompts: Sequence[str],
    golds: Sequence[str],
) -> list[dict[str, Any]]:
    """Return one row per test example: id, prompt, reference, prediction, its scores, latency, tokens, truncation."""
    main = scored.row["main_metric"]
    rows = []
    for position, (example_id, prompt, gold) in enumerate(zip(example_ids, prompts, golds, strict=True)):
        scores = {name: values[position] for name, values in scored.per_example.items()}
        rows.append(
            {
                "model": answered.model,
                "model_version": answered.model_version,
                "position": position,
                "example_id": example_id,
                "prompt": prompt,
                "reference": gold,
                "prediction": answered.answers[position],
                "main_score": scores[main],
                "scores": scores,
                "latency_ms": answered.latencies_s[position] * 1000,
                "prompt_tokens": answered.prompt_tokens[position],
                "output_tokens": answered.output_tokens[position],
                "truncated": answered.truncated[position],
            }
        )
    return rows


def compare(
    candidate: Scored, baselines: Sequence[Scored], *, samples: int = 2000, seed: int = 0
) -> dict[str, PairedTest]:
    """Return the paired test of ``candidate``'s main metric against each baseline's, by baseline model name."""
    main = candidate.row["main_metric"]
    return {
        baseline.row["model"]: paired_test(
            candidate.per_example[main], baseline.per_example[main], samples=samples, seed=seed
        )
        for baseline in baselines
    }


def one_line(text: str | None, width: int = 80) -> str:
    """Return ``text`` on one line, cut to ``width`` characters with an ellipsis."""
    flat = " ".join((text or "").split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def worst_examples(rows: Sequence[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """Return the ``count`` lowest-scoring prediction rows (NaN scores last), lowest first."""
    return sorted(rows, key=lambda r: (math.isnan(r["main_score"]), r["main_score"], r["position"]))[:count]


def break_even_requests(
    training_cost_usd: float, saving_per_request_usd: float, hosting_per_hour_usd: float, requests_per_hour: float
) -> float:
    """Return how many requests it takes for a fine-tune to pay back its training and hosting.

    Each request saves ``saving_per_request_usd`` (prompted base minus fine-tune), but the
    fine-tuned deployment costs ``hosting_per_hour_usd`` for as long as it serves, i.e.
    ``hosting_per_hour_usd / requests_per_hour`` per request. Infinite when it never pays back.
    """
    if requests_per_hour <= 0:
        return math.inf
    net_saving = saving_per_request_usd - hosting_per_hour_usd / requests_per_hour
    if net_saving <= 0:
        return math.inf
    return training_cost_usd / net_saving
