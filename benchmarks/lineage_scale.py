"""Lineage at scale: many large split versions in the database, and how fast the questions are answered.

Builds a lineage database through the real ``record`` path: ``--versions`` train split versions of
about ``--members`` members each, where each next version changes the content of ~1% of the
members, removes ~0.4% and adds ~0.5% (a new raw file), ~10% are synthetic variants of another
example; each version gets the graph the assets record (cleaned examples, validation and test
splits, base model, adapter, merged model, evaluation with a score, a champion every 4th).
Then it times (median of ``--repeat``, each call opening its own connection as the CLI does)
``lineage models``, ``lineage example`` and ``lineage diff`` of two merged models (adjacent
versions, and the first against the last), and reports the database's bytes per member row.

The baseline is the schema before shared members (one ``members`` row per version and member,
here with a content hash added so its diff can say "changed"), built from the same data for
``--baseline-versions`` versions; its figures for ``--versions`` versions are extrapolated
(bytes per row as measured, scans linear in rows) and labelled so.

    .venv/bin/python benchmarks/lineage_scale.py                       # 200 x 1,000,000 (about 10 min)
    .venv/bin/python benchmarks/lineage_scale.py --versions 20 --members 100000
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ft_assets.lineage import answers, queries
from ft_assets.lineage.store import Materialization, connect, record, record_evaluations

CHANGED, REMOVED, ADDED, SYNTHETIC = 0.01, 0.004, 0.005, 0.10
RAW_FILES = 50


class Members:
    """The members of the current split version, as arrays; ``step`` makes the next version."""

    def __init__(self, n: int, rng: np.random.Generator) -> None:
        self.rng = rng
        self.ids = np.arange(n, dtype=np.int64)
        self.content = rng.integers(0, 2**63, n, dtype=np.uint64)
        self.file = np.sort(rng.integers(0, RAW_FILES, n)).astype(np.int32)
        self.line = np.arange(n, dtype=np.int64) - np.searchsorted(self.file, self.file) + 1
        self.source = np.where(rng.random(n) < SYNTHETIC, rng.integers(0, n, n), -1)
        self.next_id, self.next_file = n, RAW_FILES

    def step(self) -> None:
        n = len(self.ids)
        changed = self.rng.random(n) < CHANGED
        self.content = np.where(changed, self.rng.integers(0, 2**63, n, dtype=np.uint64), self.content)
        keep = self.rng.random(n) >= REMOVED
        added = int(n * ADDED)
        new_ids = np.arange(self.next_id, self.next_id + added, dtype=np.int64)
        self.ids = np.concatenate([self.ids[keep], new_ids])
        self.content = np.concatenate([self.content[keep], self.rng.integers(0, 2**63, added, dtype=np.uint64)])
        self.file = np.concatenate([self.file[keep], np.full(added, self.next_file, np.int32)])
        self.line = np.concatenate([self.line[keep], np.arange(1, added + 1, dtype=np.int64)])
        self.source = np.concatenate([self.source[keep], np.full(added, -1)])
        self.next_id += added
        self.next_file += 1

    def table(self) -> pa.Table:
        """Return the members as a split's members.parquet holds them."""
        ids = _names("ex-", self.ids)
        sources = pc.if_else(pa.array(self.source >= 0), _names("ex-", np.maximum(self.source, 0)), None)
        return pa.table({
            "example_id": ids,
            "group_id": ids,
            "source_id": sources,
            "file": _names("data/raw/part-", self.file.astype(np.int64), ".jsonl"),
            "line": self.line,
            "content_hash": self.content,
            "position": np.arange(len(self.ids), dtype=np.int64),
        })  # fmt: skip


def _names(prefix: str, numbers: np.ndarray, suffix: str = "") -> pa.Array:
    return pc.binary_join_element_wise(prefix, pc.cast(pa.array(numbers), pa.string()), suffix, "")


