"""The champion: the promotion rule, its records and stable path, champion_model through Dagster, and the CLI."""

import json
import shutil
from pathlib import Path

import dagster as dg
import duckdb
import pytest
from click.testing import CliRunner

from ft_assets.champion.rule import ModelScores, decide
from ft_assets.champion.store import Champion, current_champion, new_row, point_stable_path, rollback_target
from ft_assets.cli import main as cli
from ft_assets.definitions import defs
from ft_assets_tests.conftest import ROOT
from ft_assets_tests.project_runs import local_resources

TINY_BASE = {"vocab_size": 400, "hidden_size": 48, "intermediate_size": 96, "layers": 1, "heads": 2,
             "pretrain_epochs": 1}  # fmt: skip
TINY_LORA = {"r": 4, "alpha": 8, "epochs": 1.0, "batch_size": 16}
# The tiny model does not beat its base significantly: "warn" lets it through the adapter_beats_base gate.
TINY_EVALUATION = {"few_shot_examples": 1, "max_new_tokens": 12, "adapter_check_severity": "warn"}
CANDIDATE = [dg.AssetKey(k) for k in ("lora_adapter", "merged_model", "evaluation_table", "champion_model")]


def _scores(version: str, per_example: list[float], asset: str = "merged_model") -> ModelScores:
    mean = sum(per_example) / len(per_example)
    return ModelScores(asset, version, "exact_match", mean, mean - 0.1, mean + 0.1, per_example)


def test_first_candidate_is_promoted_when_its_checks_passed():
    candidate = _scores("a", [1.0, 0.0])
    assert decide(candidate, None).decision == "promoted"
    assert "no champion yet" in decide(candidate, None).reason
    failed = decide(candidate, None, failed_checks=["adapter_beats_base"])
    assert failed.decision == "kept" and "adapter_beats_base" in failed.reason


def test_a_candidate_must_beat_the_champion_by_the_margin():
    champion = _scores("old", [1.0] * 10 + [0.0] * 10)
    better = decide(_scores("new", [1.0] * 12 + [0.0] * 8), champion)
    assert better.decision == "promoted" and "0.600" in better.reason and "0.500" in better.reason
    assert decide(_scores("new", [1.0] * 12 + [0.0] * 8), champion, margin=0.1).decision == "kept"
    tie = decide(_scores("new", [0.0] * 10 + [1.0] * 10), champion)
    assert tie.decision == "kept" and "does not beat the champion" in tie.reason
    worse = decide(_scores("new", [0.0] * 20), champion)
    assert worse.decision == "kept" and worse.comparison["difference"] == pytest.approx(-0.5)
    same = decide(_scores("old", [1.0] * 20), champion)
    assert same.decision == "kept" and "already the champion" in same.reason


def test_the_significant_rule_wants_a_significant_paired_difference():
    champion = _scores("old", [0.0] * 40)
    slightly = decide(_scores("new", [1.0] * 2 + [0.0] * 38), champion, rule="significant")
    assert slightly.decision == "kept" and "not significantly" in slightly.reason
    clearly = decide(_scores("new", [1.0] * 30 + [0.0] * 10), champion, rule="significant")
    assert clearly.decision == "promoted" and clearly.comparison["significant"]
    with pytest.raises(ValueError):
        decide(_scores("new", [1.0] * 3), champion)


def _row(after: str, override: str | None = None) -> dict:
    return new_row(candidate_asset="merged_model", candidate_version=after, decision="promoted", reason="-",
                   override=override, champion_after_asset="merged_model", champion_after_version=after,
                   champion_after_path=f"/m/{after}")  # fmt: skip


def test_rollback_walks_back_through_the_champions():
    kept = {**_row("b"), "decision": "kept"}
    rows = [kept, _row("b"), _row("a")]  # newest first, as history gives them
    assert current_champion(rows) == Champion("merged_model", "b", "/m/b")
    assert rollback_target(rows) == Champion("merged_model", "a", "/m/a")
    rows = [_row("b", "rollback"), _row("c"), *rows]  # c, then rolled back to b
    assert rollback_target(rows) == Champion("merged_model", "a", "/m/a")
    assert rollback_target([_row("a")]) is None


def test_the_stable_path_names_the_champion(tmp_path):
    first, second = tmp_path / "m1", tmp_path / "m2"
    first.mkdir()
    second.mkdir()
    for model in (first, second):
        point_stable_path(tmp_path / "champion", {"asset": "merged_model", "version": model.name, "path": str(model)})
    assert json.loads((tmp_path / "champion" / "champion.json").read_text())["version"] == "m2"
    assert (tmp_path / "champion" / "current").resolve() == second
    assert sorted(p.name for p in (tmp_path / "champion").iterdir()) == ["champion.json", "current"]
    # An Azure fine-tune becomes the champion: no local folder, so "current" must not name the old one.
    point_stable_path(tmp_path / "champion", {"asset": "azure_fine_tuned_model", "version": "ft:x", "path": None})
    assert sorted(p.name for p in (tmp_path / "champion").iterdir()) == ["champion.json"]


