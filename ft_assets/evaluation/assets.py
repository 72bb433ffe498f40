"""The evaluation table: every local model on the test split, one DuckDB row per (model version, test split version)."""

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import dagster as dg
from pydantic import Field

from ft_assets.artifacts import ArtifactRef, inputs_key
from ft_assets.code_versions import source_version
from ft_assets.evaluation.results import REPORTS, RESULTS, json_number, read_results, write_results
from ft_assets.metadata import reading_order, rounded, table
from ft_assets.numbers import finite
from ft_assets.readable import settings_table
from ft_assets.resources import ArtifactStore, LineageStore, LLMResource

EVALUATION_CODE = source_version(__name__, "evaluation_table")
COMPARISONS = "comparisons.json"
SKIPPED = "skipped_test_rows.json"
ADAPTER = "lora_adapter"
FIRST_COLUMNS = {"model": "string", "main_score": "float", "ci_low": "float", "ci_high": "float", "n": "int"}
OTHER_METRICS = 3  # task metrics shown beside the main one (per-field accuracies: their mean, one column)
LOCAL_METRICS = {"token_accuracy": "float", "loss": "float"}
LATENCY = "latency_p50_ms"
PAIRED_COLUMNS = {"baseline": "string", "difference": "float", "ci_low": "float", "ci_high": "float",
                  "p_value": "float", "significant": "bool"}  # fmt: skip
WORST_COLUMNS = {"model": "string", "example_id": "string", "score": "float", "reference": "string",
                 "prediction": "string"}  # fmt: skip


class EvaluationConfig(dg.Config):
    """How the models are asked and scored."""

    task: Literal["auto", "labels", "json", "free_text"] = Field(
        "auto", description="What the answers are, which decides the metrics; auto decides from the gold answers."
    )
    few_shot_examples: int = Field(3, description="Train examples shown in the prompted (few-shot) baseline.")
    few_shot_seed: int = Field(0, description="Seed that picks the few-shot examples.")
    max_new_tokens: int = Field(
        256, description="Cap on the answer length; the length itself is the longest gold answer plus a margin."
    )
    generation_margin: int = Field(8, description="Tokens allowed beyond the longest gold answer.")
    batch_size: int = Field(16, description="Test examples generated at once (greedy; same answers as one by one).")
    bootstrap_samples: int = Field(2000, description="Resamples for the 95% intervals and the paired tests.")
    min_test_examples: int = Field(1, description="Fail when the test split holds fewer usable examples than this.")
    judge_model: str | None = Field(
        "gpt-4o-mini", description="Model (deployment) that grades free-text answers 1-5 when credentials are set."
    )
    judge_max_requests: int = Field(2000, description="Most judge requests one evaluation may send.")
    judge_max_cost_usd: float = Field(1.0, description="Most dollars the judge may spend on one evaluation.")
    adapter_check_severity: Literal["error", "warn"] = Field(
        "error", description="Severity of adapter_beats_base when the adapter does not significantly beat the base."
    )


def _models(
    base: ArtifactRef, adapter: ArtifactRef, merged: ArtifactRef, config: EvaluationConfig
) -> list[dict[str, Any]]:
    """Return the local models to evaluate: name, version, how to load, and whether the prompt carries shots."""
    shots = f"few-shot k={config.few_shot_examples} seed={config.few_shot_seed}"
    return [
        {"model": "base_model (zero-shot)", "model_version": base.version, "load": {}, "shots": False},
        {"model": f"base_model ({shots})", "model_version": base.version, "load": {}, "shots": True},
        {"model": ADAPTER, "model_version": adapter.version, "load": {"adapter_dir": adapter.path}, "shots": False},
        {"model": "merged_model", "model_version": merged.version, "load": {"merged_dir": merged.path}, "shots": False},
    ]


def evaluations_table(rows: list[dict[str, Any]], latency: bool = True) -> dg.TableMetadataValue:
    """Return evaluation rows as a narrow typed table: one row per model, the main score and its interval first.

    Then n, a few other metrics of the task (per-field accuracies as their mean), token accuracy and loss where
    the rows have them, and (``latency``) the median latency rounded to a millisecond.
    """
    main = rows[0]["main_metric"] if rows else ""
    named = dict.fromkeys(m for row in rows for m in row.get("metrics", {}))
    others = [m for m in named if m != main and not m.startswith("field_accuracy:") and m not in LOCAL_METRICS]
    columns = {**FIRST_COLUMNS, **{m: "float" for m in others[:OTHER_METRICS]}}
    if any(row.get("field_accuracy") for row in rows):
        columns["field_accuracy"] = "float"
    columns |= {m: kind for m, kind in LOCAL_METRICS.items() if any(finite(row.get(m)) is not None for row in rows)}
    if latency:
        columns[LATENCY] = "int"
    records = []
    for row in rows:
        fields = [v for v in (row.get("field_accuracy") or {}).values() if finite(v) is not None]
        record = {**{m: finite(row.get("metrics", {}).get(m)) for m in others}, **{k: finite(row.get(k)) for k in row}}
        record["field_accuracy"] = sum(fields) / len(fields) if fields else None
        record[LATENCY] = round(row[LATENCY]) if finite(row.get(LATENCY)) is not None else None
        records.append(record)
    return table(records, columns)


