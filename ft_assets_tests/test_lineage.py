import json
import multiprocessing
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from ft_assets.cli import main
from ft_assets.dataset.prep import SplitConfig, clean, split
from ft_assets.dataset.validate import CleanConfig
from ft_assets.lineage import queries
from ft_assets.lineage.store import Materialization, connect, record
from ft_assets_tests.conftest import chat, write_jsonl

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


def _cleaned(db: Path, folder: Path, version: str, created_at: str, rejected: list[dict]) -> None:
    """Record a cleaned_examples version whose folder holds ``rejected`` as rejected.jsonl."""
    folder.mkdir(parents=True)
    (folder / "rejected.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rejected))
    record(
        db,
        Materialization("cleaned_examples", version, "c1", f"run-{version}", path=str(folder), created_at=created_at),
    )


def _reject(file: str, line: int, reasons: list[str], raw: dict | str, **extra: object) -> dict:
    return {
        "file": file,
        "line": line,
        "reasons": reasons,
        "raw": raw if isinstance(raw, str) else json.dumps(raw),
        **extra,
    }


def _example(db: Path, target: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["lineage", "example", target, "--db", str(db)])
    return result.exit_code, result.output


@pytest.fixture
def real_lineage(tmp_path, monkeypatch):
    """Clean and split a small raw file with the real core, and record it the way the assets do."""
    monkeypatch.chdir(tmp_path)
    raw = Path("data/raw")
    raw.mkdir(parents=True)
    rows = [
        chat(f"Invoice {n} from ACME, total {n * 10} EUR.", f"label-{n % 3}", id=f"inv-{n:04d}") for n in range(1, 17)
    ]
    rows[2] = rows[0]  # line 3: the same example as line 1
    rows[4] = {"id": "inv-bad", "messages": [{"role": "user", "content": "no answer"}]}  # line 5
    write_jsonl(raw / "x.jsonl", rows)
    db = tmp_path / "lineage.duckdb"
    cleaned = tmp_path / "artifacts" / "cleaned_examples" / "k1"
    clean([raw / "x.jsonl"], cleaned, CleanConfig(), labels=["data/raw/x.jsonl"], workers=1)
    record(db, Materialization("cleaned_examples", "k1", "c1", "run1", path=str(cleaned.resolve())))
    scratch = tmp_path / "scratch"
    split(cleaned, scratch, SplitConfig(seed=0, ratios=(1.0, 0.0, 0.0)))
    for name in ("train", "validation", "test"):
        members = pq.read_table(scratch / f"{name}.members.parquet")
        record(
            db,
            Materialization(f"{name}_split", f"{name[0]}1", "c1", "run1", parents=[("cleaned_examples", "k1")]),
            members,
        )
    record(db, Materialization("lora_adapter", "l1", "c1", "run1", parents=[("train_split", "t1")]))
    record(db, Materialization("merged_model", "m1", "c1", "run1", parents=[("lora_adapter", "l1")]))
    return db


def test_example_by_id_and_by_file_line_when_kept(real_lineage):
    by_id = queries.find_example(real_lineage, "inv-0002")
    assert by_id["status"] == "kept" and by_id["kind"] == "id"
    [row] = by_id["splits"]
    assert (row["asset"], row["source_file"], row["source_line"]) == ("train_split", "data/raw/x.jsonl", 2)
    assert row["models"] == ["lora_adapter@l1", "merged_model@m1"]
    for target in ("data/raw/x.jsonl:2", "x.jsonl:2", "raw/x.jsonl:2", "./data/raw/../raw/x.jsonl:2"):
        by_line = queries.find_example(real_lineage, target)
        assert by_line["kind"] == "location", target
        assert by_line["files"] == ["data/raw/x.jsonl"]
        assert by_line["splits"] == by_id["splits"]
    absolute = str(Path("data/raw/x.jsonl").resolve())
    assert queries.find_example(real_lineage, f"{absolute}:2")["splits"] == by_id["splits"]
    code, output = _example(real_lineage, "x.jsonl:2")
    assert code == 0
    assert output.splitlines() == [
        "train_split@t1  example inv-0002  from data/raw/x.jsonl:2",
        "  models: lora_adapter@l1, merged_model@m1",
    ]


def test_example_rejected_by_cleaning_says_why(real_lineage):
    duplicate = queries.find_example(real_lineage, "x.jsonl:3")
    assert duplicate["status"] == "rejected" and duplicate["splits"] == []
    [hit] = duplicate["rejected"]
    assert hit["cleaned_examples"] == "k1"
    assert hit["reasons"] == ["exact_duplicate"]
    assert hit["duplicate_of"] == {"file": "data/raw/x.jsonl", "line": 1}
    code, output = _example(real_lineage, "data/raw/x.jsonl:3")
    assert code == 0
    assert output.strip() == (
        "data/raw/x.jsonl:3 was rejected by cleaned_examples@k1: exact_duplicate (duplicate of data/raw/x.jsonl:1)"
    )

    by_id = queries.find_example(real_lineage, "inv-bad")
    assert by_id["status"] == "rejected" and by_id["kind"] == "id"
    assert [(h["file"], h["line"]) for h in by_id["rejected"]] == [("data/raw/x.jsonl", 5)]
    assert by_id["rejected"] == queries.find_example(real_lineage, "x.jsonl:5")["rejected"]
    code, output = _example(real_lineage, "inv-bad")
    assert code == 0
    assert output.startswith("example inv-bad (data/raw/x.jsonl:5) was rejected by cleaned_examples@k1: ")

    result = CliRunner().invoke(main, ["lineage", "example", "x.jsonl:3", "--json", "--db", str(real_lineage)])
    assert result.exit_code == 0
    assert json.loads(result.output)["rejected"][0]["reasons"] == ["exact_duplicate"]


def test_example_not_found_exits_1_with_a_message(real_lineage):
    for target, words in [
        ("x.jsonl:99", "x.jsonl:99 is in no split version, and no rejected.jsonl of the 1 newest"),
        ("inv-9999", "example 'inv-9999' is in no split version"),
        ("other.jsonl:2", "no recorded input file matches 'other.jsonl'"),
    ]:
        assert queries.find_example(real_lineage, target)["status"] == "not_found"
        code, output = _example(real_lineage, target)
        assert code == 1, target
        assert words in output, output
    result = CliRunner().invoke(main, ["lineage", "example", "inv-9999", "--json", "--db", str(real_lineage)])
    assert result.exit_code == 1
    assert json.loads(result.stdout)["status"] == "not_found"


def test_example_search_takes_the_newest_rejecting_version(tmp_path):
    db = tmp_path / "lineage.duckdb"
    files = [("file:data/raw/a.jsonl", "f1"), ("file:other/a.jsonl", "f2")]
    record(db, Materialization("raw_examples", "r1", "c1", "run1", parents=files))
    row = {"id": "inv-7", "messages": []}
    _cleaned(db, tmp_path / "old", "k1", "2026-01-01T00:00:00+00:00", [
        _reject("data/raw/a.jsonl", 7, ["too_many_tokens"], row),
        _reject("data/raw/a.jsonl", 8, ["invalid_json"], "{not json"),
        _reject("other/a.jsonl", 9, ["too_many_tokens"], {"id": 9}),
    ])  # fmt: skip
    _cleaned(db, tmp_path / "new", "k2", "2026-02-01T00:00:00+00:00", [
        _reject("data/raw/a.jsonl", 7, ["example_missing_assistant_message"], row),
        _reject("data/raw/a.jsonl", 17, ["exact_duplicate"], row, duplicate_of={"file": "data/raw/a.jsonl", "line": 7}),
    ])  # fmt: skip
    newest = queries.find_example(db, "data/raw/a.jsonl:7")
    assert [(h["cleaned_examples"], h["reasons"]) for h in newest["rejected"]] == [
        ("k2", ["example_missing_assistant_message"])
    ]
    assert [h["cleaned_examples"] for h in queries.find_example(db, "data/raw/a.jsonl:8")["rejected"]] == ["k1"]
    assert [h["line"] for h in queries.find_example(db, "inv-7")["rejected"]] == [7, 17]  # newest version only
    assert [h["line"] for h in queries.find_example(db, "9")["rejected"]] == [9]  # an integer id
    with pytest.raises(queries.AmbiguousFile, match="give more of the path"):
        queries.find_example(db, "a.jsonl:9")
    assert queries.find_example(db, "other/a.jsonl:9")["status"] == "rejected"
    shutil.rmtree(tmp_path / "new")
    gone = queries.find_example(db, "data/raw/a.jsonl:17")
    assert gone["status"] == "not_found"
    assert "1 of them no longer on disk" in gone["message"]
    code, output = _example(db, "a.jsonl:9")
    assert code == 1 and "matches several recorded input files" in output


def test_parse_location_and_match_file():
    assert queries.parse_location("data/raw/x.jsonl:17") == ("data/raw/x.jsonl", 17)
    assert queries.parse_location("inv-0001") is None
    assert queries.parse_location("x.jsonl:0") is None
    assert queries.parse_location(":3") is None
    recorded = ["data/raw/x.jsonl", "data/raw/y.jsonl", "synthetic_examples/examples.jsonl"]
    assert queries.match_file("y.jsonl", recorded) == ["data/raw/y.jsonl"]
    assert queries.match_file("w/y.jsonl", recorded) == []
    assert queries.match_file("examples.jsonl", recorded) == ["synthetic_examples/examples.jsonl"]


def test_eval_reads_a_database_written_before_main_metrics_existed(tmp_path):
    import duckdb

    from ft_assets.lineage.queries import latest_evaluations, predictions

    db = tmp_path / "old.duckdb"
    with duckdb.connect(str(db)) as connection:
        connection.execute(
            "CREATE TABLE evaluations (model VARCHAR NOT NULL, model_version VARCHAR NOT NULL, "
            "test_split_version VARCHAR NOT NULL, provider VARCHAR NOT NULL, n INTEGER NOT NULL, exact_match DOUBLE, "
            "field_accuracy VARCHAR, token_accuracy DOUBLE, loss DOUBLE, perplexity DOUBLE, latency_p50_ms DOUBLE, "
            "latency_p95_ms DOUBLE, output_tokens_mean DOUBLE, cost_per_1k_requests_usd DOUBLE, "
            "evaluated_by VARCHAR NOT NULL, evaluation_version VARCHAR NOT NULL, run_id VARCHAR NOT NULL, "
            "created_at TIMESTAMPTZ NOT NULL, PRIMARY KEY (model, model_version, test_split_version))"
        )
        connection.execute(
            "INSERT INTO evaluations VALUES ('lora_adapter', 'v1', 't1', 'local', 5, 0.6, '{}', NULL, NULL, NULL, "
            "1.0, 2.0, 3.0, NULL, 'evaluation_table', 'e1', 'r1', now())"
        )
    rows = latest_evaluations(db)
    assert rows[0]["main_metric"] == "exact_match" and rows[0]["main_score"] == 0.6
    assert rows[0]["metrics"] == {"exact_match": 0.6}
    assert predictions(db, "lora") == []
