"""Which models were trained on an example, and what changed between two model versions.

A model's training data is the members of the training split versions upstream of it, walked
through every edge except those into an evaluation (an evaluation reads a split, it does not
train on it; ``champion_model`` reaches its training data through ``merged_model``). The README
documents both questions as SQL (its models query is ``MODELS_SQL`` with a plainer result; its
diff query is the plain form of what ``diff`` computes along a path that reads only what
differs); a test checks that they agree.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ft_assets.lineage.queries import MODEL_ASSETS, UnknownVersion, parse_target
from ft_assets.lineage.store import connect_current, sql_literal

TRAINING_SPLITS = ("train_split", "validation_split")
NOT_TRAINING = ("evaluation_table", "azure_model_evaluation")


def _sql_list(values: tuple[str, ...]) -> str:
    return "(" + ", ".join(sql_literal(v) for v in values) + ")"


MODELS_SQL = f"""
WITH RECURSIVE own AS MATERIALIZED (  -- the example's member rows (an index lookup)
    SELECT * FROM member_spans WHERE example_id = $example_id
), variants AS MATERIALIZED (  -- those of its synthetic variants
    SELECT * FROM member_spans WHERE source_example_id = $example_id
), held AS (  -- the split versions holding them
    SELECT v.asset, v.data_version, s.example_id
    FROM (FROM own UNION ALL FROM variants) s
    JOIN member_sets v ON v.asset = s.asset AND v.seq BETWEEN s.first_seq AND s.last_seq
), walk(asset, data_version, split, example_id) AS (  -- everything made from them, evaluations left out
    SELECT asset, data_version, asset || '@' || data_version, example_id FROM held
    WHERE asset IN {_sql_list(TRAINING_SPLITS)}
    UNION
    SELECT e.child_asset, e.child_version, walk.split, walk.example_id
    FROM edges e JOIN walk ON e.parent_asset = walk.asset AND e.parent_version = walk.data_version
    WHERE e.child_asset NOT IN {_sql_list(NOT_TRAINING)}
)
SELECT w.asset, w.data_version,
       list(DISTINCT w.split ORDER BY w.split) AS splits,
       bool_or(w.example_id = $example_id) AS direct,
       coalesce(list(DISTINCT w.example_id ORDER BY w.example_id) FILTER (WHERE w.example_id <> $example_id),
                []) AS variants,
       min(m.created_at)::VARCHAR AS created_at, any_value(m.path) AS path
