"""Rebuild the lineage database from Dagster's event log (every materialization carries its lineage).

Materializations, edges, members and champion decisions come from the event log; evaluation
rows, predictions and fine-tune metrics from the artifact folders the materializations point at. The event log is the
one of the Dagster instance that ``DAGSTER_HOME`` names, whatever the working directory.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg

from ft_assets.lineage.store import (
    Materialization,
    record,
    record_evaluations,
    record_fine_tune_metrics,
    record_predictions,
)

PAGE = 500


class NoEventLog(Exception):
    """There is no Dagster event log to rebuild the lineage database from."""


def dagster_home() -> Path:
    """Return the folder ``DAGSTER_HOME`` names; raise ``NoEventLog`` saying what to do when it holds no instance."""
    home = os.environ.get("DAGSTER_HOME")
    fix = "set DAGSTER_HOME to the project folder (the one with dagster.yaml), where Dagster keeps its event log"
    if not home:
        raise NoEventLog(f"DAGSTER_HOME is not set: {fix}")
    if not (Path(home).expanduser() / "dagster.yaml").is_file():
        raise NoEventLog(f"DAGSTER_HOME={home} holds no dagster.yaml, so no Dagster instance: {fix}")
    return Path(home).expanduser()


def recorded_materializations(instance: dg.DagsterInstance) -> Iterator[dict[str, Any]]:
    """Yield the metadata (values) of every materialization in the instance that carries lineage, oldest first."""
    for key in instance.get_asset_keys():
        cursor = None
        while True:
            result = instance.fetch_materializations(key, limit=PAGE, cursor=cursor, ascending=True)
            for event in result.records:
                materialization = event.asset_materialization
                if materialization and "lineage" in materialization.metadata:
                    yield {name: value.value for name, value in materialization.metadata.items()}
            if not result.has_more:
                break
            cursor = result.cursor


def _restore_results(db: str | Path, m: Materialization, counts: dict[str, int]) -> None:
    """Re-record the evaluation rows, predictions or fine-tune metrics an artifact folder holds."""
    import json

    from ft_assets.evaluation.results import RESULTS, read_results

    folder = Path(m.path or "")
    if m.asset in ("evaluation_table", "azure_model_evaluation") and (folder / RESULTS).exists():
        stamp = {"test_split_version": dict(m.parents).get("test_split"), "evaluation_version": m.data_version}
        rows, predictions = read_results(folder)
        record_evaluations(db, [{**row, **stamp, "evaluated_by": m.asset, "run_id": m.run_id,
                                 "created_at": m.created_at} for row in rows])  # fmt: skip
        counts["evaluations"] += len(rows)
        record_predictions(db, [{**row, **stamp} for row in predictions])
        counts["predictions"] += len(predictions)
    elif m.asset == "azure_fine_tuned_model" and (folder / "metrics.json").exists():
        metrics = json.loads((folder / "metrics.json").read_text())
        job_id = json.loads((folder / "model.json").read_text())["job_id"]
        record_fine_tune_metrics(db, m.data_version, job_id, metrics)
        counts["fine_tune_metrics"] += len(metrics)


def sync(instance: dg.DagsterInstance, db: str | Path) -> dict[str, int]:
    """Re-record every materialization found in the event log, and the results its artifact holds; return counts."""
    import pyarrow.parquet as pq

    from ft_assets.champion.store import record_decisions

    counts = {"materializations": 0, "members_missing": 0, "evaluations": 0, "predictions": 0, "fine_tune_metrics": 0,
              "promotions": 0}  # fmt: skip
    for metadata in recorded_materializations(instance):
        materialization = Materialization.from_dict(metadata["lineage"])
        members = None
        if materialization.members_file:
            if Path(materialization.members_file).exists():
                members = pq.read_table(materialization.members_file)
            else:
                counts["members_missing"] += 1
        record(db, materialization, members)
        _restore_results(db, materialization, counts)
        if decisions := metadata.get("promotions"):  # champion_model's decisions (hand overrides are not events)
            record_decisions(db, decisions)
            counts["promotions"] += len(decisions)
        counts["materializations"] += 1
    return counts
