"""The champion's records: the DuckDB ``promotions`` table, scores looked up for the rule, and the stable path.

``promotions`` holds one row per decision (by the rule or by hand): when, the candidate, the champion
before and after, both scores with their 95% intervals on the same test split version, the decision
and its reason, and whether it was a manual override (``override``: ``promote`` or ``rollback``).
The newest row names the current champion. The same rows go into champion_model's materialization
metadata, so the table can be rebuilt from Dagster's event log.

The stable path (default ``data/champion/``) always names the current champion: ``champion.json``
(asset, version, artifact path, score) replaced atomically, and a symlink ``current`` to the artifact
folder, replaced atomically where the file system has symlinks. Nothing here imports dagster.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ft_assets.champion.rule import PROMOTED, ModelScores
from ft_assets.lineage.store import connect
from ft_assets.numbers import finite

SCHEMA = """
CREATE TABLE IF NOT EXISTS promotions (
    decision_id VARCHAR PRIMARY KEY,
    decided_at TIMESTAMPTZ NOT NULL,
    candidate_asset VARCHAR NOT NULL,
    candidate_version VARCHAR NOT NULL,
    test_split_version VARCHAR,
    main_metric VARCHAR,
    candidate_score DOUBLE,
    candidate_ci_low DOUBLE,
    candidate_ci_high DOUBLE,
    champion_before_asset VARCHAR,
    champion_before_version VARCHAR,
    champion_score DOUBLE,
    champion_ci_low DOUBLE,
    champion_ci_high DOUBLE,
    difference DOUBLE,
    p_value DOUBLE,
    champion_after_asset VARCHAR,
    champion_after_version VARCHAR,
    champion_after_path VARCHAR,
    decision VARCHAR NOT NULL,
    reason VARCHAR NOT NULL,
    override VARCHAR,
    run_id VARCHAR,
    stable_path VARCHAR
);
"""
COLUMNS = (
    "decision_id", "decided_at", "candidate_asset", "candidate_version", "test_split_version", "main_metric",
    "candidate_score", "candidate_ci_low", "candidate_ci_high", "champion_before_asset", "champion_before_version",
    "champion_score", "champion_ci_low", "champion_ci_high", "difference", "p_value", "champion_after_asset",
    "champion_after_version", "champion_after_path", "decision", "reason", "override", "run_id", "stable_path",
)  # fmt: skip
# Which evaluations rows score a model of each asset (the champion's re-evaluation is "merged_model (champion)").
LOCAL = "merged_model"
AZURE = "azure_fine_tuned_model"
REEVALUATED = "merged_model (champion)"
MODEL_ROWS = {LOCAL: f"model IN ('{LOCAL}', '{REEVALUATED}')", AZURE: "model LIKE 'azure:%'"}
CHAMPION_FILE = "champion.json"
CURRENT_LINK = "current"


@dataclass(frozen=True)
class Champion:
    """A model that serves (or may): its asset, data version and artifact folder."""

    asset: str
    version: str
    path: str | None

    @property
    def name(self) -> str:
        """``asset@version``."""
        return f"{self.asset}@{self.version}"


def _has_promotions(connection: Any) -> bool:
    return bool(
        connection.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'promotions'").fetchone()[0]
    )


def _dicts(cursor: Any) -> list[dict[str, Any]]:
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def new_row(**values: Any) -> dict[str, Any]:
    """Return a promotions row: a new id, the time now, ``values``, every other column None."""
    row = dict.fromkeys(COLUMNS)
    row.update(decision_id=uuid.uuid4().hex, decided_at=datetime.now(UTC).isoformat(), **values)
    return {column: finite(value) for column, value in row.items()}


def sides(
    candidate: ModelScores | None, before: Champion | None, theirs: ModelScores | None, after: Champion | None
) -> dict[str, Any]:
    """Return the promotions columns of the candidate's scores, the champion before (with its scores) and after."""
    columns: dict[str, Any] = {}
    if candidate is not None:
        columns.update(candidate_score=candidate.main_score, candidate_ci_low=candidate.ci_low,
                       candidate_ci_high=candidate.ci_high)  # fmt: skip
    if before is not None:
        columns.update(champion_before_asset=before.asset, champion_before_version=before.version)
    if theirs is not None:
        columns.update(champion_score=theirs.main_score, champion_ci_low=theirs.ci_low, champion_ci_high=theirs.ci_high)
    if after is not None:
        columns.update(champion_after_asset=after.asset, champion_after_version=after.version,
                       champion_after_path=after.path)  # fmt: skip
    return columns