FROM walk w LEFT JOIN materializations m USING (asset, data_version)
WHERE w.asset IN {_sql_list(MODEL_ASSETS)}
GROUP BY w.asset, w.data_version
ORDER BY created_at, w.asset, w.data_version
"""

# The versions (their ``seq``) of the training splits upstream of each side.
SIDES_SQL = f"""
WITH RECURSIVE up(side, asset, data_version) AS (
    SELECT * FROM (VALUES ('a', $a_asset, $a_version), ('b', $b_asset, $b_version)) t(side, asset, data_version)
    UNION
    SELECT up.side, e.parent_asset, e.parent_version
    FROM edges e JOIN up ON e.child_asset = up.asset AND e.child_version = up.data_version
    WHERE e.parent_asset NOT IN {_sql_list(NOT_TRAINING)}
)
SELECT DISTINCT up.side, v.asset, v.seq FROM up JOIN member_sets v USING (asset, data_version)
WHERE v.asset IN {_sql_list(TRAINING_SPLITS)}
ORDER BY ALL
"""

# Members held by one side only (one scan of member_spans: each member row has one span of
# versions), plus the members both hold of an example those touch (found by ``example_key``, the
# MD5 of the id, so that their ids are never read); then per example each side's content hashes
# (as a min and max, and as sorted lists only where a side holds several). Members both sides
# share make no difference by themselves, so the work follows what differs.
EXAMPLES_SQL = """
WITH one_side AS (
    SELECT example_key, example_id, ({a}) AS in_a, ({b}) AS in_b, content_hash FROM member_spans
    WHERE ({a}) <> ({b})
), touched AS (
    FROM one_side
    UNION ALL
    SELECT example_key, NULL, TRUE, TRUE, content_hash FROM member_spans
    WHERE ({a}) AND ({b}) AND example_key IN (SELECT example_key FROM one_side)
), sides AS (
    SELECT example_key, any_value(example_id) AS example_id, bool_or(in_a) AS in_a, bool_or(in_b) AS in_b,
           min(content_hash) FILTER (WHERE in_a) AS a_min, max(content_hash) FILTER (WHERE in_a) AS a_max,
           min(content_hash) FILTER (WHERE in_b) AS b_min, max(content_hash) FILTER (WHERE in_b) AS b_max
    FROM touched GROUP BY example_key
), several AS (  -- examples a side holds with more than one content: compare the sets
    SELECT example_key, list_sort(list_distinct(list(content_hash) FILTER (WHERE in_a)))
                        <> list_sort(list_distinct(list(content_hash) FILTER (WHERE in_b))) AS differ
    FROM touched
    WHERE example_key IN (SELECT example_key FROM sides WHERE a_min <> a_max OR b_min <> b_max)
    GROUP BY example_key
), changes AS (
    SELECT s.example_id,
           CASE WHEN NOT s.in_b THEN 'removed' WHEN NOT s.in_a THEN 'added'
                WHEN s.a_min IS NOT NULL AND s.b_min IS NOT NULL AND coalesce(several.differ, s.a_min <> s.b_min)
                THEN 'changed' END AS change
    FROM sides s LEFT JOIN several USING (example_key)
)
SELECT change, list(example_id ORDER BY example_id) FROM changes WHERE change IS NOT NULL GROUP BY change
"""


def _held_by(versions: list[tuple[str, int]]) -> str:
    """Return a condition on ``member_spans`` rows: the member is in one of these (asset, seq) versions."""
    terms = [f"(asset = {sql_literal(asset)} AND {int(seq)} BETWEEN first_seq AND last_seq)" for asset, seq in versions]
    return " OR ".join(terms) or "FALSE"


def _dicts(cursor: Any) -> list[dict[str, Any]]:
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


class AmbiguousVersion(LookupError):
    """A bare version id names versions of several assets."""


def models_with_example(db: str | Path, example_id: str) -> list[dict[str, Any]]:
    """Return every model version whose training data held ``example_id`` or a synthetic variant of it.

    Each row: ``asset``, ``data_version``, ``splits`` (the training split versions it came
    through), ``direct`` (the example itself was there), ``variants`` (ids of variants that were),
    ``created_at`` and ``path``. Oldest first.
    """
    with connect_current(db) as connection:
        return _dicts(connection.execute(MODELS_SQL, {"example_id": example_id}))


def resolve(connection: Any, target: str) -> tuple[str, str]:
    """Return (asset, version) for ``ASSET@VERSION``, ``ASSET`` (its newest version) or a version id of one asset."""
    asset, version = parse_target(target)
    if version is not None:
        return asset, version
    assets = [row[0] for row in connection.execute(
        "SELECT DISTINCT asset FROM materializations WHERE data_version = ? ORDER BY asset", [target]
    ).fetchall()]  # fmt: skip
    if len(assets) > 1:
        raise AmbiguousVersion(f"version {target} belongs to {', '.join(assets)}: write ASSET@{target}")
    if assets:
        return assets[0], target
    newest = connection.execute(
        "SELECT data_version FROM materializations WHERE asset = ? ORDER BY created_at DESC LIMIT 1", [target]
    ).fetchone()
    if newest is None:
        raise UnknownVersion(f"{target} is neither a recorded version nor an asset with a recorded materialization")
    return target, newest[0]


def _materialization(connection: Any, asset: str, version: str) -> dict[str, Any]:
    rows = _dicts(connection.execute(
        "SELECT code_version, config_json, libraries, device, run_id, path, created_at::VARCHAR AS created_at "
        "FROM materializations WHERE asset = ? AND data_version = ? ORDER BY created_at DESC LIMIT 1",
        [asset, version],
    ))  # fmt: skip
    if not rows:
        raise UnknownVersion(f"{asset}@{version} is not recorded")
    row = rows[0]
    row["config"] = json.loads(row.pop("config_json") or "{}")
    row["libraries"] = json.loads(row["libraries"] or "{}")
    return row


def _side_by_side(a: dict[str, Any], b: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Return ``{key: {"a": ..., "b": ...}}`` for every key whose values differ."""
    return {key: {"a": a.get(key), "b": b.get(key)} for key in sorted(a.keys() | b.keys()) if a.get(key) != b.get(key)}


