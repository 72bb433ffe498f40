"""The evaluation table: every local model on the test split, one DuckDB row per (model version, test split version)."""

import json
from collections import Counter
from typing import Any

import dagster as dg
from pydantic import Field

from ft_assets.artifacts import ArtifactRef, inputs_key
from ft_assets.code_versions import source_version
from ft_assets.metadata import markdown_table
from ft_assets.resources import ArtifactStore, LineageStore

EVALUATION_CODE = source_version(
    "ft_assets.evaluation.metrics",
    "ft_assets.evaluation.runners",
    "ft_assets.evaluation.assets",
    "ft_assets.training.chat_rows",
    "ft_assets.training.lora",
)
RESULTS = "evaluations.json"
SKIPPED = "skipped_test_rows.json"
TABLE_COLUMNS = [
    "model", "model_version", "n", "exact_match", "field_accuracy", "token_accuracy", "loss", "perplexity",
    "latency_p50_ms", "latency_p95_ms", "output_tokens_mean",
]  # fmt: skip


class EvaluationConfig(dg.Config):
    """How the models are asked."""

    few_shot_examples: int = Field(3, description="Train examples shown in the prompted (few-shot) baseline.")
    few_shot_seed: int = Field(0, description="Seed that picks the few-shot examples.")
    max_new_tokens: int = Field(48, description="Longest answer generated.")


def _models(
    base: ArtifactRef, adapter: ArtifactRef, merged: ArtifactRef, config: EvaluationConfig
) -> list[dict[str, Any]]:
    """Return the local models to evaluate: name, version, how to load, and whether the prompt carries shots."""
    shots = f"few-shot k={config.few_shot_examples} seed={config.few_shot_seed}"
    return [
        {"model": "base_model (zero-shot)", "model_version": base.version, "load": {}, "shots": False},
        {"model": f"base_model ({shots})", "model_version": base.version, "load": {}, "shots": True},
        {
            "model": "lora_adapter",
            "model_version": adapter.version,
            "load": {"adapter_dir": adapter.path},
            "shots": False,
        },
        {"model": "merged_model", "model_version": merged.version, "load": {"merged_dir": merged.path}, "shots": False},
    ]


def _format(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return ", ".join(f"{k} {v:.3f}" for k, v in value.items())
    return value


@dg.asset(
    group_name="evaluation",
    code_version=EVALUATION_CODE,
    description="Every local model on test_split: the base model zero-shot, the base model with a few-shot prompt "
    "from train_split (the prompted baseline to beat), the adapter and the merged model. Exact match, per-field "
    "accuracy, token accuracy, loss/perplexity on the gold answers, latency p50/p95 and output tokens; rows go to "
    "the DuckDB evaluations table (see `ft-assets eval`).",
)
def evaluation_table(
    context: dg.AssetExecutionContext,
    config: EvaluationConfig,
    base_model: ArtifactRef,
    lora_adapter: ArtifactRef,
    merged_model: ArtifactRef,
    train_split: ArtifactRef,
    test_split: ArtifactRef,
    artifacts: ArtifactStore,
    lineage: LineageStore,
) -> dg.Output[ArtifactRef]:
    """Evaluate every local model and record one row per model version."""
    parents = [base_model, lora_adapter, merged_model, train_split, test_split]
    key = inputs_key(code=EVALUATION_CODE, config=config.model_dump(), **{p.asset: p.version for p in parents})
    ref = artifacts.made_from("evaluation_table", key)
    reused = ref is not None
    if ref is None:
        with artifacts.stage("evaluation_table") as staging:
            rows, skipped = _evaluate(context, config, base_model, lora_adapter, merged_model, train_split, test_split)
            (staging / RESULTS).write_text(json.dumps(rows, indent=2, sort_keys=True))
            (staging / SKIPPED).write_text(json.dumps(skipped, indent=2, sort_keys=True))
            ref = artifacts.publish(staging, "evaluation_table")
        artifacts.remember("evaluation_table", key, ref)
    else:
        context.log.info(f"evaluation_table: models and test split unchanged; reusing {ref.path}")
    rows = json.loads(ref.file(RESULTS).read_text())
    skipped = json.loads(ref.file(SKIPPED).read_text()) if ref.file(SKIPPED).exists() else {}
    lineage.record_evaluations(
        [{**row, "test_split_version": test_split.version, "evaluated_by": "evaluation_table",
          "evaluation_version": ref.version, "run_id": context.run.run_id} for row in rows]
    )  # fmt: skip
    recorded = lineage.record(context, ref, parents, config)
    by_model = {row["model"]: row for row in rows}
    return dg.Output(
        ref,
        data_version=dg.DataVersion(ref.version),
        metadata={
            **recorded,
            "reused": reused,
            "test_split_version": test_split.version,
            "evaluations": markdown_table(
                [{c: _format(row.get(c)) for c in TABLE_COLUMNS} for row in rows], TABLE_COLUMNS
            ),
            "adapter_exact_match": by_model["lora_adapter"]["exact_match"],
            "base_zero_shot_exact_match": by_model["base_model (zero-shot)"]["exact_match"],
            "test_rows_skipped": dg.MetadataValue.json(skipped),
        },
    )


def _evaluate(
    context: dg.AssetExecutionContext,
    config: EvaluationConfig,
    base: ArtifactRef,
    adapter: ArtifactRef,
    merged: ArtifactRef,
    train: ArtifactRef,
    test: ArtifactRef,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Run every local model on the test cases; return the evaluation rows and the skipped test rows by reason."""
    from ft_assets.evaluation.runners import eval_cases, few_shot_examples, load_model, run_local, with_shots
    from ft_assets.training.lora import read_rows

    skipped: Counter[str] = Counter()
    cases = eval_cases(read_rows(test.file("data.jsonl")), skipped)
    if skipped:
        context.log.warning(f"evaluation_table: test rows the local models cannot answer, skipped: {dict(skipped)}")
    if not cases:
        raise dg.Failure("evaluation_table: test_split holds no chat example with an assistant answer")
    shots = few_shot_examples(read_rows(train.file("data.jsonl")), config.few_shot_examples, config.few_shot_seed)
    golds = [case.gold for case in cases]
    rows = []
    for spec in _models(base, adapter, merged, config):
        model, tokenizer = load_model(base.path, **spec["load"])
        prompts = [with_shots(case, shots) for case in cases] if spec["shots"] else cases
        result = run_local(model, tokenizer, prompts, max_new_tokens=config.max_new_tokens, log=context.log.info,
                           label=spec["model"])  # fmt: skip
        row = {"model": spec["model"], "model_version": spec["model_version"], "provider": "local", **result.row(golds)}
        context.log.info(f"{spec['model']}: exact match {row['exact_match']:.3f} on {row['n']} test examples")
        rows.append(row)
    return rows, dict(skipped)


@dg.asset_check(
    asset="evaluation_table",
    blocking=False,
    description="The LoRA adapter's exact match beats the base model's, zero-shot and few-shot (prompted baseline).",
)
def adapter_beats_base(evaluation_table: ArtifactRef) -> dg.AssetCheckResult:
    """Compare the adapter's exact match with the base model's best."""
    rows = {row["model"]: row for row in json.loads(evaluation_table.file(RESULTS).read_text())}
    adapter = rows["lora_adapter"]["exact_match"]
    base = max(row["exact_match"] for name, row in rows.items() if name.startswith("base_model"))
    return dg.AssetCheckResult(
        passed=adapter > base,
        metadata={"adapter_exact_match": adapter, "best_base_exact_match": base, "margin": adapter - base},
    )
