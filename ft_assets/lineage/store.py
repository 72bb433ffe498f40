"""The lineage database (DuckDB): which version of which asset was made from what.

Tables (see README for the SQL):
- ``materializations``: one row per materialization (asset, data version, code version, run,
  artifact path, time, config hash and config, library versions and device).
- ``edges``: child version <- parent version, for every input a materialization used.
- ``member_sets`` (each version of a split, numbered ``seq`` per asset in the order recorded) and
  ``member_spans`` (each member: example id, content hash, group, source file/line or source
  example, with the span ``first_seq..last_seq`` of versions holding it): which examples a split
  version holds. A member that consecutive versions share is stored once; the ``members`` view
  gives one row per (version, member).
- ``evaluations``: one row per (model version, test split version): the metrics of that model on that split.
- ``fine_tune_metrics``: per-step losses and token accuracies of an Azure fine-tuned model version.

DuckDB lets one process write a file at a time, so every call opens a short-lived connection
and retries while another process holds the lock. Nothing here imports dagster.
"""

from __future__ import annotations

import json
import os
import random
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from ft_assets.numbers import finite

SCHEMA = """
CREATE TABLE IF NOT EXISTS materializations (
    asset VARCHAR NOT NULL,
    data_version VARCHAR NOT NULL,
    code_version VARCHAR,
    run_id VARCHAR NOT NULL,
    path VARCHAR,
    created_at TIMESTAMPTZ NOT NULL,
    config_hash VARCHAR,
    config_json VARCHAR,
    PRIMARY KEY (asset, data_version, run_id)
);
CREATE TABLE IF NOT EXISTS edges (
    child_asset VARCHAR NOT NULL,
    child_version VARCHAR NOT NULL,
    parent_asset VARCHAR NOT NULL,
    parent_version VARCHAR NOT NULL,
    PRIMARY KEY (child_asset, child_version, parent_asset, parent_version)
);
CREATE TABLE IF NOT EXISTS evaluations (
    model VARCHAR NOT NULL,
    model_version VARCHAR NOT NULL,
    test_split_version VARCHAR NOT NULL,
    provider VARCHAR NOT NULL,
    n INTEGER NOT NULL,
    exact_match DOUBLE,
    field_accuracy VARCHAR,
    token_accuracy DOUBLE,
    loss DOUBLE,
    perplexity DOUBLE,
    latency_p50_ms DOUBLE,
    latency_p95_ms DOUBLE,
    output_tokens_mean DOUBLE,
    cost_per_1k_requests_usd DOUBLE,
    evaluated_by VARCHAR NOT NULL,
    evaluation_version VARCHAR NOT NULL,
    run_id VARCHAR NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (model, model_version, test_split_version, evaluation_version)
);
ALTER TABLE evaluations ADD COLUMN IF NOT EXISTS task VARCHAR;
ALTER TABLE evaluations ADD COLUMN IF NOT EXISTS main_metric VARCHAR;
ALTER TABLE evaluations ADD COLUMN IF NOT EXISTS main_score DOUBLE;
ALTER TABLE evaluations ADD COLUMN IF NOT EXISTS ci_low DOUBLE;
ALTER TABLE evaluations ADD COLUMN IF NOT EXISTS ci_high DOUBLE;
ALTER TABLE evaluations ADD COLUMN IF NOT EXISTS metrics VARCHAR;
ALTER TABLE evaluations ADD COLUMN IF NOT EXISTS prompt_tokens_mean DOUBLE;
ALTER TABLE evaluations ADD COLUMN IF NOT EXISTS truncated_share DOUBLE;
CREATE TABLE IF NOT EXISTS predictions (
    model VARCHAR NOT NULL,
    model_version VARCHAR NOT NULL,
    test_split_version VARCHAR NOT NULL,
    evaluation_version VARCHAR NOT NULL,
    position BIGINT NOT NULL,
    example_id VARCHAR,
    prompt VARCHAR,
    reference VARCHAR,
    prediction VARCHAR,
    main_score DOUBLE,
    scores VARCHAR,
    latency_ms DOUBLE,
    prompt_tokens BIGINT,
    output_tokens BIGINT,
    truncated BOOLEAN
);
CREATE TABLE IF NOT EXISTS fine_tune_metrics (
    model_version VARCHAR NOT NULL,
    job_id VARCHAR NOT NULL,
    step BIGINT NOT NULL,
    train_loss DOUBLE,
    train_mean_token_accuracy DOUBLE,
    valid_loss DOUBLE,
    valid_mean_token_accuracy DOUBLE,
    PRIMARY KEY (model_version, step)
);
ALTER TABLE materializations ADD COLUMN IF NOT EXISTS libraries VARCHAR;
ALTER TABLE materializations ADD COLUMN IF NOT EXISTS device VARCHAR;
CREATE TABLE IF NOT EXISTS member_sets (
    asset VARCHAR NOT NULL,
    data_version VARCHAR NOT NULL,
    seq INTEGER NOT NULL,
    members BIGINT NOT NULL,
    PRIMARY KEY (asset, data_version)
);
CREATE TABLE IF NOT EXISTS member_spans (
    asset VARCHAR NOT NULL,
    member_id BIGINT NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    example_id VARCHAR NOT NULL,
    content_hash UBIGINT,
    group_id VARCHAR,
    source_file VARCHAR,
    source_line BIGINT,
    source_example_id VARCHAR,
    example_key UHUGEINT NOT NULL  -- md5_number(example_id): compares ids without reading the strings
);
CREATE INDEX IF NOT EXISTS member_spans_example ON member_spans (example_id);
CREATE INDEX IF NOT EXISTS member_spans_source_example ON member_spans (source_example_id);
"""
OPEN_SPAN = 2**31 - 1  # last_seq of a member still in the newest version of its asset
MEMBERS_VIEW = """
CREATE VIEW IF NOT EXISTS members AS
SELECT v.asset, v.data_version, s.example_id, s.content_hash, s.group_id, s.source_file, s.source_line,
       s.source_example_id, s.member_id
FROM member_sets v JOIN member_spans s ON s.asset = v.asset AND v.seq BETWEEN s.first_seq AND s.last_seq;
"""
EXAMPLE_KEY = "md5_number(example_id)"
IDENTITY = ("example_id", "content_hash", "group_id", "source_file", "source_line", "source_example_id")


