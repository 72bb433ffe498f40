"""champion_model: the model that serves, promoted only when a candidate beats it on the newest test split."""

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import dagster as dg
from pydantic import Field

from ft_assets.artifacts import ArtifactRef
from ft_assets.code_versions import source_version
from ft_assets.evaluation.assets import COMPARISONS, EvaluationConfig, adapter_beats_baselines
from ft_assets.evaluation.results import read_results
from ft_assets.metadata import reading_order, table
from ft_assets.numbers import finite
from ft_assets.resources import ArtifactStore, LineageStore

if TYPE_CHECKING:
    from ft_assets.champion.rule import ModelScores
    from ft_assets.champion.store import Champion
    from ft_assets.evaluation.metrics import PairedTest

CHAMPION_CODE = source_version(__name__, "champion_model")
IDENTITY = "champion.json"
DECISION_COLUMNS = {"candidate": "string", "decision": "string", "candidate_score": "float", "champion_score": "float",
                    "difference": "float", "p_value": "float", "reason": "string"}  # fmt: skip


class ChampionConfig(dg.Config):
    """How a candidate is judged against the champion, and where the champion is published."""

    rule: Literal["margin", "significant"] = Field(
        "margin",
        description="margin: promote when the candidate's main score beats the champion's by more than `margin`; "
        "significant: also require a significant paired difference (p < 0.05).",
    )
    margin: float = Field(0.0, description="How much higher the candidate's main score must be (a tie keeps).")
    bootstrap_samples: int = Field(2000, description="Resamples of the paired test.")
    seed: int = Field(0, description="Seed of the paired test.")
    stable_path: str | None = Field(
        None, description="Folder that always names the current champion (default: 'champion' beside the artifacts "
        "root, i.e. data/champion).",
    )  # fmt: skip


def _local_candidate(merged: ArtifactRef, evaluation: ArtifactRef) -> "tuple[ModelScores, dict[str, Any]]":
    """Return the merged model's scores in the evaluation, with its evaluations row."""
    from ft_assets.champion.rule import ModelScores
    from ft_assets.champion.store import LOCAL

    rows, predictions = read_results(Path(evaluation.path))
    row = next((r for r in rows if r["model"] == LOCAL), None)
    if row is None or row["model_version"] != merged.version:
        scored = row["model_version"] if row else "no merged model"
        raise dg.Failure(
            f"champion_model: evaluation_table@{evaluation.version} scored {scored}, not the candidate "
            f"merged_model@{merged.version}: materialize evaluation_table with this merged model first"
        )
    mine = sorted((p for p in predictions if p["model"] == LOCAL), key=lambda p: p["position"])
    scores = ModelScores(LOCAL, merged.version, row["main_metric"], row["main_score"], row["ci_low"], row["ci_high"],
                         [p["main_score"] for p in mine])  # fmt: skip
    return scores, row


def _failed_checks(evaluation: ArtifactRef) -> list[str]:
    """Return the candidate's failed blocking gates.

    merged_model_matches_adapter is a blocking check: a merged model that failed it never reaches this
    step. adapter_beats_base is not blocking (so that a weak candidate still gets a decision saying why);
    it is judged here from the evaluation, and blocks promotion at its configured severity error.
    """
    comparisons = json.loads(evaluation.file(COMPARISONS).read_text())
    return [] if adapter_beats_baselines(comparisons) or comparisons["severity"] == "warn" else ["adapter_beats_base"]


