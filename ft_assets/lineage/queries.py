"""Questions asked of the lineage database: what a version came from, and what it went into."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ft_assets.lineage.store import connect

_WALK = """
WITH RECURSIVE walk(asset, data_version, depth, via_asset, via_version) AS (
    SELECT ?::VARCHAR, ?::VARCHAR, 0, NULL::VARCHAR, NULL::VARCHAR
    UNION
    SELECT e.{next_asset}, e.{next_version}, walk.depth + 1, walk.asset, walk.data_version
    FROM edges e JOIN walk ON e.{this_asset} = walk.asset AND e.{this_version} = walk.data_version
    WHERE walk.depth < 64
)
SELECT w.asset, w.data_version, min(w.depth) AS depth,
       list(DISTINCT w.via_asset || '@' || w.via_version) FILTER (WHERE w.via_asset IS NOT NULL) AS via,
       any_value(m.code_version) AS code_version, any_value(m.path) AS path,
       max(m.created_at)::VARCHAR AS created_at, any_value(m.config_hash) AS config_hash
FROM walk w
LEFT JOIN materializations m ON m.asset = w.asset AND m.data_version = w.data_version
GROUP BY w.asset, w.data_version
ORDER BY depth, w.asset, w.data_version
"""


class UnknownVersion(LookupError):
    """The asked-for asset or version has no materialization in the lineage database."""


def parse_target(target: str) -> tuple[str, str | None]:
    """Split ``ASSET[@VERSION]``."""
    asset, _, version = target.partition("@")
    return asset, version or None


def latest_version(db: str | Path, asset: str) -> str:
    """Return the data version of the newest materialization of ``asset``."""
    with connect(db, read_only=True) as connection:
        row = connection.execute(
            "SELECT data_version FROM materializations WHERE asset = ? ORDER BY created_at DESC LIMIT 1", [asset]
        ).fetchone()
    if row is None:
        raise UnknownVersion(f"no materialization of {asset!r} is recorded in {db}")
    return row[0]


def _walk(db: str | Path, target: str, upstream: bool) -> list[dict[str, Any]]:
    asset, version = parse_target(target)
    version = version or latest_version(db, asset)
    columns = ("parent_asset", "parent_version", "child_asset", "child_version")
    if not upstream:
        columns = columns[2:] + columns[:2]
    sql = _WALK.format(next_asset=columns[0], next_version=columns[1], this_asset=columns[2], this_version=columns[3])
    with connect(db, read_only=True) as connection:
        cursor = connection.execute(sql, [asset, version])
        names = [d[0] for d in cursor.description]
        rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    if len(rows) == 1 and rows[0]["code_version"] is None and rows[0]["path"] is None:
        raise UnknownVersion(f"{asset}@{version} is not recorded in {db}")
    return rows


def trace(db: str | Path, target: str) -> list[dict[str, Any]]:
    """Return ``target`` and every version upstream of it, nearest first."""
    return _walk(db, target, upstream=True)


def impact(db: str | Path, target: str) -> list[dict[str, Any]]:
    """Return ``target`` and every version made (directly or not) from it, nearest first."""
    return _walk(db, target, upstream=False)


def splits_with_example(db: str | Path, example_id: str) -> list[dict[str, Any]]:
    """Return every split version that holds the example, with where the example came from."""
    with connect(db, read_only=True) as connection:
        cursor = connection.execute(
            "SELECT asset, data_version, position, source_file, source_line, source_example_id "
            "FROM members WHERE example_id = ? ORDER BY asset, data_version",
            [example_id],
        )
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def latest_evaluations(db: str | Path) -> list[dict[str, Any]]:
    """Return the evaluation rows of the newest evaluated test split version, best exact match first."""
    with connect(db, read_only=True) as connection:
        if not connection.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'evaluations'").fetchone()[
            0
        ]:
            return []
        cursor = connection.execute(
            """
            SELECT * EXCLUDE (created_at), created_at::VARCHAR AS created_at FROM evaluations
            WHERE test_split_version = (SELECT test_split_version FROM evaluations ORDER BY created_at DESC LIMIT 1)
            ORDER BY exact_match DESC NULLS LAST, model
            """
        )
        names = [d[0] for d in cursor.description]
        rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    for row in rows:
        row["field_accuracy"] = json.loads(row["field_accuracy"] or "{}")
    return rows