LOCK_WORDS = ("lock", "conflicting")
NOT_YET_VALID = "not a valid DuckDB database file"
CREATION_WAIT_S = 5.0


class LineageLockTimeout(RuntimeError):
    """Another process held the lineage database for longer than the configured wait."""


@dataclass(frozen=True)
class Materialization:
    """Everything the lineage database keeps about one materialization."""

    asset: str
    data_version: str
    code_version: str | None
    run_id: str
    path: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    parents: list[tuple[str, str]] = field(default_factory=list)
    members_file: str | None = None
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    libraries: dict[str, str] = field(default_factory=dict)
    device: str | None = None

    @property
    def config_json(self) -> str:
        """The config as canonical JSON (sorted keys)."""
        return json.dumps(self.config, sort_keys=True, default=str)

    @property
    def config_hash(self) -> str:
        """A short hash of the canonical config."""
        import hashlib

        return hashlib.sha256(self.config_json.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (stored in Dagster metadata, so the database can be rebuilt)."""
        data = asdict(self)
        data["parents"] = [list(p) for p in self.parents]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Materialization:
        """Inverse of ``to_dict``."""
        data = dict(data)
        data["parents"] = [tuple(p) for p in data.get("parents", [])]
        return cls(**data)


def _is_lock_error(error: Exception) -> bool:
    text = str(error).lower()
    return any(word in text for word in LOCK_WORDS)


@contextmanager
def connect(
    path: str | Path, *, read_only: bool = False, timeout_s: float = 120.0
) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open the lineage database, waiting (with jittered backoff) while another process holds it.

    The schema is created on first use. The connection is closed on exit; keep the block short.
    """
    path = Path(path)
    started = time.monotonic()
    deadline = started + timeout_s
    delay = 0.01
    if not path.exists():
        _create(path)
    while True:
        try:
            connection = duckdb.connect(str(path), read_only=read_only)
            break
        except (duckdb.IOException, duckdb.ConnectionException) as error:
            # A file another process is creating right now reads as "not a valid DuckDB database" for a
            # moment: wait for it like for a lock, but not for long (a file that stays invalid is broken).
            being_created = NOT_YET_VALID in str(error) and time.monotonic() < started + CREATION_WAIT_S
            if not (_is_lock_error(error) or being_created):
                raise
            if time.monotonic() > deadline:
                raise LineageLockTimeout(
                    f"lineage database {path} stayed locked by another process for {timeout_s:.0f} s"
                ) from error
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.5)
    try:
        if not read_only:
            connection.execute(SCHEMA)
            _key_evaluations_by_version(connection)
            _share_members(connection)
            connection.execute(MEMBERS_VIEW)
        yield connection
    finally:
        connection.close()