def _champion_scores(
    context: dg.AssetExecutionContext,
    champion: "Champion",
    split: str,
    task_row: dict[str, Any],
    evaluation: ArtifactRef,
    lineage: LineageStore,
) -> "ModelScores | None":
    """Return the champion's scores on ``split``; a local champion never scored there is re-evaluated first."""
    from ft_assets.champion import store
    from ft_assets.champion.reevaluate import evaluation_version, score_merged_model
    from ft_assets.champion.rule import ModelScores

    db, wait = lineage.path, lineage.lock_timeout_s
    found = store.scores_on(db, champion.asset, champion.version, split, task_row["main_metric"], wait)
    if found is not None or champion.asset != store.LOCAL:
        return found
    if not champion.path or not Path(champion.path).is_dir():
        raise dg.Failure(
            f"champion_model: the champion {champion.name} must be re-evaluated on test split {split}, but its "
            f"folder {champion.path} is gone: promote another model by hand (ft-assets champion promote VERSION)"
        )
    test = store.materialization(db, "test_split", split, wait)
    if test is None:
        raise dg.Failure(f"champion_model: test split {split} is not in the lineage database: ft-assets lineage sync")
    recorded = store.materialization(db, "evaluation_table", evaluation.version, wait)
    settings = {**EvaluationConfig().model_dump(), **(recorded["config"] if recorded else {})}
    context.log.info(f"champion_model: re-evaluating the champion {champion.name} on test split {split}")
    row, predictions = score_merged_model(champion.path, champion.version, Path(test["path"]) / "data.jsonl",
                                          settings, task_row["task"], context.log.info)  # fmt: skip
    stamp = {"test_split_version": split, "evaluation_version": evaluation_version(row, predictions)}
    lineage.record_evaluations([{**row, **stamp, "evaluated_by": "champion_model", "run_id": context.run.run_id}])
    lineage.record_predictions([{**p, **stamp} for p in predictions])
    return ModelScores(store.LOCAL, champion.version, row["main_metric"], row["main_score"], row["ci_low"],
                       row["ci_high"], [p["main_score"] for p in predictions])  # fmt: skip


def _decide(
    context: dg.AssetExecutionContext,
    config: ChampionConfig,
    candidates: "list[tuple[ModelScores, str | None, list[str]]]",
    split: str,
    task_row: dict[str, Any],
    evaluation: ArtifactRef,
    lineage: LineageStore,
    stable: Path,
) -> "tuple[Champion | None, list[dict[str, Any]]]":
    """Judge each candidate in turn against the champion (a promoted one is the next one's champion).

    Return the champion after all of them and one promotions row per decision.
    """
    from ft_assets.champion import store
    from ft_assets.champion.rule import KEPT, Decision, decide

    history = store.history(lineage.path, lineage.lock_timeout_s)
    champion = store.current_champion(history)
    rolled_back = {(row["champion_before_asset"], row["champion_before_version"]): row["decided_at"]
                   for row in history if row["override"] == "rollback"}  # fmt: skip
    decisions = []
    for candidate, path, failed in candidates:
        theirs = None if champion is None else _champion_scores(context, champion, split, task_row, evaluation,
                                                                lineage)  # fmt: skip
        if (candidate.asset, candidate.version) in rolled_back:  # a person took it out: it does not come back
            decision = Decision(KEPT, f"{candidate.name} was rolled back by hand at "
                                      f"{str(rolled_back[candidate.asset, candidate.version])[:19]}; promote it by "
                                      "hand to bring it back")  # fmt: skip
        elif champion is not None and theirs is None:
            decision = Decision(KEPT, f"the champion {champion.name} has no {candidate.main_metric} score on test "
                                      f"split {split} and cannot be re-evaluated here (evaluate it there with "
                                      "azure_model_evaluation, or promote by hand)")  # fmt: skip
        else:
            decision = decide(candidate, theirs, failed_checks=failed, rule=config.rule, margin=config.margin,
                              samples=config.bootstrap_samples, seed=config.seed)  # fmt: skip
        before = champion
        if decision.promoted:
            champion = store.Champion(candidate.asset, candidate.version, path)
        context.log.info(f"champion_model: {candidate.name} {decision.decision}: {decision.reason}")
        decisions.append(store.new_row(
            candidate_asset=candidate.asset, candidate_version=candidate.version, test_split_version=split,
            main_metric=candidate.main_metric, **store.sides(candidate, before, theirs, champion),
            **_paired(decision.comparison),
            decision=decision.decision, reason=decision.reason, run_id=context.run.run_id, stable_path=str(stable),
        ))  # fmt: skip
    return champion, decisions


