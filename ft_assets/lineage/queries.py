"""Questions asked of the lineage database: what a version came from, and what it went into."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath
from typing import Any

from ft_assets.lineage.store import connect, connect_current

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


MEMBER_COLUMNS = "asset, data_version, example_id, group_id, source_file, source_line, source_example_id"
MODEL_ASSETS = ("base_model", "lora_adapter", "merged_model", "azure_fine_tuned_model", "champion_model")
CLEANED_ASSET = "cleaned_examples"
REJECTED_FILE = "rejected.jsonl"
REJECTION_VERSIONS = 5

_DOWNSTREAM = """
WITH RECURSIVE walk(start_asset, start_version, asset, data_version, depth) AS (
    SELECT a, v, a, v, 0 FROM (SELECT unnest(?::VARCHAR[]) AS a, unnest(?::VARCHAR[]) AS v)
    UNION
    SELECT w.start_asset, w.start_version, e.child_asset, e.child_version, w.depth + 1
    FROM edges e JOIN walk w ON e.parent_asset = w.asset AND e.parent_version = w.data_version
    WHERE w.depth < 64
)
SELECT DISTINCT start_asset, start_version, asset, data_version FROM walk
WHERE list_contains(?::VARCHAR[], asset) ORDER BY asset, data_version
"""


class AmbiguousFile(LookupError):
    """A file name given by a user matches several recorded input files."""


def _dicts(cursor: Any) -> list[dict[str, Any]]:
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _members(connection: Any, where: str, params: list[Any]) -> list[dict[str, Any]]:
    sql = f"SELECT {MEMBER_COLUMNS} FROM members WHERE {where} ORDER BY asset, data_version, source_file, source_line"
    return _dicts(connection.execute(sql, params))


def splits_with_example(db: str | Path, example_id: str) -> list[dict[str, Any]]:
    """Return every split version that holds the example, with where the example came from."""
    with connect_current(db) as connection:
        return _members(connection, "example_id = ?", [example_id])


def _with_models(connection: Any, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add to each member row the model versions made (directly or not) from its split version."""
    starts = sorted({(row["asset"], row["data_version"]) for row in rows})
    models: dict[tuple[str, str], list[str]] = {start: [] for start in starts}
    if starts:
        cursor = connection.execute(_DOWNSTREAM, [[a for a, _ in starts], [v for _, v in starts], list(MODEL_ASSETS)])
        for start_asset, start_version, asset, version in cursor.fetchall():
            models[(start_asset, start_version)].append(f"{asset}@{version}")
    return [{**row, "models": models[(row["asset"], row["data_version"])]} for row in rows]


def parse_location(target: str) -> tuple[str, int] | None:
    """Split ``FILE:LINE`` (LINE a positive integer); None when ``target`` has no such shape."""
    file, separator, line = target.rpartition(":")
    if separator and file and line.isdigit() and int(line) > 0:
        return file, int(line)
    return None


def match_file(given: str, recorded: Iterable[str]) -> list[str]:
    """Return the recorded input file names that ``given`` names.

    Tried in order: the name exactly as recorded; the same file as a path relative to the
    working directory (recorded relative paths are read from it too); a unique ending of whole
    path components (``x.jsonl``, ``raw/x.jsonl``). Several recorded spellings of one file all match.
    """
    names = sorted(set(recorded))
    if given in names:
        return [given]
    wanted = Path(given).expanduser().resolve()
    same = [name for name in names if Path(name).resolve() == wanted]
    if same:
        return same
    parts = PurePosixPath(given).parts
    ending = [name for name in names if parts and PurePosixPath(name).parts[-len(parts) :] == parts]
    if len({Path(name).resolve() for name in ending}) > 1:
        raise AmbiguousFile(
            f"{given!r} matches several recorded input files: {', '.join(ending)}; give more of the path"
        )
    return ending


def _recorded_files(connection: Any) -> set[str]:
    """Return the input files named in the members table and, as ``file:<path>`` parents, in the edges table."""
    rows = connection.execute(
        "SELECT DISTINCT source_file FROM member_spans WHERE source_file IS NOT NULL "
        "UNION SELECT DISTINCT parent_asset[6:] FROM edges WHERE starts_with(parent_asset, 'file:')"
    ).fetchall()
    return {row[0] for row in rows}