def _evaluated(db: Path, model: str, version: str, scores: list[float], evaluated_by: str) -> None:
    from ft_assets.lineage.store import record_evaluations, record_predictions

    stamp = {"model": model, "model_version": version, "test_split_version": "s1", "evaluation_version": "e-" + version}
    mean = sum(scores) / len(scores)
    record_evaluations(db, [{**stamp, "provider": "api", "n": len(scores), "evaluated_by": evaluated_by,
                             "run_id": "r", "created_at": "2026-01-01T00:00:00+00:00", "main_metric": "exact_match",
                             "main_score": mean, "ci_low": 0.0, "ci_high": 1.0}])  # fmt: skip
    record_predictions(db, [{**stamp, "position": i, "main_score": v, "scores": {}} for i, v in enumerate(scores)])


def test_scores_and_azure_candidates_come_from_the_evaluations_table(tmp_path):
    from ft_assets.champion.store import record_decisions, scores_on, undecided_azure_model

    db = tmp_path / "lineage.duckdb"
    _evaluated(db, "merged_model", "m1", [1.0, 0.0, 1.0], "evaluation_table")
    _evaluated(db, "azure:ft-1", "a1", [1.0, 1.0, 1.0], "azure_model_evaluation")
    assert scores_on(db, "merged_model", "m1", "s1", "exact_match").per_example == [1.0, 0.0, 1.0]
    assert scores_on(db, "azure_fine_tuned_model", "a1", "s1", "exact_match").main_score == 1.0
    assert scores_on(db, "merged_model", "m1", "another split", "exact_match") is None
    assert undecided_azure_model(db, "s1", "exact_match") == "a1"
    record_decisions(db, [new_row(candidate_asset="azure_fine_tuned_model", candidate_version="a1",
                                  test_split_version="s1", decision="kept", reason="-")])  # fmt: skip
    assert undecided_azure_model(db, "s1", "exact_match") is None, "a decided Azure model is not a candidate again"


# --- through Dagster ------------------------------------------------------------------------------------------


def _run(project: Path, instance: dg.DagsterInstance, lora: dict, selection: list | None = None):
    """Run the main job, or materialize ``selection`` (its upstream loaded from earlier runs)."""
    resources = local_resources(project)
    ops = {
        "raw_examples": {"config": {"folder": str(project / "raw")}},
        "source_documents": {"config": {"folder": str(project / "sources")}},
        "base_model": {"config": TINY_BASE},
        "lora_adapter": {"config": lora},
        "evaluation_table": {"config": TINY_EVALUATION},
    }
    if selection is None:
        job = defs.resolve_job_def("main")
        return job.execute_in_process(instance=instance, resources=resources, run_config={"ops": ops})
    every = [*defs.assets, *defs.asset_checks]
    chosen = {k: v for k, v in ops.items() if dg.AssetKey(k) in selection}
    return dg.materialize(every, selection=selection, instance=instance, resources=resources,
                          run_config={"ops": chosen})  # fmt: skip


def _materialized(result: dg.ExecuteInProcessResult) -> dict[str, dict]:
    return {
        event.asset_key.to_user_string(): event.step_materialization_data.materialization.metadata
        for event in result.get_asset_materialization_events()
    }