def _create(path: Path) -> None:
    """Create the database with its schema under another name, then link it into place.

    No process ever opens a half-made file. Whoever links first wins; the others' copies are discarded.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    draft = path.with_name(f".{path.name}.{uuid.uuid4().hex}.creating")
    try:
        with duckdb.connect(str(draft)) as connection:
            connection.execute(SCHEMA)
            connection.execute(MEMBERS_VIEW)
        try:
            os.link(draft, path)  # fails when the file exists: another process made it first
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links
            if not path.exists():
                os.replace(draft, path)
    finally:
        draft.unlink(missing_ok=True)
        Path(f"{draft}.wal").unlink(missing_ok=True)


def _key_evaluations_by_version(connection: duckdb.DuckDBPyConnection) -> None:
    """Re-key an ``evaluations`` table written before rows were keyed by evaluation version."""
    (key,) = connection.execute(
        "SELECT constraint_column_names FROM duckdb_constraints() "
        "WHERE table_name = 'evaluations' AND constraint_type = 'PRIMARY KEY'"
    ).fetchone() or ([],)
    if "evaluation_version" in key:
        return
    connection.execute("BEGIN TRANSACTION")
    connection.execute("ALTER TABLE evaluations RENAME TO evaluations_keyed_by_model")
    connection.execute(SCHEMA)
    connection.execute("INSERT INTO evaluations BY NAME SELECT * FROM evaluations_keyed_by_model")
    connection.execute("DROP TABLE evaluations_keyed_by_model")
    connection.execute("COMMIT")


def _is_current(connection: duckdb.DuckDBPyConnection) -> bool:
    """Tell whether the newest schema changes are in (every older one came before them)."""
    try:
        connection.execute("SELECT m.libraries, m.device, s.member_id FROM materializations m, members s LIMIT 0")
    except (duckdb.CatalogException, duckdb.BinderException):
        return False
    return True


@contextmanager
def connect_current(path: str | Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open the database read-only, first bringing it up to the current schema when an older version wrote it."""
    with connect(path, read_only=True) as connection:
        if _is_current(connection):
            yield connection
            return
    with connect(path):
        pass
    with connect(path, read_only=True) as connection:
        yield connection


def _share_members(connection: duckdb.DuckDBPyConnection) -> None:
    """Move a ``members`` table of one row per (version, member) into the shared storage, oldest version first.

    Such tables had no content hash: their members' ``content_hash`` stays NULL (unknown).
    """
    (kind,) = connection.execute(
        "SELECT any_value(table_type) FROM information_schema.tables WHERE table_name = 'members'"
    ).fetchone()
    if kind != "BASE TABLE":
        return
    connection.execute("BEGIN TRANSACTION")
    connection.execute("ALTER TABLE members RENAME TO members_one_row_per_version")
    versions = connection.execute(
        """
        SELECT o.asset, o.data_version FROM (SELECT DISTINCT asset, data_version FROM members_one_row_per_version) o
        LEFT JOIN materializations m USING (asset, data_version)
        GROUP BY ALL ORDER BY min(m.created_at) NULLS LAST, o.asset, o.data_version
        """
    ).fetchall()
    for asset, version in versions:
        connection.execute(
            "CREATE OR REPLACE TEMP VIEW new_members AS SELECT example_id, NULL::UBIGINT AS content_hash, group_id, "
            "source_file, source_line, source_example_id FROM members_one_row_per_version "
            f"WHERE asset = {sql_literal(asset)} AND data_version = {sql_literal(version)}"
        )
        _add_members(connection, asset, version, "new_members")
    connection.execute("DROP VIEW IF EXISTS new_members")
    connection.execute("DROP TABLE members_one_row_per_version")
    connection.execute("COMMIT")


