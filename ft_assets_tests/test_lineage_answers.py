"""Lineage answers: which models were trained on an example, what changed between two models, shared member storage."""

import json
import re
import subprocess
import sys
from pathlib import Path

import dagster as dg
import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import xxhash
from click.testing import CliRunner

from ft_assets.artifacts import ArtifactRef
from ft_assets.cli import main
from ft_assets.dataset.prep import SplitConfig, clean, split
from ft_assets.dataset.validate import CleanConfig
from ft_assets.lineage import answers, queries
from ft_assets.lineage.store import Materialization, connect, record, record_evaluations
from ft_assets.lineage.sync import sync
from ft_assets.resources import LineageStore
from ft_assets_tests.conftest import chat, write_jsonl

ROOT = Path(__file__).resolve().parents[1]


def _members(rows: list[tuple[str, int, str | None]]) -> pa.Table:
    """A members.parquet table from (example id, content hash, source example id) rows."""
    return pa.table({
        "example_id": [r[0] for r in rows],
        "group_id": [r[0] for r in rows],
        "source_id": pa.array([r[2] for r in rows], pa.string()),
        "file": ["data/raw/a.jsonl"] * len(rows),
        "line": list(range(1, len(rows) + 1)),
        "content_hash": pa.array([r[1] for r in rows], pa.uint64()),
        "position": list(range(len(rows))),
    })  # fmt: skip


def _rec(db: Path, asset: str, version: str, parents: list[tuple[str, str]], **extra: object) -> None:
    members = extra.pop("members", None)
    record(db, Materialization(asset, version, "c1", f"run-{version}", parents=parents, **extra), members)  # type: ignore[arg-type]


@pytest.fixture
def graph(tmp_path) -> Path:
    """Two training rounds: t1 -> l1 -> m1 -> champion c1 (and an Azure fine-tune); t2 -> l2 (continued from c1) -> m2.

    ``x`` is only in the test split, but its synthetic variant ``x-syn`` was trained on in t1.
    """
    db = tmp_path / "lineage.duckdb"
    _rec(
        db,
        "train_split",
        "t1",
        [("cleaned_examples", "k1")],
        members=_members([("a", 1, None), ("b", 2, None), ("c", 3, None), ("x-syn", 4, "x")]),
    )
    _rec(db, "validation_split", "v1", [("cleaned_examples", "k1")], members=_members([("v", 5, None)]))
    _rec(db, "test_split", "e1", [("cleaned_examples", "k1")], members=_members([("x", 6, None), ("y", 7, None)]))
    _rec(db, "base_model", "b1", [])
    _rec(
        db,
        "lora_adapter",
        "l1",
        [("base_model", "b1"), ("train_split", "t1"), ("validation_split", "v1")],
        config={"learning_rate": 0.02},
        libraries={"python": "3.11.7", "torch": "2.13.0"},
        device="cpu",
    )
    _rec(db, "merged_model", "m1", [("base_model", "b1"), ("lora_adapter", "l1")], device="cpu")
    _rec(
        db, "evaluation_table", "ev1", [("merged_model", "m1"), ("train_split", "t1"), ("test_split", "e1")]
    )  # few-shot prompts from t1
    _rec(db, "champion_model", "c1", [("merged_model", "m1"), ("evaluation_table", "ev1")])
    _rec(db, "azure_training_files", "f1", [("train_split", "t1"), ("validation_split", "v1")])
    _rec(db, "azure_finetune_job", "j1", [("azure_training_files", "f1")])
    _rec(db, "azure_fine_tuned_model", "az1", [("azure_finetune_job", "j1")])
    # round 2: b changed, c removed, d added; the adapter continues from the champion
    _rec(
        db,
        "train_split",
        "t2",
        [("cleaned_examples", "k2")],
        members=_members([("a", 1, None), ("b", 22, None), ("d", 8, None), ("x-syn", 4, "x")]),
    )
    _rec(db, "validation_split", "v2", [("cleaned_examples", "k2")], members=_members([("v", 5, None)]))
    _rec(db, "test_split", "e2", [("cleaned_examples", "k2")], members=_members([("y", 7, None), ("z", 9, None)]))
    _rec(db, "evaluation_table", "ev2", [("merged_model", "m1"), ("train_split", "t2"), ("test_split", "e2")])
    _rec(
        db,
        "lora_adapter",
        "l2",
        [("base_model", "b1"), ("train_split", "t2"), ("validation_split", "v2")],
        config={"learning_rate": 1e-9},
        libraries={"python": "3.11.7", "torch": "2.14.0"},
        device="cuda",
    )
    _rec(db, "merged_model", "m2", [("base_model", "b1"), ("lora_adapter", "l2")], device="cpu")
    _rec(db, "lora_adapter", "l3", [("base_model", "b1"), ("train_split", "t2"), ("validation_split", "v2"),
                                   ("champion_model", "c1")])  # fmt: skip
    row = {
        "provider": "local",
        "n": 2,
        "evaluated_by": "evaluation_table",
        "run_id": "r",
        "created_at": "2026-01-01T00:00:00+00:00",
        "main_metric": "exact_match",
        "test_split_version": "e2",
    }
    record_evaluations(db, [{**row, "model": "merged_model", "model_version": "m1", "evaluation_version": "ev2",
                             "main_score": 0.5}, {**row, "model": "merged_model", "model_version": "m2",
                             "evaluation_version": "ev3", "main_score": 0.75}])  # fmt: skip
    return db