def cleaned_versions(db: str | Path, limit: int = REJECTION_VERSIONS) -> list[dict[str, Any]]:
    """Return the newest ``limit`` versions of cleaned_examples with their artifact folder, newest first."""
    with connect(db, read_only=True) as connection:
        rows = connection.execute(
            "SELECT data_version, list(path ORDER BY created_at DESC) FILTER (WHERE path IS NOT NULL) "
            "FROM materializations WHERE asset = ? GROUP BY data_version ORDER BY max(created_at) DESC LIMIT ?",
            [CLEANED_ASSET, limit],
        ).fetchall()
    versions = []
    for version, paths in rows:
        folder = next((p for p in paths or [] if Path(p, REJECTED_FILE).is_file()), None)
        versions.append({"data_version": version, "path": folder})
    return versions


def rejected_records(folder: str | Path, needle: str, keep: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    """Return the records of ``folder``/rejected.jsonl that hold ``needle`` in their text and pass ``keep``."""
    found = []
    key = needle.encode()
    with open(Path(folder, REJECTED_FILE), "rb") as handle:
        for raw_line in handle:
            if key in raw_line:
                record = json.loads(raw_line)
                if keep(record):
                    found.append(record)
    return found


def _has_id(record: dict[str, Any], example_id: str) -> bool:
    """Tell whether the rejected row, read as a JSON object, has ``id`` equal to ``example_id``."""
    try:
        row = json.loads(record.get("raw") or "")
    except ValueError:
        return False
    value = row.get("id") if isinstance(row, dict) else None
    return value == example_id or (type(value) is int and str(value) == example_id)


def _needle(example_id: str) -> str:
    """Return text that every rejected line holding this id contains (empty when escaping could hide it)."""
    return example_id if all(c.isalnum() or c in "-_.:/@+ " for c in example_id) else ""


def find_example(db: str | Path, target: str, versions: int = REJECTION_VERSIONS) -> dict[str, Any]:
    """Say where an example (an id, or the ``FILE:LINE`` it was read from) ended up.

    ``status`` is ``kept`` (``splits``: every split version holding it, with the model versions
    made from each), ``rejected`` (``rejected``: the records of the newest cleaned_examples version
    that rejected it, with reasons) or ``not_found`` (``message`` says what was searched).
    """
    location = parse_location(target)
    if location is not None:
        found = _find_location(db, target, *location, versions)
        if found is not None:
            return found
    return _find_id(db, target, versions, unmatched_file=location[0] if location else None)


def _result(target: str, kind: str, **fields: Any) -> dict[str, Any]:
    status = "kept" if fields.get("splits") else "rejected" if fields.get("rejected") else "not_found"
    return {"target": target, "kind": kind, "status": status, "splits": [], "rejected": [], **fields}


def _newest_hits(scans: list[tuple[dict[str, Any], list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    """Return the records of the newest scanned version that has any, tagged with that version."""
    for version, records in scans:
        if records:
            return [{"cleaned_examples": version["data_version"], **record} for record in records]
    return []


def _searched(searched: list[dict[str, Any]], finding: str) -> str:
    """Return, in words, that the rejection search over ``searched`` found nothing."""
    if not searched:
        return f"no {CLEANED_ASSET} version is recorded to say whether it was rejected"
    missing = sum(1 for v in searched if not v["path"])
    gone = f" ({missing} of them no longer on disk)" if missing else ""
    return f"no rejected.jsonl of the {len(searched)} newest {CLEANED_ASSET} version(s){gone} {finding}"


def _find_location(db: str | Path, target: str, file: str, line: int, versions: int) -> dict[str, Any] | None:
    with connect_current(db) as connection:
        known = _recorded_files(connection)
        files = match_file(file, known)
        rows = _members(connection, "list_contains(?::VARCHAR[], source_file) AND source_line = ?", [files, line])
        if rows:
            return _result(target, "location", files=files, line=line, splits=_with_models(connection, rows))
    searched = cleaned_versions(db, versions)
    scans = [
        (v, rejected_records(v["path"], str(line), lambda r: r.get("line") == line) if v["path"] else [])
        for v in searched
    ]
    if not files:
        files = match_file(file, known | {r["file"] for _, records in scans for r in records})
        if not files:
            return None
    hits = _newest_hits([(v, [r for r in records if r.get("file") in files]) for v, records in scans])
    result = _result(target, "location", files=files, line=line, rejected=hits, searched=searched)
    if not hits:
        result["message"] = (
            f"{target} is in no split version, and {_searched(searched, 'lists it')} "
            "(past the end of the file, or splits not materialized yet?)"
        )
    return result


def _find_id(db: str | Path, example_id: str, versions: int, unmatched_file: str | None) -> dict[str, Any]:
    with connect_current(db) as connection:
        rows = _members(connection, "example_id = ?", [example_id])
        if rows:
            return _result(example_id, "id", example_id=example_id, splits=_with_models(connection, rows))
    searched = cleaned_versions(db, versions)
    hits: list[dict[str, Any]] = []
    for version in (v for v in searched if v["path"]):  # newest first: stop at the first that rejected it
        records = rejected_records(version["path"], _needle(example_id), lambda r: _has_id(r, example_id))
        if hits := _newest_hits([(version, records)]):
            break
    result = _result(example_id, "id", example_id=example_id, rejected=hits, searched=searched)
    if not hits:
        prefix = f"no recorded input file matches {unmatched_file!r}, and " if unmatched_file else ""
        result["message"] = (
            f"{prefix}example {example_id!r} is in no split version, and "
            f"{_searched(searched, 'has a row with that id')}"
        )
    return result


def latest_evaluations(db: str | Path) -> list[dict[str, Any]]:
    """Return the evaluation rows of the newest evaluated test split version, best main score first.

    A model version evaluated more than once there (another evaluation config) shows its newest row.

    Each row has ``main_metric``, ``main_score``, ``ci_low``, ``ci_high`` and ``metrics`` (every
    metric by name), besides latency, tokens and cost.
    """
    with connect_current(db) as connection:
        if not connection.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'evaluations'").fetchone()[
            0
        ]:
            return []
        cursor = connection.execute(
            """
            SELECT * EXCLUDE (created_at), created_at::VARCHAR AS created_at FROM evaluations
            WHERE test_split_version = (SELECT test_split_version FROM evaluations ORDER BY created_at DESC LIMIT 1)
            QUALIFY row_number() OVER (PARTITION BY model, model_version ORDER BY created_at DESC) = 1
            ORDER BY coalesce(main_score, exact_match) DESC NULLS LAST, model
            """
        )
        names = [d[0] for d in cursor.description]
        rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    for row in rows:
        row["field_accuracy"] = json.loads(row["field_accuracy"] or "{}")
        row["metrics"] = json.loads(row["metrics"] or "{}") or {"exact_match": row["exact_match"]}
        if row["main_metric"] is None:  # a row written before main metrics existed
            row["main_metric"], row["main_score"] = "exact_match", row["exact_match"]
    return rows


def predictions(db: str | Path, model: str, *, worst: int | None = None) -> list[dict[str, Any]]:
    """Return the predictions of ``model`` (a name or its start, e.g. ``lora``) on the newest test split it was run on.

    With ``worst``, only the ``worst`` lowest-scoring examples, lowest first; else in test order.
    An exact model name wins over names that start with ``model``; among those, the newest, then by name.
    """
    with connect_current(db) as connection:
        if not connection.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'predictions'").fetchone()[
            0
        ]:
            return []
        cursor = connection.execute(
            """
            WITH latest AS (
                SELECT model, model_version, test_split_version, evaluation_version FROM evaluations
                WHERE model = ? OR starts_with(model, ?)
                ORDER BY model = ? DESC, created_at DESC, model LIMIT 1
            )
            SELECT p.* FROM predictions p
            JOIN latest USING (model, model_version, test_split_version, evaluation_version)
            ORDER BY CASE WHEN ? THEN p.main_score END ASC NULLS LAST, p.position
            """,
            [model, model, model, worst is not None],
        )
        names = [d[0] for d in cursor.description]
        rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    for row in rows:
        row["scores"] = json.loads(row["scores"] or "{}")
    return rows[:worst] if worst is not None else rows
