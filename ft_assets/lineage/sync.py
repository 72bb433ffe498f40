"""Rebuild the lineage database from Dagster's event log (every materialization carries its lineage)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg

from ft_assets.lineage.store import Materialization, record

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


def sync(instance: dg.DagsterInstance, db: str | Path) -> dict[str, int]:
    """Re-record every materialization found in the event log; return how many, and how many lacked files."""
    import pyarrow.parquet as pq

    counts = {"materializations": 0, "members_missing": 0}
    for entry in lineage_entries(instance):
        materialization = Materialization.from_dict(entry)
        members = None
        if materialization.members_file:
            if Path(materialization.members_file).exists():
                members = pq.read_table(materialization.members_file)
            else:
                counts["members_missing"] += 1
        record(db, materialization, members)
        counts["materializations"] += 1
    return counts
