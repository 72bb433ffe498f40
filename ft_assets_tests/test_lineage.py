import multiprocessing
from pathlib import Path

import pyarrow as pa
import pytest

from ft_assets.lineage import queries
from ft_assets.lineage.store import Materialization, connect, record

WRITERS = 8
ROWS_PER_WRITER = 25


def _graph(db: Path) -> None:
    record(db, Materialization("raw_examples", "r1", "c1", "run1", parents=[("file:data/raw/a.jsonl", "f1")]))
    record(db, Materialization("synthetic_examples", "s1", "c1", "run1", parents=[("raw_examples", "r1")]))
    record(
        db,
        Materialization(
            "cleaned_examples", "k1", "c1", "run1", parents=[("raw_examples", "r1"), ("synthetic_examples", "s1")]
        ),
    )
    record(db, Materialization("train_split", "t1", "c1", "run1", parents=[("cleaned_examples", "k1")]))
    record(db, Materialization("raw_examples", "r2", "c1", "run2", parents=[("file:data/raw/a.jsonl", "f2")]))


def test_trace_and_impact_walk_the_graph(tmp_path):
    db = tmp_path / "lineage.duckdb"
    _graph(db)
    upstream = {(r["asset"], r["data_version"]): r["depth"] for r in queries.trace(db, "train_split")}
    assert upstream == {
        ("train_split", "t1"): 0,
        ("cleaned_examples", "k1"): 1,
        ("raw_examples", "r1"): 2,
        ("synthetic_examples", "s1"): 2,
        ("file:data/raw/a.jsonl", "f1"): 3,
    }
    downstream = {r["asset"] for r in queries.impact(db, "raw_examples@r1")}
    assert downstream == {"raw_examples", "synthetic_examples", "cleaned_examples", "train_split"}
    assert [r["asset"] for r in queries.impact(db, "raw_examples")] == ["raw_examples"]  # latest is r2
    with pytest.raises(queries.UnknownVersion):
        queries.trace(db, "train_split@nope")


def test_rerecording_is_idempotent_and_members_are_replaced(tmp_path):
    db = tmp_path / "lineage.duckdb"
    members = pa.table(
        {
            "position": [0, 1],
            "example_id": ["a", "b"],
            "group_id": ["g", "g"],
            "file": ["f.jsonl"] * 2,
            "line": [1, 2],
            "source_id": [None, "a"],
        }
    )
    m = Materialization("train_split", "t1", "c1", "run1", parents=[("cleaned_examples", "k1")])
    record(db, m, members)
    record(db, m, members)
    with connect(db, read_only=True) as connection:
        assert connection.execute("SELECT count(*) FROM members").fetchone() == (2,)
        assert connection.execute("SELECT count(*) FROM edges").fetchone() == (1,)
        assert connection.execute("SELECT count(*) FROM materializations").fetchone() == (1,)
    assert queries.splits_with_example(db, "b")[0]["source_example_id"] == "a"


def _writer(db: str, writer: int) -> None:
    for n in range(ROWS_PER_WRITER):
        record(db, Materialization("asset", f"w{writer}-v{n}", "c", f"run-{writer}", parents=[("parent", f"p{n}")]))


def test_eight_processes_writing_at_once_lose_nothing(tmp_path):
    db = str(tmp_path / "lineage.duckdb")
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_writer, args=(db, w)) for w in range(WRITERS)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert [p.exitcode for p in processes] == [0] * WRITERS
    with connect(db, read_only=True) as connection:
        assert connection.execute("SELECT count(*) FROM materializations").fetchone() == (WRITERS * ROWS_PER_WRITER,)
        assert connection.execute("SELECT count(*) FROM edges").fetchone() == (WRITERS * ROWS_PER_WRITER,)