def record_decisions(db: str | Path, rows: list[dict[str, Any]], timeout_s: float = 120.0) -> None:
    """Write decision rows (``new_row``); writing a row with the same id again replaces it."""
    placeholders = ", ".join("?" for _ in COLUMNS)
    with connect(db, timeout_s=timeout_s) as connection:
        connection.execute(SCHEMA)
        connection.execute("BEGIN TRANSACTION")
        connection.executemany(
            f"INSERT OR REPLACE INTO promotions ({', '.join(COLUMNS)}) VALUES ({placeholders})",
            [[row[column] for column in COLUMNS] for row in rows],
        )
        connection.execute("COMMIT")


def history(db: str | Path, timeout_s: float = 120.0) -> list[dict[str, Any]]:
    """Return every decision, newest first (times as ISO text)."""
    if not Path(db).exists():
        return []
    with connect(db, read_only=True, timeout_s=timeout_s) as connection:
        if not _has_promotions(connection):
            return []
        rows = _dicts(connection.execute("SELECT * FROM promotions ORDER BY decided_at DESC, decision_id"))
    for row in rows:
        row["decided_at"] = row["decided_at"].isoformat()
    return rows


def current_champion(rows: list[dict[str, Any]]) -> Champion | None:
    """Return the champion the newest decision of ``history`` left, if any."""
    for row in rows:
        if row["champion_after_version"] is not None:
            return Champion(row["champion_after_asset"], row["champion_after_version"], row["champion_after_path"])
    return None


