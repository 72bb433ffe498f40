"""Score the champion's merged model on a test split it was never evaluated on, as evaluation_table would.

Same cases, same greedy generation budget (longest gold answer plus the margin, capped), same batch
size, task and bootstrap settings as the candidate's evaluation, so the two scores are comparable.
No dagster; torch and transformers load inside the functions.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ft_assets.champion.store import REEVALUATED


def score_merged_model(
    model_dir: str,
    version: str,
    test_file: Path,
    settings: dict[str, Any],
    task: str,
    log: Callable[[str], None] = print,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Return the evaluations row and the prediction rows of a merged model on a test split file.

    ``settings`` is the candidate evaluation's config (``generation_margin``, ``max_new_tokens``,
    ``batch_size``, ``bootstrap_samples``, ``few_shot_seed``).
    """
    from ft_assets.evaluation.report import prediction_rows, score_local
    from ft_assets.evaluation.runners import eval_cases, generation_budget, load_model, run_local, tokenize_cases
    from ft_assets.training.lora import read_rows

    cases = eval_cases(read_rows(test_file))
    golds = [case.gold for case in cases]
    model, tokenizer = load_model(model_dir, merged_dir=model_dir)
    cap = settings["max_new_tokens"]
    budget = min(generation_budget(tokenizer, golds, margin=settings["generation_margin"], cap=cap), cap)
    result = run_local(model, tokenizer, tokenize_cases(tokenizer, cases), max_new_tokens=budget,
                       batch_size=settings["batch_size"], log=log, label=REEVALUATED)  # fmt: skip
    answered, scored = score_local(result, REEVALUATED, version, golds, task,
                                   samples=settings["bootstrap_samples"], seed=settings["few_shot_seed"])  # fmt: skip
    predictions = prediction_rows(answered, scored, [c.example_id for c in cases], [c.question for c in cases], golds)
    return scored.row, predictions


def evaluation_version(row: dict[str, Any], predictions: list[dict[str, Any]]) -> str:
    """Return a content hash of a re-evaluation (its answers and scores, timings left out)."""
    kept = [{k: p[k] for k in ("position", "example_id", "prediction", "main_score")} for p in predictions]
    content = json.dumps({"model_version": row["model_version"], "main_metric": row["main_metric"], "answers": kept},
                         sort_keys=True, default=str)  # fmt: skip
    return hashlib.sha256(content.encode()).hexdigest()[:16]
