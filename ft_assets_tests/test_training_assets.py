"""The main job through Dagster on the shipped data with a tiny model: Pipes training, checks, reuse, lineage, eval."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from ft_assets.definitions import defs
from ft_assets.lineage import queries
from ft_assets_tests.conftest import ROOT
from ft_assets_tests.project_runs import local_resources

TINY_BASE = {
    "vocab_size": 400,
    "hidden_size": 48,
    "intermediate_size": 96,
    "layers": 1,
    "heads": 2,
    "pretrain_epochs": 1,
}
TINY_LORA = {"r": 4, "alpha": 8, "epochs": 1.0, "batch_size": 16}
LOCAL_ASSETS = {
    "raw_examples", "source_documents", "synthetic_examples", "cleaned_examples", "train_split", "validation_split",
    "test_split", "base_model", "lora_adapter", "merged_model", "evaluation_table", "champion_model",
}  # fmt: skip


def _run(
    project: Path, instance: dg.DagsterInstance, lora: dict | None = None, ops: dict | None = None
) -> dg.ExecuteInProcessResult:
    return defs.resolve_job_def("main").execute_in_process(
        instance=instance,
        raise_on_error=False,
        resources=local_resources(project),
        run_config={
            "ops": {
                "raw_examples": {"config": {"folder": str(project / "raw")}},
                "source_documents": {"config": {"folder": str(project / "sources")}},
                "base_model": {"config": TINY_BASE},
                "lora_adapter": {"config": {**TINY_LORA, **(lora or {})}},
                "evaluation_table": {"config": {"few_shot_examples": 1, "max_new_tokens": 12}},
                **(ops or {}),
            }
        },
    )


def _metadata(result: dg.ExecuteInProcessResult) -> dict[str, dict]:
    return {
        event.asset_key.to_user_string(): event.step_materialization_data.materialization.metadata
        for event in result.get_asset_materialization_events()
    }


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("project")
    shutil.copytree(ROOT / "data" / "raw", root / "raw")
    shutil.copytree(ROOT / "data" / "sources", root / "sources")
    return root


@pytest.fixture(scope="module")
def first_run(project):
    with dg.DagsterInstance.ephemeral() as instance:
        result = _run(project, instance)
        logs = [e.message for e in instance.all_logs(result.run_id) if e.message]
        yield result, logs, instance


def test_main_job_trains_merges_and_evaluates(first_run):
    result, logs, _ = first_run
    assert result.success
    metadata = _metadata(result)
    assert set(metadata) == LOCAL_ASSETS
    assert all(m["reused"].value is False for name, m in metadata.items() if "reused" in m)
    lora = metadata["lora_adapter"]
    assert lora["tokens_per_second"].value > 0
    assert "![training loss](data:image/png;base64," in lora["loss_curve"].value
    assert "| step | epoch | loss |" in lora["loss_table"].value
    assert any("[pipes]" in line or "training LoRA" in line for line in logs), "training logs reach Dagster"
    assert any(line.startswith("step ") and "loss" in line for line in logs), "progress (step, loss) is logged"
    checks = {(c.asset_key.to_user_string(), c.check_name): c for c in result.get_asset_check_evaluations()}
    parity = checks[("merged_model", "merged_model_matches_adapter")]
    assert parity.passed and parity.metadata["max_abs_logit_difference"].value <= 1e-4
    assert ("evaluation_table", "adapter_beats_base") in checks


def test_adapter_model_card_names_its_inputs(first_run, project):
    metadata = _metadata(first_run[0])
    card = Path(metadata["lora_adapter"]["path"].value, "README.md").read_text()
    for asset in ("base_model", "train_split", "validation_split"):
        assert metadata[asset]["data_version"].value in card


def test_evaluation_rows_and_eval_cli(first_run, project):
    db = project / "lineage.duckdb"
    rows = queries.latest_evaluations(db)
    models = {row["model"] for row in rows}
    assert {"base_model (zero-shot)", "lora_adapter", "merged_model"} <= models
    assert any(m.startswith("base_model (few-shot") for m in models)
    test_version = _metadata(first_run[0])["test_split"]["data_version"].value
    assert {row["test_split_version"] for row in rows} == {test_version}
    output = subprocess.run(
        [sys.executable, "-m", "ft_assets.cli", "eval", "--json", "--db", str(db)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    printed = json.loads(output)
    assert {"model", "model_version", "test_split_version", "exact_match", "n"} <= set(printed[0])
    assert len(printed) == 4 and all(row["n"] > 0 for row in printed)
    for row in printed:  # the shipped invoices are a label task: exact match and per-field accuracy
        assert row["task"] == "labels" and row["main_metric"] == "exact_match"
        assert row["ci_low"] <= row["main_score"] <= row["ci_high"]
        assert {"exact_match", "field_accuracy:category", "field_accuracy:vendor"} <= set(row["metrics"])
    worst = subprocess.run(
        [sys.executable, "-m", "ft_assets.cli", "eval", "--predictions", "lora", "--worst", "3", "--db", str(db)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert worst.startswith("lora_adapter") and len(worst.strip().splitlines()) == 5  # title, header, 3 rows


def test_every_prediction_is_kept(first_run, project):
    import duckdb

    metadata = _metadata(first_run[0])["evaluation_table"]
    with duckdb.connect(str(project / "lineage.duckdb"), read_only=True) as connection:
        counts = dict(connection.execute("SELECT model, count(*) FROM predictions GROUP BY model").fetchall())
        n = connection.execute("SELECT max(n) FROM evaluations").fetchone()[0]
    assert len(counts) == 4 and set(counts.values()) == {n}
    assert "| model | example_id | score | reference | prediction |" in metadata["worst_predictions"].value
    assert Path(metadata["path"].value, "predictions.parquet").exists()


def test_trace_of_merged_model_reaches_the_raw_files(first_run, project):
    upstream = {row["asset"] for row in queries.trace(project / "lineage.duckdb", "merged_model")}
    expected = {"lora_adapter", "base_model", "train_split", "validation_split", "cleaned_examples",
                "synthetic_examples", "raw_examples"}  # fmt: skip
    assert expected <= upstream
    assert "file:" + (project / "raw" / "invoices_2026_h1.jsonl").as_posix() in upstream


def test_rerun_with_nothing_changed_reuses_every_model(first_run, project):
    with dg.DagsterInstance.ephemeral() as instance:
        again = _run(project, instance)
    assert again.success
    before, after = _metadata(first_run[0]), _metadata(again)
    for asset in ("base_model", "lora_adapter", "merged_model", "evaluation_table"):
        assert after[asset]["reused"].value is True, asset
        assert after[asset]["data_version"].value == before[asset]["data_version"].value


def test_a_training_failure_names_its_cause(project):
    with dg.DagsterInstance.ephemeral() as instance:
        result = _run(project, instance, lora={"quantization": "4bit"})
    assert not result.success
    failure = result.failure_data_for_node("lora_adapter")
    assert failure is not None
    assert "training failed: TrainingError: QLoRA" in failure.error.message
    assert "needs a CUDA GPU" in failure.error.message


def test_lineage_sync_restores_every_table_with_the_same_row_counts(first_run, project, tmp_path):
    import duckdb

    from ft_assets.lineage.sync import sync

    db = tmp_path / "rebuilt.duckdb"
    counts = sync(first_run[2], db)

    runs = [run.run_id for run in first_run[2].get_runs()]  # other tests here wrote runs of other instances

    def row_counts(path: Path) -> dict[str, int]:
        with duckdb.connect(str(path), read_only=True) as connection:
            tables = [row[0] for row in connection.execute("SELECT table_name FROM duckdb_tables()").fetchall()]
            counts = {t: connection.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in sorted(tables)}
            for table in ("materializations", "promotions"):
                query = f"SELECT count(*) FROM {table} WHERE list_contains(?, run_id)"
                counts[table] = connection.execute(query, [runs]).fetchone()[0]
            return counts

    expected, restored = row_counts(project / "lineage.duckdb"), row_counts(db)
    assert restored == expected
    assert set(expected) >= {
        "materializations",
        "edges",
        "member_sets",
        "member_spans",
        "evaluations",
        "predictions",
        "fine_tune_metrics",
    }
    assert expected["evaluations"] == 4 and counts["predictions"] == expected["predictions"] > 0
    with duckdb.connect(str(db), read_only=True) as rebuilt:
        rows = rebuilt.execute("SELECT DISTINCT main_metric FROM evaluations").fetchall()
    assert rows == [("exact_match",)]
