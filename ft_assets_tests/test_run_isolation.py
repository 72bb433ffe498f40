"""Versions travel with the run: runs never mix versions; a version that failed a blocking check is never used."""

import shutil
from pathlib import Path

import dagster as dg

from ft_assets.definitions import defs
from ft_assets_tests.conftest import ROOT
from ft_assets_tests.project_runs import (
    TINY_CONFIG,
    finish,
    hidden_leftovers,
    instance_at,
    kill_when,
    local_resources,
    make_project,
    published_folders,
    run_versions,
    runs,
    start_job,
    trainers_gone,
    wait_for,
)

FIXTURES = Path(__file__).parent / "fixtures"


def _data_run(project: Path, instance: dg.DagsterInstance, raw: Path, **splits: object) -> dg.ExecuteInProcessResult:
    ops = {"raw_examples": {"config": {"folder": str(raw)}},
           "source_documents": {"config": {"folder": str(ROOT / "data" / "sources")}},
           "splits": {"config": splits}}  # fmt: skip
    return defs.resolve_job_def("data").execute_in_process(
        instance=instance, resources=local_resources(project), run_config={"ops": ops}, raise_on_error=False
    )


def _version(result: dg.ExecuteInProcessResult, asset: str) -> str:
    events = [e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == asset]
    return events[0].step_materialization_data.materialization.metadata["data_version"].value


def test_a_split_that_failed_its_blocking_check_is_never_consumed(tmp_path):
    with dg.DagsterInstance.ephemeral() as instance:
        good = _data_run(tmp_path, instance, ROOT / "data" / "raw")
        assert good.success
        (tmp_path / "tiny").mkdir()
        shutil.copy(FIXTURES / "ten_rows.jsonl", tmp_path / "tiny")
        bad = _data_run(tmp_path, instance, tmp_path / "tiny", ratios=[0.4, 0.3, 0.3])
        assert _version(bad, "train_split") != _version(good, "train_split")
        check = next(e for e in bad.get_asset_check_evaluations() if e.check_name == "train_split_has_enough_examples")
        assert not check.passed, "too few train rows must fail train_split_has_enough_examples (blocking)"

        job = defs.resolve_implicit_global_asset_job_def().get_subset(asset_selection={dg.AssetKey("base_model")})
        result = job.execute_in_process(
            instance=instance,
            resources=local_resources(tmp_path),
            run_config={"ops": {"base_model": TINY_CONFIG["ops"]["base_model"]}},
        )
    lineage = result.asset_materializations_for_node("base_model")[0].metadata["lineage"].value
    assert dict(lineage["parents"]) == {"train_split": _version(good, "train_split")}


def test_a_main_run_trains_on_its_own_splits_while_a_data_run_reads_another_folder(tmp_path):
    project = make_project(tmp_path / "project")
    other = project / "other"
    other.mkdir()
    for source in sorted((project / "data" / "raw").glob("*.jsonl"))[:1]:  # another, smaller dataset
        other.joinpath(source.name).write_bytes(b"".join(source.read_bytes().splitlines(keepends=True)[:150]))
    slow_base = {**TINY_CONFIG["ops"]["base_model"]["config"], "pretrain_epochs": 6}
    main = start_job(project, "main", {"ops": {**TINY_CONFIG["ops"], "base_model": {"config": slow_base}}})
    base_model = project / "data" / "artifacts" / "base_model"
    wait_for(main, lambda: base_model.is_dir() and any(base_model.glob(".staging-*")))  # main is past its splits
    data = start_job(project, "data", {"ops": {"raw_examples": {"config": {"folder": "other"}}}})
    assert finish(data) == 0, data.output()
    assert finish(main) == 0, main.output()

    by_job = {run.job_name: run for run in runs(project)}
    own, foreign = run_versions(project, by_job["main"].run_id), run_versions(project, by_job["data"].run_id)
    assert own["train_split"]["version"] != foreign["train_split"]["version"], "the two folders differ"
    with instance_at(project) as instance:
        split_time = _materialized_at(instance, by_job["data"].run_id, "train_split")
        lora_start = _step_started_at(instance, by_job["main"].run_id, "lora_adapter")
    assert split_time < lora_start, "the data run's splits must be the newest when the main run loads its inputs"
    splits = {name: own[name]["version"] for name in ("train_split", "validation_split", "test_split")}
    assert own["lora_adapter"]["parents"] == {"base_model": own["base_model"]["version"],
                                              "train_split": splits["train_split"],
                                              "validation_split": splits["validation_split"]}  # fmt: skip
    assert own["base_model"]["parents"] == {"train_split": splits["train_split"]}
    assert own["evaluation_table"]["parents"]["test_split"] == splits["test_split"]
    assert own["evaluation_table"]["parents"]["train_split"] == splits["train_split"]


def _materialized_at(instance: dg.DagsterInstance, run_id: str, asset: str) -> float:
    from dagster._core.events import DagsterEventType

    records = instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION).records
    return next(r.timestamp for r in records if r.asset_key == dg.AssetKey(asset))


def _step_started_at(instance: dg.DagsterInstance, run_id: str, step: str) -> float:
    from dagster._core.events import DagsterEventType

    records = instance.get_records_for_run(run_id, of_type=DagsterEventType.STEP_START).records
    return next(r.timestamp for r in records if r.event_log_entry.step_key == step)


LOCAL_ASSETS = {
    "raw_examples", "source_documents", "synthetic_examples", "cleaned_examples", "train_split", "validation_split",
    "test_split", "base_model", "lora_adapter", "merged_model", "evaluation_table", "champion_model",
}  # fmt: skip


def test_fresh_projects_give_the_same_versions_and_a_kill_during_training_changes_nothing(tmp_path):
    reference = make_project(tmp_path / "reference")
    first = start_job(reference, "main", TINY_CONFIG)
    assert finish(first) == 0, first.output()
    expected = {asset: v["version"] for asset, v in run_versions(reference, runs(reference)[0].run_id).items()}
    assert set(expected) == LOCAL_ASSETS

    project = make_project(tmp_path / "elsewhere" / "killed")
    artifacts = project / "data" / "artifacts"
    killed = start_job(project, "main", TINY_CONFIG)
    training = artifacts / "lora_adapter"
    assert kill_when(killed, lambda: training.is_dir() and any(training.glob(".scratch-*/job.json"))), killed.output()
    assert trainers_gone(project), "the trainer must die with its run"
    corrupt, stray = published_folders(artifacts)
    assert not corrupt and not stray, (corrupt, stray)

    rerun = start_job(project, "main", TINY_CONFIG)
    assert finish(rerun) == 0, rerun.output()
    again = {asset: v["version"] for asset, v in run_versions(project, runs(project)[-1].run_id).items()}
    assert again == expected, "the same inputs, config and code give the same versions in another folder"
    assert hidden_leftovers(artifacts) == [], "what the killed run left is swept"
    assert published_folders(artifacts) == ([], [])