def sql_literal(text: str) -> str:
    """Return ``text`` as an SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def _add_members(connection: duckdb.DuckDBPyConnection, asset: str, version: str, source: str) -> None:
    """Record the members of a new version of ``asset`` (``source``: a relation with the ``IDENTITY`` columns).

    Members equal (in every ``IDENTITY`` column) to one of the asset's previous version keep its
    row and span; the spans of those left out end at the previous version; the rest get new rows.
    A version already recorded is left as it is (a data version names one content).
    """
    if connection.execute(
        "SELECT 1 FROM member_sets WHERE asset = ? AND data_version = ?", [asset, version]
    ).fetchone():
        return
    (seq,) = connection.execute("SELECT coalesce(max(seq), 0) + 1 FROM member_sets WHERE asset = ?", [asset]).fetchone()
    columns = ", ".join(IDENTITY)
    same = " AND ".join(f"n.{c} IS NOT DISTINCT FROM o.{c}" for c in IDENTITY)
    connection.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE incoming AS
        WITH o AS (SELECT * FROM member_spans WHERE asset = $asset AND last_seq = {OPEN_SPAN})
        SELECT n.*, o.member_id FROM (SELECT DISTINCT {columns} FROM {source}) n LEFT JOIN o ON {same}
        """,
        {"asset": asset},
    )
    connection.execute(
        f"""
        UPDATE member_spans SET last_seq = $seq - 1
        WHERE asset = $asset AND last_seq = {OPEN_SPAN}
          AND member_id NOT IN (SELECT member_id FROM incoming WHERE member_id IS NOT NULL)
        """,
        {"asset": asset, "seq": seq},
    )
    connection.execute(
        f"""
        INSERT INTO member_spans BY NAME
        SELECT $asset AS asset, (SELECT coalesce(max(member_id), 0) FROM member_spans) + row_number() OVER ()
               AS member_id, $seq AS first_seq, {OPEN_SPAN} AS last_seq, {columns}, {EXAMPLE_KEY} AS example_key
        FROM incoming WHERE member_id IS NULL
        """,
        {"asset": asset, "seq": seq},
    )
    connection.execute("INSERT INTO member_sets SELECT ?, ?, ?, count(*) FROM incoming", [asset, version, seq])
    connection.execute("DROP TABLE incoming")


def record(path: str | Path, materialization: Materialization, members: Any = None) -> None:
    """Write one materialization, its edges and (optionally) its members, in one transaction.

    ``members`` is a pyarrow Table as a split's ``members.parquet`` holds it (``example_id``,
    ``group_id``, ``file``, ``line``, ``source_id`` and, from splits written since it exists,
    ``content_hash``). Re-recording the same materialization replaces it (the members of a version
    already recorded stay as they are: a data version names one content), so this is idempotent.
    """
    m = materialization
    with connect(path) as connection:
        connection.execute("BEGIN TRANSACTION")
        connection.execute(
            "INSERT OR REPLACE INTO materializations (asset, data_version, code_version, run_id, path, created_at, "
            "config_hash, config_json, libraries, device) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [m.asset, m.data_version, m.code_version, m.run_id, m.path, m.created_at, m.config_hash, m.config_json,
             json.dumps(m.libraries, sort_keys=True), m.device],
        )  # fmt: skip
        for parent_asset, parent_version in m.parents:
            connection.execute(
                "INSERT OR IGNORE INTO edges VALUES (?, ?, ?, ?)",
                [m.asset, m.data_version, parent_asset, parent_version],
            )
        if members is not None:
            content = "content_hash" if "content_hash" in members.column_names else "NULL::UBIGINT"
            connection.register("members_file", members)
            connection.execute(
                f"CREATE OR REPLACE TEMP VIEW new_members AS SELECT example_id, {content} AS content_hash, group_id, "
                "file AS source_file, line AS source_line, source_id AS source_example_id FROM members_file"
            )
            _add_members(connection, m.asset, m.data_version, "new_members")
            connection.execute("DROP VIEW new_members")
            connection.unregister("members_file")
        connection.execute("COMMIT")