def _models(db: Path, example_id: str) -> set[str]:
    return {f"{r['asset']}@{r['data_version']}" for r in answers.models_with_example(db, example_id)}


def test_models_trained_on_an_example_walk_training_edges_only(graph):
    round_one = {"lora_adapter@l1", "merged_model@m1", "champion_model@c1", "azure_fine_tuned_model@az1"}
    continued = {"lora_adapter@l3"}  # from the champion, so from t1 too
    assert _models(graph, "c") == round_one | continued
    assert _models(graph, "a") == round_one | continued | {"lora_adapter@l2", "merged_model@m2"}
    assert _models(graph, "v") == _models(graph, "a")  # validation counts as training data
    assert _models(graph, "y") == set()  # only ever in test splits: evaluated on, never trained on
    rows = {r["asset"]: r for r in answers.models_with_example(graph, "c")}
    assert rows["merged_model"]["splits"] == ["train_split@t1"] and rows["merged_model"]["direct"] is True


def test_models_of_an_example_include_those_trained_on_its_synthetic_variant(graph):
    rows = answers.models_with_example(graph, "x")
    assert {f"{r['asset']}@{r['data_version']}" for r in rows} == _models(graph, "a")
    assert all(r["direct"] is False and r["variants"] == ["x-syn"] for r in rows)
    assert _models(graph, "x-syn") == _models(graph, "x")
    result = CliRunner().invoke(main, ["lineage", "models", "x", "--json", "--db", str(graph)])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.output)
    assert {(r["asset"], r["data_version"]) for r in listed} >= {("merged_model", "m2"), ("champion_model", "c1")}
    text = CliRunner().invoke(main, ["lineage", "models", "x", "--db", str(graph)]).output
    assert "merged_model@m2" in text and "variant x-syn in train_split@t2" in text


def test_diff_of_two_models_lists_examples_config_libraries_upstream_and_scores(graph):
    result = answers.diff(graph, "merged_model@m1", "m2")  # a bare version id of one asset
    assert result["examples_added"] == ["d"]
    assert result["examples_removed"] == ["c"]
    assert result["examples_changed"] == ["b"]
    assert result["training_splits"] == {
        "train_split": {"a": ["t1"], "b": ["t2"]},
        "validation_split": {"a": ["v1"], "b": ["v2"]},
    }
    assert result["upstream"]["lora_adapter"] == {"a": ["l1"], "b": ["l2"]}
    assert "base_model" not in result["upstream"]  # the same on both sides
    assert [(s["a"]["main_score"], s["b"]["main_score"]) for s in result["evaluations"]] == [(0.5, 0.75)]
    adapters = answers.diff(graph, "lora_adapter@l1", "lora_adapter@l2")
    assert adapters["config"] == {"learning_rate": {"a": 0.02, "b": 1e-9}}
    assert adapters["libraries"] == {"torch": {"a": "2.13.0", "b": "2.14.0"}}
    assert (adapters["a"]["device"], adapters["b"]["device"]) == ("cpu", "cuda")
    continued = answers.diff(graph, "lora_adapter@l2", "lora_adapter@l3")  # l3 also learned t1 through c1
    assert (continued["examples_added"], continued["examples_removed"]) == (["c"], [])
    assert continued["examples_changed"] == ["b"]  # l3 saw both contents of b, l2 one

    cli = CliRunner().invoke(
        main, ["lineage", "diff", "merged_model@m1", "merged_model@m2", "--json", "--db", str(graph)]
    )
    assert cli.exit_code == 0, cli.output
    assert {k: json.loads(cli.output)[k] for k in ("examples_added", "examples_removed", "examples_changed")} == {
        "examples_added": ["d"], "examples_removed": ["c"], "examples_changed": ["b"]}  # fmt: skip
    text = CliRunner().invoke(main, ["lineage", "diff", "lora_adapter@l1", "lora_adapter@l2", "--db", str(graph)])
    assert "examples changed: 1  b" in text.output and "config learning_rate: 0.02 -> 1e-09" in text.output
    _rec(graph, "base_model", "m2", [])  # now the bare id names two assets
    ambiguous = CliRunner().invoke(main, ["lineage", "diff", "m1", "m2", "--db", str(graph)])
    assert ambiguous.exit_code == 1 and "belongs to base_model, merged_model" in ambiguous.output