def current_summary(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Return the current champion with its newest known score (from the decision that left it), for people."""
    champion = current_champion(rows)
    if champion is None:
        return None
    row = next(r for r in rows if r["champion_after_version"] is not None)
    if (row["candidate_asset"], row["candidate_version"]) == (champion.asset, champion.version):
        score = row["candidate_score"], row["candidate_ci_low"], row["candidate_ci_high"]
    elif (row["champion_before_asset"], row["champion_before_version"]) == (champion.asset, champion.version):
        score = row["champion_score"], row["champion_ci_low"], row["champion_ci_high"]
    else:
        score = None, None, None
    since = next(
        (r["decided_at"] for r in rows
         if (r["champion_after_asset"], r["champion_after_version"]) == (champion.asset, champion.version)
         and (r["champion_before_asset"], r["champion_before_version"]) != (champion.asset, champion.version)),
        row["decided_at"],
    )  # fmt: skip
    return {
        "asset": champion.asset,
        "version": champion.version,
        "path": champion.path,
        "main_metric": row["main_metric"],
        "main_score": score[0],
        "ci_low": score[1],
        "ci_high": score[2],
        "test_split_version": row["test_split_version"],
        "champion_since": since,
        "stable_path": row["stable_path"],
    }


def rollback_target(rows: list[dict[str, Any]]) -> Champion | None:
    """Return the champion before the current one: replay the history, a promotion pushes, a rollback pops."""
    stack: list[Champion] = []
    for row in reversed(rows):
        after = row["champion_after_version"]
        if after is None or (stack and (stack[-1].asset, stack[-1].version) == (row["champion_after_asset"], after)):
            continue
        if row["override"] == "rollback":
            stack.pop()
        else:
            stack.append(Champion(row["champion_after_asset"], after, row["champion_after_path"]))
    return stack[-2] if len(stack) >= 2 else None


def evaluated_split(db: str | Path, evaluation_version: str, timeout_s: float = 120.0) -> str | None:
    """Return the test split version an evaluation version scored (from the ``evaluations`` table)."""
    with connect(db, read_only=True, timeout_s=timeout_s) as connection:
        found = connection.execute(
            "SELECT test_split_version FROM evaluations WHERE evaluation_version = ? LIMIT 1", [evaluation_version]
        ).fetchone()
    return found[0] if found else None


def materialization(db: str | Path, asset: str, version: str, timeout_s: float = 120.0) -> dict[str, Any] | None:
    """Return the newest lineage row of ``asset@version`` (path, config), if recorded."""
    with connect(db, read_only=True, timeout_s=timeout_s) as connection:
        rows = _dicts(
            connection.execute(
                "SELECT path, config_json FROM materializations WHERE asset = ? AND data_version = ? "
                "ORDER BY created_at DESC LIMIT 1",
                [asset, version],
            )
        )
    if not rows:
        return None
    return {"path": rows[0]["path"], "config": json.loads(rows[0]["config_json"] or "{}")}


def parents_of(db: str | Path, asset: str, version: str, timeout_s: float = 120.0) -> dict[str, str]:
    """Return the parent versions (by asset) lineage recorded for ``asset@version``."""
    with connect(db, read_only=True, timeout_s=timeout_s) as connection:
        rows = connection.execute(
            "SELECT parent_asset, parent_version FROM edges WHERE child_asset = ? AND child_version = ?",
            [asset, version],
        ).fetchall()
    return dict(rows)


def find_model(db: str | Path, version: str, timeout_s: float = 120.0) -> Champion | None:
    """Return the merged or Azure fine-tuned model with this data version, as lineage recorded it."""
    for asset in (LOCAL, AZURE):
        if (found := materialization(db, asset, version, timeout_s)) is not None:
            return Champion(asset, version, found["path"])
    return None


def scores_on(
    db: str | Path, asset: str, version: str, test_split_version: str, main_metric: str | None, timeout_s: float = 120.0
) -> ModelScores | None:
    """Return the newest scores of ``asset@version`` on a test split version (by ``main_metric`` when given)."""
    metric = "" if main_metric is None else "AND main_metric = ?"
    with connect(db, read_only=True, timeout_s=timeout_s) as connection:
        rows = _dicts(
            connection.execute(
                f"SELECT model, evaluation_version, n, main_metric, main_score, ci_low, ci_high FROM evaluations "
                f"WHERE {MODEL_ROWS[asset]} AND model_version = ? AND test_split_version = ? {metric} "
                "ORDER BY created_at DESC LIMIT 1",
                [version, test_split_version, *([] if main_metric is None else [main_metric])],
            )
        )
        if not rows:
            return None
        row = rows[0]
        per_example = [
            math.nan if score is None else score
            for (score,) in connection.execute(
                "SELECT main_score FROM predictions WHERE model = ? AND model_version = ? AND test_split_version = ? "
                "AND evaluation_version = ? ORDER BY position",
                [row["model"], version, test_split_version, row["evaluation_version"]],
            ).fetchall()
        ]
    if len(per_example) != row["n"] or row["main_score"] is None:
        return None
    return ModelScores(asset, version, row["main_metric"], row["main_score"], _nan(row["ci_low"]),
                       _nan(row["ci_high"]), per_example)  # fmt: skip


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


def undecided_azure_model(
    db: str | Path, test_split_version: str, main_metric: str, timeout_s: float = 120.0
) -> str | None:
    """Return the newest Azure fine-tuned model version evaluated on this test split and not yet decided on it."""
    with connect(db, timeout_s=timeout_s) as connection:
        connection.execute(SCHEMA)
        found = connection.execute(
            f"""
            SELECT model_version FROM evaluations
            WHERE {MODEL_ROWS[AZURE]} AND evaluated_by = 'azure_model_evaluation' AND test_split_version = ?
              AND main_metric = ?
              AND model_version NOT IN (SELECT candidate_version FROM promotions
                                        WHERE candidate_asset = ? AND test_split_version = ?)
            ORDER BY created_at DESC LIMIT 1
            """,
            [test_split_version, main_metric, AZURE, test_split_version],
        ).fetchone()
    return found[0] if found else None


def point_stable_path(folder: str | Path, champion: dict[str, Any]) -> None:
    """Make the stable path name ``champion`` (a ``current_summary``): champion.json, then the ``current`` link."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / f".{CHAMPION_FILE}.{uuid.uuid4().hex}.tmp"
    temporary.write_text(json.dumps(champion, indent=2, sort_keys=True, default=str))
    os.replace(temporary, folder / CHAMPION_FILE)
    if not champion.get("path"):  # an Azure fine-tune has no local folder: no link may still name the one before
        if (folder / CURRENT_LINK).is_symlink():
            (folder / CURRENT_LINK).unlink()
        return
    link = folder / f".{CURRENT_LINK}.{uuid.uuid4().hex}.tmp"
    try:
        os.symlink(champion["path"], link, target_is_directory=True)
        os.replace(link, folder / CURRENT_LINK)
    except OSError:  # no symlinks here (or "current" is a folder): champion.json alone names the artifact folder
        link.unlink(missing_ok=True)


def override(db: str | Path, target: Champion, kind: str, reason: str, stable_path: str | Path) -> dict[str, Any]:
    """Make ``target`` the champion by hand (``kind``: promote or rollback), recorded as such; return the row.

    Scores are those already recorded on the newest decided test split (none are computed here). The
    stable path is the one the newest decision used, else ``stable_path``.
    """
    rows = history(db)
    before = current_champion(rows)
    if before is not None and (before.asset, before.version) == (target.asset, target.version):
        raise ValueError(f"{target.name} is already the champion")
    split, metric = (rows[0]["test_split_version"], rows[0]["main_metric"]) if rows else (None, None)
    mine = scores_on(db, target.asset, target.version, split, metric) if split else None
    theirs = scores_on(db, before.asset, before.version, split, metric) if split and before else None
    stable = Path(rows[0]["stable_path"] if rows else stable_path).resolve()
    row = new_row(
        candidate_asset=target.asset, candidate_version=target.version, test_split_version=split, main_metric=metric,
        decision=PROMOTED, reason=f"manual {kind}: {reason}", override=kind, stable_path=str(stable),
        **sides(mine, before, theirs, target),
    )  # fmt: skip
    record_decisions(db, [row])
    point_stable_path(row["stable_path"], current_summary(history(db)) or {})
    return row