def model_scores(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """Return one figure per model, ``score: <model>``: its main score, charted across versions in the Plots tab."""
    return {f"score: {row['model']}": finite(rounded(row["main_score"])) for row in rows}


@dg.asset(
    group_name="evaluation",
    code_version=EVALUATION_CODE,
    description="Every local model on test_split: the base model zero-shot, the base model with a few-shot prompt "
    "from train_split (the prompted baseline to beat), the adapter and the merged model. Metrics fit the task "
    "(labels: exact match and per-field accuracy; JSON: validity, schema, per-key accuracy; free text: ROUGE-L and "
    "chrF), with a main metric and its bootstrap 95% interval; every prediction is kept (predictions.parquet and the "
    "DuckDB predictions table); rows go to the DuckDB evaluations table (see `ft-assets eval`).",
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
    llm: LLMResource,
) -> dg.Output[ArtifactRef]:
    """Evaluate every local model; record one row per model version and one per prediction."""
    parents = [base_model, lora_adapter, merged_model, train_split, test_split]
    judge_ready = llm.client_settings().provider is not None  # a judged evaluation is not the unjudged one
    settings = {**config.model_dump(), "judge_ready": judge_ready}
    key = inputs_key(code=EVALUATION_CODE, config=settings, **{p.asset: p.version for p in parents})
    ref = artifacts.made_from("evaluation_table", key)
    reused = ref is not None
    if ref is None:
        with artifacts.stage("evaluation_table") as staging:
            _evaluate(context, config, llm, base_model, lora_adapter, merged_model, train_split, test_split, staging)
            ref = artifacts.publish(staging, "evaluation_table", reports=REPORTS)
        artifacts.remember("evaluation_table", key, ref)
    else:
        context.log.info(f"evaluation_table: models and test split unchanged; reusing {ref.path}")
    rows, predictions = read_results(Path(ref.path))
    comparisons = json.loads(ref.file(COMPARISONS).read_text())
    skipped = json.loads(ref.file(SKIPPED).read_text())
    stamp = {"test_split_version": test_split.version, "evaluation_version": ref.version}
    lineage.record_evaluations(
        [{**row, **stamp, "evaluated_by": "evaluation_table", "run_id": context.run.run_id} for row in rows]
    )
    lineage.record_predictions([{**row, **stamp} for row in predictions])
    recorded = lineage.record(context, ref, parents, config)
    adapter = next(row for row in rows if row["model"] == ADAPTER)
    paired = [{"baseline": name, **test} for name, test in comparisons["paired"].items()]
    settings = {
        "task": adapter["task"],
        "task_reason": comparisons["task_reason"],
        "max_new_tokens": comparisons["max_new_tokens"],
        "judge": comparisons["judge"],
        "test_split_version": test_split.version,
        "test_rows_skipped": skipped or "none",
    }
    timing = {LATENCY: "not measured in this run: the evaluation was reused (its first run's are in timings.json)"}
    return dg.Output(
        ref,
        data_version=dg.DataVersion(ref.version),
        metadata=reading_order(
            {
                "main_metric": adapter["main_metric"],
                **model_scores(rows),
                "reused": reused,
                "evaluations": evaluations_table(rows, latency=not reused),
                **(timing if reused else {}),
                "adapter_vs_baselines": table(paired, PAIRED_COLUMNS),
                "base_vs_adapter": table(
                    _side_by_side(predictions),
                    dict.fromkeys(["example_id", "reference", "base (zero-shot)", ADAPTER], "string"),
                ),
                "worst_predictions": table(_worst(predictions), WORST_COLUMNS),
                "settings": settings_table(settings),
            },
            recorded=recorded,
        ),
    )


def _worst(predictions: list[dict[str, Any]], per_model: int = 3) -> list[dict[str, Any]]:
    """Return the lowest-scoring predictions of each model, for the UI."""
    from ft_assets.evaluation.report import one_line, worst_examples

    rows = []
    for model in dict.fromkeys(p["model"] for p in predictions):
        for p in worst_examples([p for p in predictions if p["model"] == model], per_model):
            rows.append({"model": model, "example_id": p["example_id"], "score": finite(p["main_score"]),
                         "reference": one_line(p["reference"]), "prediction": one_line(p["prediction"])})  # fmt: skip
    return rows


def _side_by_side(predictions: list[dict[str, Any]], count: int = 5) -> list[dict[str, Any]]:
    """Return the base model's and the adapter's answers to the first few test examples."""
    from ft_assets.evaluation.report import one_line

    by_model: dict[str, list[dict[str, Any]]] = {}
    for p in predictions:
        by_model.setdefault(p["model"], []).append(p)
    base, adapter = by_model.get("base_model (zero-shot)", []), by_model.get(ADAPTER, [])
    return [
        {"example_id": a["example_id"], "reference": one_line(a["reference"], 60),
         "base (zero-shot)": one_line(b["prediction"], 60), ADAPTER: one_line(a["prediction"], 60)}
        for b, a in list(zip(base, adapter, strict=False))[:count]
    ]  # fmt: skip


def _evaluate(
    context: dg.AssetExecutionContext,
    config: EvaluationConfig,
    llm: LLMResource,
    base: ArtifactRef,
    adapter: ArtifactRef,
    merged: ArtifactRef,
    train: ArtifactRef,
    test: ArtifactRef,
    staging: Path,
) -> None:
    """Run every local model on the test cases and write rows, predictions, comparisons and skipped rows."""
    from ft_assets.evaluation.metrics import FEW_TEST_EXAMPLES, detect_task, few_test_examples
    from ft_assets.evaluation.report import compare, prediction_rows, score_local
    from ft_assets.evaluation.runners import (
        eval_cases,
        few_shot_examples,
        generation_budget,
        load_model,
        run_local,
        tokenize_cases,
        with_shots,
    )
    from ft_assets.training.lora import read_rows

    skipped: Counter[str] = Counter()
    cases = eval_cases(read_rows(test.file("data.jsonl")), skipped)
    if skipped:
        context.log.warning(f"evaluation_table: test rows the local models cannot answer, skipped: {dict(skipped)}")
    needed = max(config.min_test_examples, 1)
    if len(cases) < needed:
        raise dg.Failure(
            f"evaluation_table: test_split has {len(cases)} usable examples (at least {needed} needed): add data, "
            "or give the test split a larger share (splits config ratios)"
        )
    if len(cases) < FEW_TEST_EXAMPLES:
        context.log.warning(f"evaluation_table: {few_test_examples(len(cases))}")
    golds = [case.gold for case in cases]
    task, reason = detect_task(golds, config.task)
    context.log.info(f"evaluation_table: task {task} ({reason})")
    shots = few_shot_examples(read_rows(train.file("data.jsonl")), config.few_shot_examples, config.few_shot_seed)
    prompts_text = [case.question for case in cases]
    example_ids = [case.example_id for case in cases]
    _, tokenizer = load_model(base.path)
    budget = min(generation_budget(tokenizer, golds, margin=config.generation_margin, cap=config.max_new_tokens),
                 config.max_new_tokens)  # fmt: skip
    plain, shot = tokenize_cases(tokenizer, cases), tokenize_cases(tokenizer, [with_shots(c, shots) for c in cases])
    scored, predictions, rows, answers = [], [], [], []
    for spec in _models(base, adapter, merged, config):
        model, model_tokenizer = load_model(base.path, **spec["load"])
        result = run_local(model, model_tokenizer, shot if spec["shots"] else plain, max_new_tokens=budget,
                           batch_size=config.batch_size, log=context.log.info, label=spec["model"])  # fmt: skip
        answered, model_scores = score_local(result, spec["model"], spec["model_version"], golds, task,
                                             samples=config.bootstrap_samples, seed=config.few_shot_seed)  # fmt: skip
        row = model_scores.row
        context.log.info(
            f"{spec['model']}: {row['main_metric']} {row['main_score']:.3f} "
            f"[{row['ci_low']:.3f}, {row['ci_high']:.3f}] on {row['n']} test examples"
        )
        scored.append(model_scores)
        rows.append(row)
        answers.append(answered)
    judged = _judge(context, config, llm, task, prompts_text, golds, answers, scored)
    for answered, model_scores in zip(answers, scored, strict=True):
        predictions += prediction_rows(answered, model_scores, example_ids, prompts_text, golds)
    adapter_scores = next(s for s in scored if s.row["model"] == ADAPTER)
    baselines = [s for s in scored if s.row["model"].startswith("base_model")]
    comparisons = {
        "task_reason": reason,
        "max_new_tokens": budget,
        "severity": config.adapter_check_severity,
        "judge": judged,
        "paired": compare(adapter_scores, baselines, samples=config.bootstrap_samples, seed=config.few_shot_seed),
    }
    write_results(staging, rows, predictions)
    (staging / COMPARISONS).write_text(json.dumps(comparisons, indent=2, sort_keys=True, default=json_number))
    (staging / SKIPPED).write_text(json.dumps(dict(skipped), indent=2, sort_keys=True))


def _judge(
    context: dg.AssetExecutionContext,
    config: EvaluationConfig,
    llm: LLMResource,
    task: str,
    prompts: list[str],
    golds: list[str],
    answers: list[Any],
    scored: list[Any],
) -> str:
    """Grade free-text answers with the LLM judge, adding ``judge_correctness`` to each model; say what happened."""
    import asyncio

    from ft_assets.evaluation.judge import METRIC, judge_requests, parse_grade
    from ft_assets.llm.calls import Budget, Prices, ResponseCache, run_requests
    from ft_assets.llm.client import CREDENTIAL_VARIABLES, async_client

    if task != "free_text" or not config.judge_model:
        return "skipped: the judge grades free-text answers only" if config.judge_model else "skipped: no judge_model"
    settings = llm.client_settings()
    if settings.provider is None:
        return f"skipped: no credentials (set {CREDENTIAL_VARIABLES})"
    requests = [r for a in answers for r in judge_requests(config.judge_model, prompts, golds, a.answers)]
    context.log.info(f"evaluation_table: {len(requests)} judge requests to {config.judge_model}")
    results, report = asyncio.run(
        run_requests(
            lambda: async_client(settings), requests, endpoint=settings.endpoint, cache=ResponseCache(llm.cache_dir),
            budget=Budget(config.judge_max_requests, config.judge_max_cost_usd),
            prices=Prices(llm.input_usd_per_1m, llm.output_usd_per_1m), log=context.log.info,
        )
    )  # fmt: skip
    grades = [parse_grade(r.content) for r in results]
    for index, model_scores in enumerate(scored):
        mine = grades[index * len(golds) : (index + 1) * len(golds)]
        model_scores.per_example[METRIC] = mine
        known = [g for g in mine if not math.isnan(g)]
        model_scores.row["metrics"][METRIC] = sum(known) / len(known) if known else math.nan
    graded = sum(not math.isnan(g) for g in grades)
    return (
        f"{config.judge_model}: {graded}/{len(grades)} graded, {report.requests_sent} requests, ${report.cost_usd:.4f}"
    )


def adapter_beats_baselines(comparisons: dict[str, Any]) -> bool:
    """Tell whether the adapter beats every base model on the main metric, significantly (``comparisons.json``)."""
    return all(test["difference"] > 0 and test["significant"] for test in comparisons["paired"].values())


@dg.asset_check(
    asset="evaluation_table",
    blocking=False,  # champion_model applies it itself, so that a weak candidate still gets a decision saying why
    description="The LoRA adapter beats every base model (zero-shot and the few-shot prompted baseline) on the main "
    "metric, and a paired test says the difference is significant (p < 0.05). Severity: evaluation config "
    "adapter_check_severity.",
)
def adapter_beats_base(evaluation_table: ArtifactRef) -> dg.AssetCheckResult:
    """Compare the adapter's main metric with each base model's, with the paired test."""
    rows = {row["model"]: row for row in json.loads(evaluation_table.file(RESULTS).read_text())}
    comparisons = json.loads(evaluation_table.file(COMPARISONS).read_text())
    adapter = rows[ADAPTER]
    paired = comparisons["paired"]
    passed = adapter_beats_baselines(comparisons)
    severity = dg.AssetCheckSeverity.WARN if comparisons["severity"] == "warn" else dg.AssetCheckSeverity.ERROR
    return dg.AssetCheckResult(
        passed=passed,
        severity=severity,
        metadata={
            "main_metric": adapter["main_metric"],
            "adapter_score": adapter["main_score"],
            **{f"vs {name}: difference": test["difference"] for name, test in paired.items()},
            **{f"vs {name}: p_value": test["p_value"] for name, test in paired.items()},
            **{f"vs {name}: significant": bool(test["significant"]) for name, test in paired.items()},
        },
    )