def _documented_sql(name: str) -> str:
    readme = (ROOT / "README.md").read_text()
    match = re.search(rf"<!-- lineage-sql: {name} -->\n```sql\n(.*?)```", readme, re.DOTALL)
    assert match, f"README has no {name} query"
    return match.group(1)


def test_documented_sql_answers_as_the_commands_do(graph):
    with duckdb.connect(str(graph), read_only=True) as connection:
        for example_id in ("a", "c", "x", "y", "v"):
            rows = connection.execute(_documented_sql("models"), {"example_id": example_id}).fetchall()
            assert {f"{a}@{v}" for a, v in rows} == _models(graph, example_id), example_id
        for a, b in [("merged_model@m1", "merged_model@m2"), ("lora_adapter@l2", "lora_adapter@l3"),
                     ("lora_adapter@l3", "lora_adapter@l1"), ("merged_model@m1", "merged_model@m1")]:  # fmt: skip
            (a_asset, a_version), (b_asset, b_version) = a.split("@"), b.split("@")
            params = {"a_asset": a_asset, "a_version": a_version, "b_asset": b_asset, "b_version": b_version}
            documented: dict[str, list[str]] = {"added": [], "removed": [], "changed": []}
            for change, example_id in connection.execute(_documented_sql("diff"), params).fetchall():
                documented[change].append(example_id)
            result = answers.diff(graph, a, b)
            assert documented == {k: result[f"examples_{k}"] for k in documented}, (a, b)


def test_consecutive_versions_store_shared_members_once(graph):
    with connect(graph, read_only=True) as connection:
        spans = connection.execute("SELECT count(*) FROM member_spans WHERE asset = 'train_split'").fetchone()[0]
        per_version = connection.execute(
            "SELECT data_version, count(*) FROM members WHERE asset = 'train_split' GROUP BY ALL ORDER BY 1"
        ).fetchall()
    assert per_version == [("t1", 4), ("t2", 4)]
    assert spans == 6  # a, b, c, x-syn once; b's new content and d
    record(graph, Materialization("train_split", "t1", "c1", "again"), _members([("a", 1, None)]))  # same version
    assert queries.splits_with_example(graph, "c") == [
        {"asset": "train_split", "data_version": "t1", "example_id": "c", "group_id": "c",
         "source_file": "data/raw/a.jsonl", "source_line": 3, "source_example_id": None}]  # fmt: skip


def test_split_members_carry_the_hash_of_each_row(tmp_path):
    raw = write_jsonl(
        tmp_path / "x.jsonl", [chat(f"Invoice {n} from ACME.", f"label-{n % 2}", id=f"i{n}") for n in range(12)]
    )
    clean([raw], tmp_path / "cleaned", CleanConfig(), workers=1)
    split(tmp_path / "cleaned", tmp_path / "out", SplitConfig(seed=0, ratios=(0.5, 0.25, 0.25), min_examples=4))
    for name in ("train", "validation", "test"):
        members = pq.read_table(tmp_path / "out" / f"{name}.members.parquet")
        lines = (tmp_path / "out" / f"{name}.jsonl").read_bytes().splitlines()
        assert members["content_hash"].to_pylist() == [xxhash.xxh3_64_intdigest(line) for line in lines]