def _champion_json(project: Path) -> dict:
    return json.loads((project / "champion" / "champion.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The main job once, then a candidate trained with learning rate 1e-9 (adapter, merged, evaluation, champion)."""
    project = tmp_path_factory.mktemp("champion")
    (project / "raw").mkdir()
    shutil.copy(ROOT / "data" / "raw" / "invoices_2026_h1.jsonl", project / "raw")  # half the shipped data: faster
    shutil.copytree(ROOT / "data" / "sources", project / "sources")
    with dg.DagsterInstance.ephemeral() as instance:
        main = _run(project, instance, TINY_LORA)
        assert main.success
        first = _materialized(main)
        champion_file = _champion_json(project)
        # As on a test split the champion was never scored on: champion_model must re-evaluate it first.
        with duckdb.connect(str(project / "lineage.duckdb")) as connection:
            for table in ("evaluations", "predictions"):
                connection.execute(f"DELETE FROM {table} WHERE model = 'merged_model'")
        candidate = _run(project, instance, {**TINY_LORA, "learning_rate": 1e-9}, CANDIDATE)
        assert candidate.success
        yield project, first, champion_file, _materialized(candidate)


def _cli(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_main_job_makes_the_first_champion(runs):
    _, first, champion_file, _ = runs
    merged = first["merged_model"]["data_version"].value
    metadata = first["champion_model"]
    assert metadata["decision"].value == "promoted" and "no champion yet" in metadata["reason"].value
    assert metadata["champion"].value == f"merged_model@{merged}"
    assert list(metadata)[:4] == ["decision", "reason", "champion", "champion_main_score"]
    decisions = metadata["decisions"]
    assert isinstance(decisions, dg.TableMetadataValue)
    assert [c.name for c in decisions.schema.columns][:2] == ["candidate", "decision"]
    assert decisions.records[0].data["candidate"] == f"merged_model@{merged}"
    assert list(metadata)[-1] == "lineage" and "promotions" in metadata  # lineage sync reads both
    assert champion_file["asset"] == "merged_model" and champion_file["version"] == merged
    assert champion_file["path"] == first["merged_model"]["path"].value


def test_a_candidate_trained_with_a_tiny_learning_rate_is_kept(runs):
    project, first, _, candidate = runs
    champion = first["merged_model"]["data_version"].value
    assert candidate["merged_model"]["data_version"].value != champion
    metadata = candidate["champion_model"]
    assert metadata["decision"].value == "kept", metadata["reason"].value
    assert "does not beat the champion" in metadata["reason"].value
    assert metadata["champion"].value == f"merged_model@{champion}"
    assert candidate["champion_model"]["data_version"].value == first["champion_model"]["data_version"].value
    assert _champion_json(project)["version"] == champion
    with duckdb.connect(str(project / "lineage.duckdb"), read_only=True) as connection:
        rows = connection.execute(
            "SELECT decision, reason, champion_before_version, champion_after_version, champion_score, "
            "candidate_score, test_split_version FROM promotions ORDER BY decided_at DESC"
        ).fetchall()
        rescored = connection.execute(
            "SELECT main_score FROM evaluations WHERE model = 'merged_model (champion)' AND model_version = ?",
            [champion],
        ).fetchall()
    decision, reason, before, after, champion_score, candidate_score, split = rows[0]
    assert (decision, before, after) == ("kept", champion, champion) and reason
    assert split == first["test_split"]["data_version"].value
    evaluated = json.loads(Path(first["evaluation_table"]["path"].value, "evaluations.json").read_text())
    original = next(row["main_score"] for row in evaluated if row["model"] == "merged_model")
    assert rescored == [(champion_score,)], "the champion was re-evaluated on the candidate's test split"
    assert champion_score == pytest.approx(original), "with the same settings as its first evaluation"
    assert candidate_score <= champion_score


def test_champion_cli_json(runs):
    project, first, _, candidate = runs
    printed = json.loads(_cli("champion", "--json", "--db", str(project / "lineage.duckdb")))
    current = printed["current"]
    assert current["asset"] == "merged_model" and current["version"] == first["merged_model"]["data_version"].value
    assert current["main_metric"] == "exact_match" and isinstance(current["main_score"], float)
    assert [row["decision"] for row in printed["history"]] == ["kept", "promoted"]
    newest = printed["history"][0]
    assert newest["candidate_version"] == candidate["merged_model"]["data_version"].value and newest["reason"]
    text = _cli("champion", "--db", str(project / "lineage.duckdb"))
    assert text.startswith(f"champion: merged_model@{current['version']}")


def test_an_adapter_continues_from_the_champions_adapter(runs):
    project, first, _, _ = runs
    upstream = ["raw_examples", "source_documents", "synthetic_examples", "cleaned_examples", "train_split",
                "validation_split", "test_split", "base_model", "lora_adapter"]  # fmt: skip
    with dg.DagsterInstance.ephemeral() as instance:  # the data and base model again: the same versions, reused
        result = _run(project, instance, {**TINY_LORA, "init_from": "champion"}, [dg.AssetKey(a) for a in upstream])
    assert result.success
    metadata = _materialized(result)["lora_adapter"]
    parents = dict(metadata["lineage"].value["parents"])
    champion_adapter = first["lora_adapter"]["data_version"].value
    assert metadata["data_version"].value != champion_adapter
    assert metadata["model_card"].value.count(f"Continued from the champion's adapter lora_adapter@{champion_adapter}")
    assert (
        parents["lora_adapter"] == champion_adapter
        and parents["base_model"] == first["base_model"]["data_version"].value
    )


def test_promote_and_rollback_move_the_stable_path(runs):
    project, first, _, candidate = runs
    db = str(project / "lineage.duckdb")
    champion, other = first["merged_model"], candidate["merged_model"]
    _cli("champion", "promote", other["data_version"].value, "--reason", "try it in production", "--db", db)
    assert _champion_json(project)["version"] == other["data_version"].value
    assert (project / "champion" / "current").resolve() == Path(other["path"].value)
    _cli("champion", "rollback", "--reason", "worse in production", "--db", db)
    assert _champion_json(project)["version"] == champion["data_version"].value
    assert (project / "champion" / "current").resolve() == Path(champion["path"].value)
    history = json.loads(_cli("champion", "--json", "--db", db))["history"]
    assert [(row["decision"], row["override"]) for row in history[:2]] == [("promoted", "rollback"),
                                                                          ("promoted", "promote")]  # fmt: skip
    assert history[0]["reason"] == "manual rollback: worse in production"
    again = CliRunner().invoke(cli, ["champion", "rollback", "--reason", "again", "--db", db])
    assert again.exit_code != 0 and "no earlier champion" in again.output
