"""Rebuild the lineage database from Dagster's event log (every materialization carries its lineage).

Materializations, edges and members come from the event log; evaluation rows, predictions and
fine-tune metrics from the artifact folders the materializations point at.
"""

from __future__ import annotations

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


def lineage_entries(instance: dg.DagsterInstance) -> Iterator[dict[str, Any]]:
    """Yield the ``lineage`` metadata of every materialization in the instance, oldest first."""
    for key in instance.get_asset_keys():
        cursor = None
        while True:
            result = instance.fetch_materializations(key, limit=PAGE, cursor=cursor, ascending=True)
            for event in result.records:
                materialization = event.asset_materialization
                entry = materialization.metadata.get("lineage") if materialization else None
                if entry is not None:
                    yield entry.value
            if not result.has_more:
                break
            cursor = result.cursor


def _restore_results(db: str | Path, m: Materialization, counts: dict[str, int]) -> None:
    """Re-record the evaluation rows, predictions or fine-tune metrics an artifact folder holds."""
    import json

    folder = Path(m.path or "")
    if m.asset in ("evaluation_table", "azure_model_evaluation") and (folder / "evaluations.json").exists():
        stamp = {"test_split_version": dict(m.parents).get("test_split"), "evaluation_version": m.data_version}
        rows = json.loads((folder / "evaluations.json").read_text())
        record_evaluations(db, [{**row, **stamp, "evaluated_by": m.asset, "run_id": m.run_id,
                                 "created_at": m.created_at} for row in rows])  # fmt: skip
        counts["evaluations"] += len(rows)
        predictions = _predictions(folder)
        record_predictions(db, [{**row, **stamp} for row in predictions])
        counts["predictions"] += len(predictions)
    elif m.asset == "azure_fine_tuned_model" and (folder / "metrics.json").exists():
        metrics = json.loads((folder / "metrics.json").read_text())
        job_id = json.loads((folder / "model.json").read_text())["job_id"]
        record_fine_tune_metrics(db, m.data_version, job_id, metrics)
        counts["fine_tune_metrics"] += len(metrics)


def _predictions(folder: Path) -> list[dict[str, Any]]:
    import json

    import pyarrow.parquet as pq

    if (folder / "predictions.parquet").exists():
        rows = pq.read_table(folder / "predictions.parquet").to_pylist()
        return [{**row, "scores": json.loads(row["scores"])} for row in rows]
    if (folder / "predictions.json").exists():
        return json.loads((folder / "predictions.json").read_text())
    return []


def sync(instance: dg.DagsterInstance, db: str | Path) -> dict[str, int]:
    """Re-record every materialization found in the event log, and the results its artifact holds; return counts."""
    import pyarrow.parquet as pq

    counts = {"materializations": 0, "members_missing": 0, "evaluations": 0, "predictions": 0, "fine_tune_metrics": 0}
    for entry in lineage_entries(instance):
        materialization = Materialization.from_dict(entry)
        members = None
        if materialization.members_file:
            if Path(materialization.members_file).exists():
                members = pq.read_table(materialization.members_file)
            else:
                counts["members_missing"] += 1
        record(db, materialization, members)
        _restore_results(db, materialization, counts)
        counts["materializations"] += 1
    return counts