def _paired(test: "PairedTest | None") -> dict[str, Any]:
    return {} if test is None else {"difference": test["difference"], "p_value": test["p_value"]}


@dg.asset(
    group_name="deployment",
    code_version=CHAMPION_CODE,
    description="The model that serves. The candidate (the merged model; with Azure credentials also the newest "
    "Azure fine-tune evaluated on the same test split, read from the lineage database's evaluations table, so the "
    "local graph never waits for Azure) is promoted only when its blocking checks passed and it beats the current "
    "champion on the same, newest test split by the main metric (the champion is re-evaluated there first when it "
    "never was), by config margin or a significant paired difference. Every decision goes to the DuckDB promotions "
    "table (ft-assets champion) and to this metadata; data/champion/ always points at the champion's artifacts. The "
    "data version is the champion's identity: an unchanged champion keeps it.",
)
def champion_model(
    context: dg.AssetExecutionContext,
    config: ChampionConfig,
    merged_model: ArtifactRef,
    evaluation_table: ArtifactRef,
    artifacts: ArtifactStore,
    lineage: LineageStore,
) -> dg.Output[ArtifactRef]:
    """Decide on each candidate, record the decisions and point the stable path at the champion."""
    from ft_assets.champion import store

    db, wait = lineage.path, lineage.lock_timeout_s
    local, task_row = _local_candidate(merged_model, evaluation_table)
    split = store.evaluated_split(db, evaluation_table.version, wait)
    if split is None:
        raise dg.Failure(f"champion_model: evaluation_table@{evaluation_table.version} has no rows in {db}: "
                         "materialize evaluation_table (or ft-assets lineage sync)")  # fmt: skip
    stable = Path(config.stable_path or Path(artifacts.root).parent / "champion").resolve()
    candidates = [(local, merged_model.path, _failed_checks(evaluation_table))]
    azure = store.undecided_azure_model(db, split, local.main_metric, wait)
    if azure is not None and (scores := store.scores_on(db, store.AZURE, azure, split, local.main_metric, wait)):
        made = store.materialization(db, store.AZURE, azure, wait)
        candidates.append((scores, made["path"] if made else None, []))
        context.log.info(f"champion_model: the Azure fine-tune {azure} was evaluated on test split {split} too")
    champion, decisions = _decide(context, config, candidates, split, task_row, evaluation_table, lineage, stable)
    store.record_decisions(db, decisions, wait)
    current = store.current_summary(store.history(db, wait))
    if current is not None:
        store.point_stable_path(stable, current)
    with artifacts.stage("champion_model") as staging:
        identity = {"asset": champion and champion.asset, "version": champion and champion.version}
        (staging / IDENTITY).write_text(json.dumps(identity, sort_keys=True))
        ref = artifacts.publish(staging, "champion_model")
    recorded = lineage.record(context, ref, [(champion.asset, champion.version)] if champion else [], config)
    rows = [
        {"candidate": f"{row['candidate_asset']}@{row['candidate_version']}", "decision": row["decision"],
         "reason": row["reason"], **{k: finite(row[k]) for k in ("candidate_score", "champion_score", "difference",
                                                                 "p_value")}}
        for row in decisions
    ]  # fmt: skip
    return dg.Output(
        ref,
        data_version=dg.DataVersion(ref.version),
        metadata=reading_order(
            {
                "decision": decisions[0]["decision"],
                "reason": dg.MetadataValue.md(decisions[0]["reason"]),  # Markdown wraps in the UI; text is cut off
                "champion": champion.name if champion else "none yet",
                **({"champion_main_score": finite(current["main_score"])} if current else {}),
                "decisions": table(rows, DECISION_COLUMNS),
                "main_metric": local.main_metric,
                "test_split_version": split,
                "stable_path": dg.MetadataValue.path(str(stable)),
                "promotions": dg.MetadataValue.json(decisions),  # every field of each decision; lineage sync reads it
            },
            recorded=recorded,
        ),
    )