EVALUATION_COLUMNS = (
    "model", "model_version", "test_split_version", "provider", "n", "exact_match", "field_accuracy",
    "token_accuracy", "loss", "perplexity", "latency_p50_ms", "latency_p95_ms", "output_tokens_mean",
    "cost_per_1k_requests_usd", "evaluated_by", "evaluation_version", "run_id", "created_at",
    "task", "main_metric", "main_score", "ci_low", "ci_high", "metrics", "prompt_tokens_mean", "truncated_share",
)  # fmt: skip
PREDICTION_COLUMNS = (
    "model", "model_version", "test_split_version", "evaluation_version", "position", "example_id", "prompt",
    "reference", "prediction", "main_score", "scores", "latency_ms", "prompt_tokens", "output_tokens", "truncated",
)  # fmt: skip


def record_evaluations(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Write evaluation rows; one for the same model, test split and evaluation versions replaces the old one."""
    columns = ", ".join(EVALUATION_COLUMNS)
    placeholders = ", ".join("?" for _ in EVALUATION_COLUMNS)
    values = []
    for row in rows:
        stored = {
            **row,
            "field_accuracy": json.dumps(row.get("field_accuracy") or {}, sort_keys=True),
            "metrics": json.dumps({k: finite(v) for k, v in (row.get("metrics") or {}).items()}, sort_keys=True),
        }
        values.append([finite(stored.get(column)) for column in EVALUATION_COLUMNS])
    with connect(path) as connection:
        connection.execute("BEGIN TRANSACTION")
        connection.executemany(f"INSERT OR REPLACE INTO evaluations ({columns}) VALUES ({placeholders})", values)
        connection.execute("COMMIT")


def record_predictions(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Write per-example predictions, replacing those of the same model version, test split and evaluation version."""
    import pyarrow as pa

    table = pa.Table.from_pylist(
        [
            {
                **{column: row.get(column) for column in PREDICTION_COLUMNS},
                "scores": json.dumps({k: finite(v) for k, v in row["scores"].items()}, sort_keys=True),
                "main_score": finite(row.get("main_score")),
                "latency_ms": finite(row.get("latency_ms")),
            }
            for row in rows
        ]
    )
    keys = sorted(
        {(row["model"], row["model_version"], row["test_split_version"], row["evaluation_version"]) for row in rows}
    )
    with connect(path) as connection:
        connection.execute("BEGIN TRANSACTION")
        for key in keys:
            connection.execute(
                "DELETE FROM predictions WHERE model = ? AND model_version = ? AND test_split_version = ? "
                "AND evaluation_version = ?",
                list(key),
            )
        if rows:
            connection.register("new_predictions", table)
            connection.execute(f"INSERT INTO predictions SELECT {', '.join(PREDICTION_COLUMNS)} FROM new_predictions")
            connection.unregister("new_predictions")
        connection.execute("COMMIT")


METRIC_COLUMNS = ("train_loss", "train_mean_token_accuracy", "valid_loss", "valid_mean_token_accuracy")


def record_fine_tune_metrics(path: str | Path, model_version: str, job_id: str, rows: list[dict[str, Any]]) -> None:
    """Write the per-step metrics of a fine-tuned model version (replacing earlier rows of that version)."""
    values = [[model_version, job_id, int(row["step"]), *(finite(row.get(c)) for c in METRIC_COLUMNS)] for row in rows]
    with connect(path) as connection:
        connection.execute("BEGIN TRANSACTION")
        connection.execute("DELETE FROM fine_tune_metrics WHERE model_version = ?", [model_version])
        if values:
            connection.executemany("INSERT INTO fine_tune_metrics VALUES (?, ?, ?, ?, ?, ?, ?)", values)
        connection.execute("COMMIT")