UPSTREAM_SQL = """
WITH RECURSIVE up(asset, data_version) AS (
    SELECT $asset::VARCHAR, $version::VARCHAR
    UNION
    SELECT e.parent_asset, e.parent_version
    FROM edges e JOIN up ON e.child_asset = up.asset AND e.child_version = up.data_version
)
SELECT asset, list(data_version ORDER BY data_version) FROM up
WHERE asset <> $asset OR data_version <> $version
GROUP BY asset ORDER BY asset
"""


def _upstream(connection: Any, asset: str, version: str) -> dict[str, list[str]]:
    """Return, per upstream asset, the versions ``asset@version`` was made from (itself left out)."""
    return dict(connection.execute(UPSTREAM_SQL, {"asset": asset, "version": version}).fetchall())


EVALUATION_FIELDS = ("model", "test_split_version", "main_metric", "main_score", "ci_low", "ci_high", "n")


def _evaluations(connection: Any, version: str) -> list[dict[str, Any]]:
    return _dicts(connection.execute(
        f"SELECT {', '.join(EVALUATION_FIELDS)}, created_at::VARCHAR AS created_at FROM evaluations "
        "WHERE model_version = ? QUALIFY row_number() OVER (PARTITION BY model, test_split_version "
        "ORDER BY created_at DESC) = 1 ORDER BY test_split_version, model",
        [version],
    ))  # fmt: skip


def _scores(a_rows: list[dict[str, Any]], b_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pair the evaluation rows of both sides by test split version and evaluated model name."""
    keyed: dict[tuple[str, str], dict[str, Any]] = {}
    for side, rows in (("a", a_rows), ("b", b_rows)):
        for row in rows:
            entry = keyed.setdefault((row["test_split_version"], row["model"]), {
                "test_split_version": row["test_split_version"], "model": row["model"], "a": None, "b": None,
            })  # fmt: skip
            entry[side] = {k: row[k] for k in ("main_metric", "main_score", "ci_low", "ci_high", "n", "created_at")}
    return [keyed[key] for key in sorted(keyed)]


def diff(db: str | Path, a: str, b: str) -> dict[str, Any]:
    """Compare two model versions: training examples, configuration, code, libraries, upstream versions, scores.

    ``examples_added`` are example ids in B's training splits and not in A's, ``examples_removed``
    the reverse, ``examples_changed`` those in both with other content (both content hashes known).
    ``a`` and ``b`` describe each side (code version, device, library versions, run, path);
    ``training_splits``, ``config``, ``libraries`` and ``upstream`` hold only what differs, as
    ``{key: {"a": ..., "b": ...}}``; ``evaluations`` every score of either side, paired by test
    split version and evaluated model.
    """
    with connect_current(db) as connection:
        (a_asset, a_version), (b_asset, b_version) = resolve(connection, a), resolve(connection, b)
        first, second = (
            _materialization(connection, a_asset, a_version),
            _materialization(connection, b_asset, b_version),
        )
        params = {"a_asset": a_asset, "a_version": a_version, "b_asset": b_asset, "b_version": b_version}
        sides = connection.execute(SIDES_SQL, params).fetchall()
        held = {side: _held_by([(asset, seq) for s, asset, seq in sides if s == side]) for side in ("a", "b")}
        changes = dict(connection.execute(EXAMPLES_SQL.format(**held)).fetchall())
        scores = _scores(_evaluations(connection, a_version), _evaluations(connection, b_version))
        upstream_a, upstream_b = _upstream(connection, a_asset, a_version), _upstream(connection, b_asset, b_version)
    return {
        "a": {"asset": a_asset, "data_version": a_version, **_summary(first)},
        "b": {"asset": b_asset, "data_version": b_version, **_summary(second)},
        "examples_added": changes.get("added", []),
        "examples_removed": changes.get("removed", []),
        "examples_changed": changes.get("changed", []),
        "training_splits": _side_by_side(
            {k: v for k, v in upstream_a.items() if k in TRAINING_SPLITS},
            {k: v for k, v in upstream_b.items() if k in TRAINING_SPLITS},
        ),
        "config": _side_by_side(first["config"], second["config"]),
        "libraries": _side_by_side(first["libraries"], second["libraries"]),
        "upstream": _side_by_side(upstream_a, upstream_b),
        "evaluations": scores,
    }


def _summary(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in ("code_version", "device", "libraries", "run_id", "path", "created_at")}