def test_library_versions_are_read_without_importing_torch():
    code = (
        "import sys; from ft_assets.lineage.environment import library_versions; v = library_versions(); "
        "assert 'torch' not in sys.modules; print(sorted(v))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert {"python", "dagster"} <= set(eval(result.stdout))


def _split_asset(folder: Path) -> dg.AssetsDefinition:
    @dg.asset(name="train_split", code_version="c1")
    def train_split(context: dg.AssetExecutionContext, lineage: LineageStore) -> dg.MaterializeResult:
        """Record a split version with members, the way the split assets do."""
        version = f"t{len(list(folder.glob('*.parquet')))}"
        members_file = folder / f"{version}.parquet"
        rows = (
            [("a", 1, None), ("b", 2, None), ("x-syn", 3, "x")] if version == "t0" else [("a", 1, None), ("b", 9, None)]
        )
        pq.write_table(_members(rows), members_file)
        ref = ArtifactRef("train_split", version, str(folder))
        return dg.MaterializeResult(metadata=lineage.record(context, ref, [], members_file=members_file, device="cpu"))

    return train_split


def test_sync_restores_member_storage_libraries_and_device(tmp_path):
    db, rebuilt = tmp_path / "lineage.duckdb", tmp_path / "rebuilt.duckdb"
    asset = _split_asset(tmp_path)
    with dg.DagsterInstance.ephemeral() as instance:
        for _ in range(2):
            result = dg.materialize([asset], instance=instance, resources={"lineage": LineageStore(path=str(db))})
            assert result.success
        sync(instance, rebuilt)

    def contents(path: Path) -> dict[str, object]:
        with duckdb.connect(str(path), read_only=True) as connection:
            return {
                "counts": [connection.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                           for t in ("materializations", "member_sets", "member_spans", "members")],
                "libraries": connection.execute("SELECT DISTINCT libraries, device FROM materializations").fetchall(),
                "members": connection.execute("SELECT * EXCLUDE (member_id) FROM members ORDER BY ALL").fetchall(),
            }  # fmt: skip

    original = contents(db)
    assert original == contents(rebuilt)
    assert original["counts"] == [2, 2, 4, 5]
    [(libraries, device)] = original["libraries"]
    assert json.loads(libraries)["dagster"] == dg.__version__ and device == "cpu"


def test_a_database_from_before_shared_members_is_upgraded(tmp_path):
    db = tmp_path / "old.duckdb"
    with duckdb.connect(str(db)) as connection:
        connection.execute(
            "CREATE TABLE materializations (asset VARCHAR NOT NULL, data_version VARCHAR NOT NULL, "
            "code_version VARCHAR, run_id VARCHAR NOT NULL, path VARCHAR, created_at TIMESTAMPTZ NOT NULL, "
            "config_hash VARCHAR, config_json VARCHAR, PRIMARY KEY (asset, data_version, run_id))"
        )
        connection.execute(
            "CREATE TABLE edges (child_asset VARCHAR NOT NULL, child_version VARCHAR NOT NULL, "
            "parent_asset VARCHAR NOT NULL, parent_version VARCHAR NOT NULL, "
            "PRIMARY KEY (child_asset, child_version, parent_asset, parent_version))"
        )
        connection.execute(
            "CREATE TABLE members (asset VARCHAR NOT NULL, data_version VARCHAR NOT NULL, position BIGINT NOT NULL, "
            "example_id VARCHAR NOT NULL, group_id VARCHAR, source_file VARCHAR, source_line BIGINT, "
            "source_example_id VARCHAR)"
        )
        for version, day, ids in [("t2", 2, ["a", "b", "d"]), ("t1", 1, ["a", "b", "c"])]:  # recorded out of order
            connection.execute(
                "INSERT INTO materializations VALUES ('train_split', ?, 'c1', 'r', NULL, ?, 'h', '{}')",
                [version, f"2026-01-0{day}T00:00:00+00:00"],
            )
            for line, example_id in enumerate(ids, 1):
                connection.execute(
                    "INSERT INTO members VALUES ('train_split', ?, ?, ?, ?, 'f.jsonl', ?, NULL)",
                    [version, line - 1, example_id, example_id, line],
                )
            connection.execute(
                "INSERT INTO materializations VALUES ('lora_adapter', ?, 'c1', 'r', NULL, now(), 'h', '{}')",
                [f"l{version}"],
            )
            connection.execute(
                "INSERT INTO edges VALUES ('lora_adapter', ?, 'train_split', ?)", [f"l{version}", version]
            )
    assert _models(db, "a") == {"lora_adapter@lt1", "lora_adapter@lt2"}  # the first query upgrades it
    diff = answers.diff(db, "lora_adapter@lt1", "lora_adapter@lt2")
    assert (diff["examples_added"], diff["examples_removed"], diff["examples_changed"]) == (["d"], ["c"], [])
    with connect(db, read_only=True) as connection:
        assert connection.execute("SELECT seq, data_version FROM member_sets ORDER BY seq").fetchall() == [
            (1, "t1"), (2, "t2")]  # fmt: skip
        assert connection.execute("SELECT count(*) FROM member_spans").fetchone() == (4,)
        assert connection.execute("SELECT count(*) FROM members WHERE content_hash IS NULL").fetchone() == (6,)
        assert connection.execute("SELECT libraries, device FROM materializations LIMIT 1").fetchone() == (None, None)
