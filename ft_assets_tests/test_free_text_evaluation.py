"""The main job on a user's free-text Q&A set (the glossary fixture): metrics that fit, intervals, predictions kept."""

import shutil
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from ft_assets.lineage import queries
from ft_assets_tests.test_training_assets import _metadata, _run

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def glossary_run(tmp_path_factory):
    project = tmp_path_factory.mktemp("glossary")
    (project / "raw").mkdir()
    shutil.copy(FIXTURES / "glossary_qa.jsonl", project / "raw")
    (project / "sources").mkdir()
    with dg.DagsterInstance.ephemeral() as instance:
        yield _run(project, instance), project


def test_free_text_rows_have_rouge_chrf_and_an_interval(glossary_run):
    result, project = glossary_run
    assert result.success
    rows = queries.latest_evaluations(project / "lineage.duckdb")
    assert len(rows) == 4
    for row in rows:  # a one-epoch tiny base model may answer nothing useful (0); the adapter says something
        assert row["task"] == "free_text" and row["main_metric"] == "rouge_l"
        assert 0 <= row["metrics"]["rouge_l"] <= 1 and 0 <= row["metrics"]["chrf"] <= 1, row
        assert row["ci_low"] <= row["main_score"] <= row["ci_high"]
        assert not any(name.startswith("field_accuracy") for name in row["metrics"])
    adapter = next(row for row in rows if row["model"] == "lora_adapter")
    assert adapter["metrics"]["rouge_l"] > 0 and adapter["metrics"]["chrf"] > 0
    metadata = _metadata(result)["evaluation_table"]
    settings = {r.data["setting"]: r.data["value"] for r in metadata["settings"].records}
    assert settings["task"] == "free_text" and metadata["main_metric"].value == "rouge_l"
    assert settings["judge"].startswith("skipped: no credentials (set ")
    assert int(settings["max_new_tokens"]) <= 12  # the test's cap; the budget follows the gold answers otherwise


def test_one_prediction_per_test_example_and_model(glossary_run):
    result, project = glossary_run
    test_rows = _metadata(result)["test_split"]["rows"].value
    with duckdb.connect(str(project / "lineage.duckdb"), read_only=True) as connection:
        counts = connection.execute("SELECT model, count(*), count(DISTINCT example_id) FROM predictions GROUP BY 1")
        counts = counts.fetchall()
        columns = {d[0] for d in connection.execute("SELECT * FROM predictions LIMIT 0").description}
    assert {"model", "model_version", "test_split_version", "example_id", "reference", "prediction"} <= columns
    assert len(counts) == 4 and all(total == distinct == test_rows for _, total, distinct in counts)


def test_an_empty_test_split_fails_evaluation_with_its_cause_and_the_merge_check_uses_validation(tmp_path):
    (tmp_path / "raw").mkdir()
    (tmp_path / "sources").mkdir()
    shutil.copy(FIXTURES / "ten_rows.jsonl", tmp_path / "raw")
    splits = {"splits": {"config": {"ratios": [0.9, 0.1, 0.0]}}}
    with dg.DagsterInstance.ephemeral() as instance:
        result = _run(tmp_path, instance, ops=splits)
    failure = result.failure_data_for_node("evaluation_table")
    assert failure is not None and "test_split has 0 usable examples" in failure.error.message
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    parity = checks["merged_model_matches_adapter"]
    assert parity.passed and parity.metadata["compared_on"].value == "validation_split"