def _graph(db: Path, k: int, members: pa.Table) -> float:
    """Record version ``k`` of the data and the models made from it, as the assets do; return the split's seconds."""
    v = f"{k:04d}"

    def rec(asset: str, parents: list[tuple[str, str]], rows: pa.Table | None = None) -> None:
        record(db, Materialization(asset, f"{asset[:2]}{v}", "code", f"run{v}", parents=parents), rows)

    rec("cleaned_examples", [("raw_examples", f"ra{v}")])
    started = time.perf_counter()
    rec("train_split", [("cleaned_examples", f"cl{v}")], members)
    split_s = time.perf_counter() - started
    rec("validation_split", [("cleaned_examples", f"cl{v}")])
    rec("test_split", [("cleaned_examples", f"cl{v}")])
    rec("base_model", [("train_split", f"tr{v}")])
    rec("lora_adapter", [("base_model", f"ba{v}"), ("train_split", f"tr{v}"), ("validation_split", f"va{v}")])
    rec("merged_model", [("base_model", f"ba{v}"), ("lora_adapter", f"lo{v}")])
    parents = [("base_model", f"ba{v}"), ("lora_adapter", f"lo{v}"), ("merged_model", f"me{v}"),
               ("train_split", f"tr{v}"), ("test_split", f"te{v}")]  # fmt: skip
    rec("evaluation_table", parents)
    if k % 4 == 0:
        rec("champion_model", [("merged_model", f"me{v}"), ("evaluation_table", f"ev{v}")])
    record_evaluations(db, [{
        "model": "merged_model", "model_version": f"me{v}", "test_split_version": f"te{v}", "provider": "local",
        "n": 100, "evaluated_by": "evaluation_table", "evaluation_version": f"ev{v}", "run_id": f"run{v}",
        "created_at": "2026-01-01T00:00:00+00:00", "main_metric": "exact_match", "main_score": 0.5 + k / 1000,
    }])  # fmt: skip
    return split_s


BASELINE_SCHEMA = """
CREATE TABLE members (asset VARCHAR NOT NULL, data_version VARCHAR NOT NULL, position BIGINT NOT NULL,
    example_id VARCHAR NOT NULL, group_id VARCHAR, source_file VARCHAR, source_line BIGINT,
    source_example_id VARCHAR, content_hash UBIGINT)
"""
BASELINE_EXAMPLE = "SELECT asset, data_version, position, source_file, source_line FROM members WHERE example_id = ?"
BASELINE_DIFF = """
WITH a AS (SELECT example_id, content_hash FROM members WHERE data_version = $a),
     b AS (SELECT example_id, content_hash FROM members WHERE data_version = $b)
SELECT CASE WHEN b.example_id IS NULL THEN 'removed' WHEN a.example_id IS NULL THEN 'added' ELSE 'changed' END,
       coalesce(a.example_id, b.example_id)
FROM a FULL JOIN b USING (example_id)
WHERE a.example_id IS NULL OR b.example_id IS NULL OR a.content_hash <> b.content_hash
"""


def _median_ms(call: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), result


def _size(db: Path) -> int:
    with duckdb.connect(str(db)) as connection:
        connection.execute("CHECKPOINT")
    return db.stat().st_size


