"""The main job through Dagster on the shipped data with a tiny model: Pipes training, checks, reuse, lineage, eval."""

import json
import re
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
    assert "![training loss curve](data:image/png;base64," in lora["loss_curve_png"].value
    assert _columns(lora["loss_table"])[:3] == ["step", "epoch", "loss"]
    assert any("[pipes]" in line or "training LoRA" in line for line in logs), "training logs reach Dagster"
    assert any(line.startswith("step ") and "loss" in line for line in logs), "progress (step, loss) is logged"
    checks = {(c.asset_key.to_user_string(), c.check_name): c for c in result.get_asset_check_evaluations()}
    parity = checks[("merged_model", "merged_model_matches_adapter")]
    assert parity.passed and parity.metadata["max_abs_logit_difference"].value <= 1e-4
    assert ("evaluation_table", "adapter_beats_base") in checks


def _columns(value: dg.MetadataValue) -> list[str]:
    assert isinstance(value, dg.TableMetadataValue), value
    return [column.name for column in value.schema.columns]


def test_adapter_model_card_names_its_inputs(first_run, project):
    metadata = _metadata(first_run[0])
    card = Path(metadata["lora_adapter"]["path"].value, "README.md").read_text()
    for asset in ("base_model", "train_split", "validation_split"):
        assert metadata[asset]["data_version"].value in card
    assert card.startswith("# LoRA adapter") and "## Hyperparameters" in card
    assert "| target_modules | q_proj, v_proj |" in card and "| epochs | 1 |" in card
    assert not re.search(r"None|\['|\b\d+\.0\b", card), card  # no Python reprs: None, ['q_proj'], 12.0


def test_metadata_reads_figures_first_and_lineage_last(first_run):
    metadata = _metadata(first_run[0])
    lora = metadata["lora_adapter"]
    keys = list(lora)
    assert keys[:6] == ["final_train_loss", "final_eval_loss", "loss_curve", "tokens_per_second", "train_seconds",
                        "trainable_parameters"]  # fmt: skip
    assert all(isinstance(lora[k].value, int | float) for k in keys[:6] if k != "loss_curve")
    curve = lora["loss_curve"]
    assert isinstance(curve, dg.MarkdownMetadataValue)
    assert len(curve.value) < 1000  # the UI shows shorter Markdown inline
    assert re.search(r"!\[[^\]]*loss[^\]]*\]\(data:image/", curve.value), curve.value
    assert keys.index("loss_curve") < keys.index("hyperparameters") < keys.index("model_card")
    # Hyperparameters once, as a typed two-column table of text (the model card and the lineage record aside).
    assert _columns(lora["hyperparameters"]) == ["setting", "value"]
    settings = {r.data["setting"]: r.data["value"] for r in lora["hyperparameters"].records}
    assert settings["r"] == "4" and settings["target_modules"] == "q_proj, v_proj"
    mentions = [k for k, v in lora.items() if "target_modules" in str(v.value)]
    assert mentions == ["hyperparameters", "model_card", "lineage"], mentions
    blobs = [k for k, v in lora.items() if isinstance(v, dg.JsonMetadataValue) and k not in ("lineage", "artifact")]
    assert not blobs, {k: lora[k] for k in blobs}

    evaluation = metadata["evaluation_table"]
    keys = list(evaluation)
    assert keys[0] == "main_metric" and evaluation["main_metric"].value == "exact_match"
    scores = [k for k in keys if k.startswith("score: ")]
    assert keys[1 : 1 + len(scores)] == scores and "score: lora_adapter" in scores and len(scores) == 4
    assert all(isinstance(evaluation[k], dg.FloatMetadataValue) for k in scores)
    assert _columns(evaluation["evaluations"])[:5] == ["model", "main_score", "ci_low", "ci_high", "n"]
    assert "latency_p50_ms" in _columns(evaluation["evaluations"])
    assert [r.data["model"] for r in evaluation["evaluations"].records] == [s.removeprefix("score: ") for s in scores]
    assert not any(isinstance(v, dg.IntMetadataValue) for v in evaluation.values())  # max_new_tokens is a setting

    base = metadata["base_model"]
    assert list(base)[:2] == ["source", "parameters"] and _columns(base["settings"]) == ["setting", "value"]
    assert "pretraining loss" in base["pretraining_curve"].value and len(base["pretraining_curve"].value) < 1000
    for asset in ("base_model", "lora_adapter", "merged_model", "evaluation_table", "champion_model"):
        assert list(metadata[asset])[-1] == "lineage", (asset, list(metadata[asset]))


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
    assert worst.splitlines()[1].split()[:2] == ["test", "example"]  # its number (from 1), not a rank
    assert all(int(line.split()[0]) >= 1 for line in worst.strip().splitlines()[2:])


def test_every_prediction_is_kept(first_run, project):
    import duckdb

    metadata = _metadata(first_run[0])["evaluation_table"]
    with duckdb.connect(str(project / "lineage.duckdb"), read_only=True) as connection:
        counts = dict(connection.execute("SELECT model, count(*) FROM predictions GROUP BY model").fetchall())
        n = connection.execute("SELECT max(n) FROM evaluations").fetchone()[0]
    assert len(counts) == 4 and set(counts.values()) == {n}
    assert _columns(metadata["worst_predictions"]) == ["model", "example_id", "score", "reference", "prediction"]
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
    # A reused artifact did not run again: no timings charted as if it had (told as text instead).
    lora = after["lora_adapter"]
    assert "train_seconds" not in lora and "tokens_per_second" not in lora
    assert list(lora)[:2] == ["final_train_loss", "final_eval_loss"]
    assert lora["trained"].value.startswith("not in this run: reused")
    assert "latency_p50_ms" not in [c.name for c in after["evaluation_table"]["evaluations"].schema.columns]


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