def run(versions: int, members: int, baseline_versions: int, repeat: int, folder: Path) -> None:
    db, baseline = folder / "lineage.duckdb", folder / "baseline.duckdb"
    data = Members(members, np.random.default_rng(0))
    with duckdb.connect(str(baseline)) as connection:
        connection.execute(BASELINE_SCHEMA)
    build_s = baseline_s = 0.0
    rows = 0
    split_s: list[float] = []
    for k in range(1, versions + 1):
        if k > 1:
            data.step()
        table = data.table()
        rows += table.num_rows
        started = time.perf_counter()
        split_s.append(_graph(db, k, table))
        build_s += time.perf_counter() - started
        if k <= baseline_versions:
            started = time.perf_counter()
            with duckdb.connect(str(baseline)) as connection:
                connection.register("t", table)
                connection.execute(
                    "INSERT INTO members SELECT 'train_split', ?, position, example_id, group_id, file, line, "
                    "source_id, content_hash FROM t",
                    [f"tr{k:04d}"],
                )
            baseline_s += time.perf_counter() - started
        if k % 20 == 0 or k == versions:
            print(f"  {k}/{versions} versions recorded, {build_s:.0f} s", flush=True)
    baseline_rows = min(baseline_versions, versions) * members
    size, baseline_size = _size(db), _size(baseline)
    with connect(db, read_only=True) as connection:
        counts = {t: connection.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                  for t in ("member_spans", "member_sets")}  # fmt: skip
    print(f"\n{versions} train split versions, {rows:,} member rows; built in {build_s:.0f} s "
          f"({build_s / versions:.2f} s per version, graph included)")  # fmt: skip
    tail = min(10, versions)
    print(f"recording one split version: median {statistics.median(split_s[:tail]):.2f} s over the first {tail}, "
          f"{statistics.median(split_s[-tail:]):.2f} s over the last {tail}")  # fmt: skip
    print(f"tables: {', '.join(f'{t} {n:,}' for t, n in counts.items())}")
    print(f"database: {size / 1e6:.1f} MB = {size / rows:.2f} bytes per member row")

    steady = "ex-7"  # an original example: changed now and then, in every version
    variant_source = str(data.table()["source_id"].drop_null()[0])
    print(f"\nmedian of {repeat} (ms), each call opening the database:")
    results = {}
    for name, call in [
        (f"lineage models {steady}", lambda: answers.models_with_example(db, steady)),
        (f"lineage models {variant_source} (has variants)", lambda: answers.models_with_example(db, variant_source)),
        (f"lineage example {steady}", lambda: queries.find_example(db, steady)),
        ("lineage diff adjacent merged models", lambda: answers.diff(db, f"me{versions - 1:04d}", f"me{versions:04d}")),
        ("lineage diff first vs last merged model", lambda: answers.diff(db, "me0001", f"me{versions:04d}")),
    ]:
        ms, result = _median_ms(call, repeat)
        results[name] = result
        size_note = f"{len(result)} rows" if isinstance(result, list) else ""
        if isinstance(result, dict) and "examples_added" in result:
            size_note = (f"+{len(result['examples_added'])} -{len(result['examples_removed'])} "
                         f"~{len(result['examples_changed'])}")  # fmt: skip
        elif isinstance(result, dict):
            size_note = f"{len(result['splits'])} split versions"
        print(f"  {name:50s} {ms:9.1f}   {size_note}")

    scale = versions / min(baseline_versions, versions)
    print(f"\nbaseline (one members row per version and member), {min(baseline_versions, versions)} versions:")
    print(f"  built in {baseline_s:.0f} s; {baseline_size / 1e6:.1f} MB = {baseline_size / baseline_rows:.2f} bytes "
          f"per member row -> {baseline_size * scale / 1e9:.2f} GB for {versions} versions (extrapolated)")  # fmt: skip
    with duckdb.connect(str(baseline), read_only=True) as connection:
        ms, found = _median_ms(lambda: connection.execute(BASELINE_EXAMPLE, [steady]).fetchall(), repeat)
        print(f"  example lookup {ms:.1f} ms ({len(found)} rows) -> {ms * scale:.0f} ms for {versions} versions "
              "(extrapolated: a full scan)")  # fmt: skip
        last = min(baseline_versions, versions)
        params = {"a": f"tr{last - 1:04d}", "b": f"tr{last:04d}"}
        ms, found = _median_ms(lambda: connection.execute(BASELINE_DIFF, params).fetchall(), repeat)
        print(f"  diff of two versions {ms:.1f} ms ({len(found)} ids); reads only those two versions' rows")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--versions", type=int, default=200)
    parser.add_argument("--members", type=int, default=1_000_000)
    parser.add_argument("--baseline-versions", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--keep", type=Path, default=None, help="Build in this folder and keep the databases.")
    args = parser.parse_args()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        run(args.versions, args.members, args.baseline_versions, args.repeat, args.keep)
        return
    with tempfile.TemporaryDirectory() as folder:
        run(args.versions, args.members, args.baseline_versions, args.repeat, Path(folder))


if __name__ == "__main__":
    main()
