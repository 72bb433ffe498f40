"""Clean, deduplicate and split JSONL examples: streaming, in parallel, every row accounted for.

Three phases, each over byte-range chunks of the inputs on a pool of worker processes:
1. scan (``scan.scan_chunk``): parse, validate and fix every line; kept rows and their index
   (ids, group, fingerprints, size) go to scratch files, rejected rows with their reasons too;
2. decide, in this process, on 64-bit fingerprints only: duplicates (first occurrence wins)
   and, for splits, which group goes where, so memory grows by tens of bytes per row;
3. write (``route.route_chunk``): each chunk's surviving rows go to their output file at an
   offset computed in phase 2, while this process writes the rejected rows and the index.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, replace
from itertools import compress
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from ft_assets.dataset.formats import Format, detect_format
from ft_assets.dataset.memory import keep_freed_memory, worker_environment
from ft_assets.dataset.route import plan_routes, route_chunk
from ft_assets.dataset.scan import BOM, FIX_NAMES, ChunkResult, ChunkTask, CleanConfig, scan_chunk, warm_up
from ft_assets.dataset.splitting import SPLITS, SplitConfig, assign_splits

CHUNK_BYTES = 8 * 1024 * 1024
# Freed memory the prep command's own process keeps for reuse: blocks up to this size (its
# arrays of a million rows) reuse freed pages, larger ones go back to the system when freed.
MERGE_KEEP_BYTES = 32 * 1024 * 1024
CLEANED = "cleaned.jsonl"
CLEANED_INDEX = "cleaned.index.parquet"
REJECTED = "rejected.jsonl"
MEMBER_COLUMNS = ["example_id", "group_id", "source_id", "file", "line", "tokens", "norm_hash"]

# Maps a worker function over items and returns a function that waits for the results.
Runner = Callable[[Callable[[Any], Any], list[Any]], Callable[[], list[Any]]]


class PrepError(Exception):
    """An input cannot be read; the message says which and why."""


def expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Return the JSONL files named by ``inputs`` (folders give their ``*.jsonl``), sorted per folder."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*.jsonl") if p.is_file())
            if not found:
                raise PrepError(f"{path}: folder holds no .jsonl file")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise PrepError(f"{path}: no such file or folder")
    for file in files:
        try:
            with open(file, "rb") as handle:
                handle.read(1)
        except OSError as error:
            raise PrepError(f"{file}: cannot be read ({error.strerror or error})") from error
    return files


def resolve_format(files: Sequence[Path], requested: str) -> Format:
    """Return ``requested``, or for ``auto`` the format of the first JSON object in the inputs."""
    if requested in ("chat", "preference"):
        return requested  # type: ignore[return-value]
    if requested != "auto":
        raise ValueError(f"format must be auto, chat or preference, got {requested!r}")
    for file in files:
        with open(file, "rb") as handle:
            for line in handle:
                try:
                    fmt = detect_format(orjson.loads(line.removeprefix(BOM)))
                except orjson.JSONDecodeError:
                    continue
                if fmt is not None:
                    return fmt
    return "chat"


def plan_chunks(files: Sequence[Path], chunk_bytes: int) -> list[tuple[int, Path, int, int]]:
    """Cut each file into byte ranges of about ``chunk_bytes`` that end on a newline."""
    chunks = []
    for index, file in enumerate(files):
        size = file.stat().st_size
        start = 0
        with open(file, "rb") as handle:
            while start < size:
                handle.seek(min(start + chunk_bytes, size))
                end = min(start + chunk_bytes, size)
                if end < size:
                    handle.readline()
                    end = handle.tell()
                chunks.append((index, file, start, end))
                start = end
    return chunks


@contextmanager
def _workers(count: int, tasks: int, start_method: str) -> Iterator[Runner]:
    """Yield a ``Runner``: it maps a worker function over items, on a process pool when worth it.

    ``forkserver`` (the default) forks workers from a fresh single-threaded server that has
    imported and warmed up the scan; it is safe in any process. ``fork`` starts faster but is
    only safe from a process that has not yet run threads holding locks (the ``prep`` command);
    that process then keeps up to ``MERGE_KEEP_BYTES`` of freed memory for reuse.
    """
    if count <= 1 or tasks <= 1:

        def run_here(function: Callable[[Any], Any], items: list[Any]) -> Callable[[], list[Any]]:
            results = [function(item) for item in items]
            return lambda: results

        yield run_here
        return
    context = multiprocessing.get_context(start_method)
    if start_method == "forkserver":
        context.set_forkserver_preload(["ft_assets.dataset.warm"])
    else:
        keep_freed_memory(MERGE_KEEP_BYTES)
        warm_up()
        gc.freeze()  # the objects so far are shared with the workers: collections skip them
    with worker_environment():
        pool = context.Pool(min(count, tasks), initializer=keep_freed_memory)
    with pool:
        yield lambda function, items: pool.map_async(function, items, chunksize=1).get


def _column(results: list[ChunkResult], name: str) -> np.ndarray:
    parts = [r.index()[name].to_numpy() for r in results]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)


def find_duplicates(norm_hash: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (is duplicate, index of first occurrence) for each row, by normalized key."""
    n = len(norm_hash)
    if n == 0:
        return np.zeros(0, dtype=bool), np.zeros(0, dtype=np.int64)
    order = np.argsort(norm_hash)
    ordered = norm_hash[order]
    repeated = ordered[1:] == ordered[:-1]
    shared = np.flatnonzero(np.concatenate([repeated, [False]]) | np.concatenate([[False], repeated]))
    first_of = np.arange(n)
    if len(shared):  # only keys held by several rows need their first occurrence found
        keys, rows = ordered[shared], order[shared]
        starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
        first_of[rows] = np.repeat(np.minimum.reduceat(rows, starts), np.diff(np.append(starts, len(rows))))
    return first_of != np.arange(n), first_of


def exact_duplicates(results: list[ChunkResult], duplicate: np.ndarray, first_of: np.ndarray) -> np.ndarray:
    """Return, per row, whether it is a duplicate whose cleaned bytes equal its first occurrence's."""
    exact = np.zeros(len(duplicate), dtype=bool)
    sizes, targets = _column(results, "size"), _column(results, "target")
    rows = np.flatnonzero(duplicate)
    rows = rows[sizes[rows] == sizes[first_of[rows]]]
    if not len(rows):
        return exact
    chunk_first_row = np.concatenate([[0], np.cumsum([r.kept for r in results])])[:-1]
    pairs = np.concatenate([rows, first_of[rows]])  # the duplicates, then their first occurrences
    chunk_of = np.searchsorted(chunk_first_row, pairs, side="right") - 1
    start_in_part = np.zeros(len(pairs), dtype=np.int64)
    for target in np.unique(targets).tolist():
        ends = np.cumsum(np.where(targets == target, sizes, 0))
        mine = targets[pairs] == target
        before_chunk = np.concatenate([[0], ends])[chunk_first_row[chunk_of[mine]]]
        start_in_part[mine] = ends[pairs[mine]] - sizes[pairs[mine]] - before_chunk
    parts = (chunk_of * len(SPLITS) + targets[pairs]).tolist()
    starts, lengths = start_in_part.tolist(), sizes[pairs].tolist()
    with ExitStack() as stack:
        handles: dict[int, int] = {}

        def payload(pair: int) -> bytes:
            part = parts[pair]
            if part not in handles:
                chunk, target = divmod(part, len(SPLITS))
                path = results[chunk].path(f"kept-{target}.jsonl")
                handles[part] = stack.enter_context(open(path, "rb", buffering=0)).fileno()
            return os.pread(handles[part], lengths[pair], starts[pair])

        exact[rows] = [payload(pair) == payload(len(rows) + pair) for pair in range(len(rows))]
    return exact


def _lines(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        yield from handle


def _token_stats(tokens: np.ndarray) -> dict[str, float]:
    if len(tokens) == 0:
        return {"min": 0, "median": 0, "p90": 0, "max": 0, "total": 0}
    return {
        "min": int(tokens.min()),
        "median": float(np.median(tokens)),
        "p90": float(np.percentile(tokens, 90)),
        "max": int(tokens.max()),
        "total": int(tokens.sum()),
    }


@dataclass
class _Scanned:
    """Inputs scanned into a scratch folder, with the duplicate verdict of every kept row."""

    files: list[Path]
    names: list[str]
    config: CleanConfig
    results: list[ChunkResult]
    duplicate: np.ndarray
    first_of: np.ndarray

    def kept_column(self, name: str) -> np.ndarray:
        """Return an index column for the rows that survive de-duplication, in input order."""
        return _column(self.results, name)[~self.duplicate]

    def write(self, run: Runner, outputs: list[Path]) -> Callable[[], list[Any]]:
        """Start writing every surviving row into ``outputs[target]``, in input order, on the workers.

        Returns the function that waits for the writes, so the caller can work meanwhile.
        """
        tasks = plan_routes(
            [[r.path(f"kept-{t}.jsonl") for t in range(len(outputs))] for r in self.results],
            [r.kept for r in self.results],
            ~self.duplicate,
            _column(self.results, "target"),
            _column(self.results, "size"),
            outputs,
        )
        return run(route_chunk, tasks)


def _scan(
    inputs: Sequence[str | Path],
    scratch: Path,
    config: CleanConfig | None,
    labels: Sequence[str] | None,
    run: Runner | None,
    chunk_bytes: int,
    split_config: SplitConfig | None,
) -> _Scanned:
    files = expand_inputs(inputs)
    config = config or CleanConfig()
    config = replace(config, format=resolve_format(files, config.format))
    names = list(labels) if labels is not None else [str(f) for f in files]
    if len(names) != len(files):
        raise ValueError(f"{len(labels or [])} labels for {len(files)} input files")
    tasks = [
        ChunkTask(n, index, str(path), start, end, str(scratch), config, split_config)
        for n, (index, path, start, end) in enumerate(plan_chunks(files, chunk_bytes))
    ]
    results = run(scan_chunk, tasks)() if run else []
    duplicate, first_of = find_duplicates(_column(results, "norm_hash"))
    return _Scanned(files, names, config, results, duplicate, first_of)


class _CleanedIndex:
    """Collects the index of kept rows into ``cleaned.index.parquet``."""

    def __init__(self, out_dir: Path) -> None:
        import pyarrow.parquet as pq

        self.schema = _cleaned_index_schema()
        self.writer = pq.ParquetWriter(out_dir / CLEANED_INDEX, self.schema, compression="zstd")

    def add(self, table: pa.Table, kept: np.ndarray, file: str, line_base: int, position: int) -> None:
        """Append the index rows of one chunk where ``kept``; lines count from ``line_base``."""
        if not kept.all():
            table = table.filter(pa.array(kept))
        table = table.set_column(0, "line", pc.add(table["line"], line_base))
        table = table.append_column("file", pa.repeat(pa.scalar(file, pa.string()), table.num_rows))
        table = table.append_column("position", pa.array(np.arange(position, position + table.num_rows)))
        self.writer.write_table(table.select(self.schema.names).cast(self.schema))

    def close(self) -> None:
        """Finish the file."""
        self.writer.close()


class _SplitTotals:
    """Counts rows and tokens per split as the kept rows' index passes by."""

    def __init__(self, assignment: np.ndarray) -> None:
        self.assignment = assignment
        self.row = 0
        self.tokens = np.zeros(3, dtype=np.int64)

    def add(self, table: pa.Table, kept: np.ndarray, file: str, line_base: int, position: int) -> None:
        """Add the tokens of one chunk's rows where ``kept`` to their splits (the rest is unused)."""
        tokens = table["tokens"].to_numpy()[kept]
        target = self.assignment[self.row : self.row + len(tokens)]
        self.row += len(tokens)
        self.tokens += np.bincount(target, weights=tokens, minlength=3).astype(np.int64)

    def close(self) -> None:
        """Nothing to finish."""

    def report(self) -> dict[str, dict[str, int]]:
        """Rows and tokens per split."""
        counts = np.bincount(self.assignment, minlength=3)
        return {name: {"rows": int(counts[i]), "tokens": int(self.tokens[i])} for i, name in enumerate(SPLITS)}


def _run_phases(
    inputs: Sequence[str | Path],
    out_dir: Path,
    config: CleanConfig | None,
    labels: Sequence[str] | None,
    workers: int | None,
    chunk_bytes: int,
    start_method: str,
    split_config: SplitConfig | None,
    outputs: Callable[[_Scanned], tuple[list[Path], _CleanedIndex | _SplitTotals]],
) -> tuple[dict[str, Any], _CleanedIndex | _SplitTotals]:
    """Scan, decide and write; ``outputs`` names the files, the target of each kept row and the index sink."""
    out_dir.mkdir(parents=True, exist_ok=True)
    chunks = len(plan_chunks(expand_inputs(inputs), chunk_bytes))
    with (
        tempfile.TemporaryDirectory(dir=out_dir, prefix=".scan-") as scratch,
        _workers(workers or os.cpu_count() or 1, chunks, start_method) as run,
    ):
        scanned = _scan(inputs, Path(scratch), config, labels, run, chunk_bytes, split_config)
        paths, sink = outputs(scanned)
        written = scanned.write(run, paths)
        try:
            report = _merge(scanned, out_dir, sink)
        finally:
            sink.close()
        written()
    report["format"] = scanned.config.format
    report["config"] = asdict(scanned.config)
    return report, sink


def clean(
    inputs: Sequence[str | Path],
    out_dir: Path,
    config: CleanConfig | None = None,
    *,
    labels: Sequence[str] | None = None,
    workers: int | None = None,
    chunk_bytes: int = CHUNK_BYTES,
) -> dict[str, Any]:
    """Validate, fix and deduplicate ``inputs`` into ``out_dir``; return the report.

    ``labels`` name the input files in the outputs (default: their paths).

    Writes ``cleaned.jsonl`` (kept rows, input order), ``cleaned.index.parquet`` (one row per
    kept row: ids, group, source file and line, tokens, fingerprints) and ``rejected.jsonl``
    (``file``, ``line``, ``reasons``, ``raw`` and for duplicates ``duplicate_of``).
    """

    def outputs(_: _Scanned) -> tuple[list[Path], _CleanedIndex]:
        return [out_dir / CLEANED], _CleanedIndex(out_dir)

    report, _ = _run_phases(inputs, out_dir, config, labels, workers, chunk_bytes, "forkserver", None, outputs)
    return report


def prep(
    inputs: Sequence[str | Path],
    out_dir: Path,
    clean_config: CleanConfig | None = None,
    split_config: SplitConfig | None = None,
    *,
    workers: int | None = None,
    chunk_bytes: int = CHUNK_BYTES,
    start_method: str = "forkserver",
) -> dict[str, Any]:
    """Clean and split in one go (the ``ft-assets prep`` command); write ``report.json``.

    The scan already sorts kept rows by split, so they go straight into the split files: the
    same rows, order and assignment as ``clean`` followed by ``split``, without
    ``cleaned.jsonl`` in between.
    """
    split_config = split_config or SplitConfig()

    def outputs(scanned: _Scanned) -> tuple[list[Path], _SplitTotals]:
        return [out_dir / f"{name}.jsonl" for name in SPLITS], _SplitTotals(scanned.kept_column("target"))

    report, totals = _run_phases(
        inputs, out_dir, clean_config, None, workers, chunk_bytes, start_method, split_config, outputs
    )
    report["splits"] = totals.report()  # type: ignore[union-attr]
    report["seed"] = split_config.seed
    (out_dir / "report.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    return report


def _line_blocks(path: Path, block_bytes: int = CHUNK_BYTES) -> Iterator[list[bytes]]:
    """Yield the lines of a file (without newlines) in lists of about ``block_bytes``."""
    with open(path, "rb") as handle:
        rest = b""
        while block := handle.read(block_bytes):
            block = rest + block
            cut = block.rfind(b"\n") + 1
            rest = block[cut:]
            if cut:
                yield block[: cut - 1].split(b"\n")
        if rest:
            yield [rest]


def _write_selected(out: BinaryIO, lines: list[bytes], mask: np.ndarray) -> None:
    """Write the lines where ``mask`` is true, each followed by a newline."""
    selected = list(compress(lines, mask.tolist()))
    if selected:
        out.write(b"\n".join(selected) + b"\n")


def _merge(scanned: _Scanned, out_dir: Path, output: _CleanedIndex | _SplitTotals) -> dict[str, Any]:
    """Hand the kept rows to ``output`` and write the rejected rows, in input order; count everything."""
    results, files, names = scanned.results, scanned.files, scanned.names
    duplicate, first_of = scanned.duplicate, scanned.first_of
    line_base: dict[int, int] = Counter()
    chunk_line_base = []
    for result in results:
        chunk_line_base.append(line_base[result.task.file_index])
        line_base[result.task.file_index] += result.lines
    row_file = np.concatenate(
        [np.full(r.kept, r.task.file_index, dtype=np.int32) for r in results] or [np.zeros(0, np.int32)]
    )
    row_line = np.concatenate(
        [r.index()["line"].to_numpy() + base for r, base in zip(results, chunk_line_base, strict=True)]
        or [np.zeros(0, np.int64)]
    )
    reasons: Counter[str] = Counter()
    fixes: Counter[str] = Counter()
    per_file = [{"path": name, "read": 0, "kept": 0, "rejected": 0} for name in names]
    tokens_kept = []
    position = row = written_rejects = 0
    exact = exact_duplicates(results, duplicate, first_of)  # while the workers write the outputs
    with open(out_dir / REJECTED, "wb") as rejected, ExitStack() as inputs:
        sources = [inputs.enter_context(open(f, "rb", buffering=0)) for f in files]
        for result, base in zip(results, chunk_line_base, strict=True):
            file_index = result.task.file_index
            reasons.update(result.reasons)
            table = result.index()
            dup = duplicate[row : row + result.kept]
            out_rows: list[tuple[int, bytes]] = []
            for raw in _lines(result.path("rejected.jsonl")):
                record = orjson.loads(raw)
                record["line"] += base
                out_rows.append((record["line"], orjson.dumps({"file": names[file_index], **record})))
            offsets, lengths = table["offset"].to_numpy(), table["length"].to_numpy()
            for local in np.flatnonzero(dup).tolist():
                first = first_of[row + local]
                reason = "exact_duplicate" if exact[row + local] else "normalized_duplicate"
                reasons[reason] += 1
                line = os.pread(sources[file_index].fileno(), int(lengths[local]), int(offsets[local]))
                record = {
                    "file": names[file_index],
                    "line": int(row_line[row + local]),
                    "reasons": [reason],
                    "raw": line.decode("utf-8", "backslashreplace"),
                    "duplicate_of": {"file": names[row_file[first]], "line": int(row_line[first])},
                }
                out_rows.append((record["line"], orjson.dumps(record)))
            out_rows.sort(key=lambda item: item[0])
            if out_rows:
                rejected.write(b"\n".join([item[1] for item in out_rows]) + b"\n")
            written_rejects += len(out_rows)
            kept = ~dup
            output.add(table, kept, names[file_index], base, position)
            n_kept = int(np.count_nonzero(kept))
            fix_bits = table["fixes"].to_numpy()[kept]
            for bit, name in FIX_NAMES.items():
                count = int(np.count_nonzero(fix_bits & bit))
                if count:
                    fixes[name] += count
            tokens_kept.append(table["tokens"].to_numpy()[kept])
            per_file[file_index]["read"] += result.lines
            per_file[file_index]["kept"] += n_kept
            per_file[file_index]["rejected"] += result.lines - n_kept
            position += n_kept
            row += result.kept
    read = sum(r.lines for r in results)
    if written_rejects != read - position:
        raise RuntimeError(f"row accounting broke: read {read}, kept {position}, rejected {written_rejects}")
    tokens = np.concatenate(tokens_kept) if tokens_kept else np.zeros(0, np.int32)
    return {
        "read": read,
        "kept": position,
        "rejected": written_rejects,
        "duplicates": int(duplicate.sum()),
        "by_reason": dict(sorted(reasons.items())),
        "fixes": dict(sorted(fixes.items())),
        "tokens": _token_stats(tokens),
        "files": per_file,
    }


def _cleaned_index_schema() -> pa.Schema:
    from ft_assets.dataset.scan import INDEX_SCHEMA

    return INDEX_SCHEMA.append(pa.field("file", pa.string())).append(pa.field("position", pa.int64()))


def split(cleaned_dir: Path, out_dir: Path, config: SplitConfig, *, members: bool = True) -> dict[str, Any]:
    """Write ``<split>.jsonl`` (and ``<split>.members.parquet``) for train, validation and test.

    Rows keep their cleaned order inside each split; returns rows and tokens per split.
    """
    import pyarrow.parquet as pq

    index_path = cleaned_dir / CLEANED_INDEX
    group_hash = pq.read_table(index_path, columns=["group_hash"]).column(0).to_numpy()
    assignment = assign_splits(group_hash, config)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = np.bincount(assignment, minlength=3)
    with ExitStack() as stack:
        handles = [stack.enter_context(open(out_dir / f"{name}.jsonl", "wb")) for name in SPLITS]
        writers = []
        if members:
            schema = pq.read_schema(index_path)
            fields = [schema.field(c) for c in MEMBER_COLUMNS]
            member_schema = pa.schema(fields).append(pa.field("position", pa.int64()))
            writers = [
                stack.enter_context(pq.ParquetWriter(out_dir / f"{name}.members.parquet", member_schema))
                for name in SPLITS
            ]
        row = 0
        for lines in _line_blocks(cleaned_dir / CLEANED):
            target = assignment[row : row + len(lines)]
            row += len(lines)
            for i, handle in enumerate(handles):
                _write_selected(handle, lines, target == i)
        if row != len(assignment):
            raise RuntimeError(f"{cleaned_dir / CLEANED} has {row} rows but its index {len(assignment)}")
        if members:
            _write_members(pq.ParquetFile(index_path), assignment, writers)
    tokens = pq.read_table(index_path, columns=["tokens"]).column(0).to_numpy()
    return {
        name: {"rows": int(counts[i]), "tokens": int(tokens[assignment == i].sum())} for i, name in enumerate(SPLITS)
    }


def _write_members(index: Any, assignment: np.ndarray, writers: list[Any]) -> None:
    seen = np.zeros(3, dtype=np.int64)
    row = 0
    for batch in index.iter_batches(columns=MEMBER_COLUMNS):
        target = assignment[row : row + batch.num_rows]
        row += batch.num_rows
        for i, writer in enumerate(writers):
            mask = target == i
            count = int(mask.sum())
            if count:
                part = pa.Table.from_batches([batch]).filter(pa.array(mask))
                part = part.append_column("position", pa.array(np.arange(seen[i], seen[i] + count)))
                writer.write_table(part)
                seen[i] += count


def revalidate(path: Path) -> dict[str, Any]:
    """Clean an already-cleaned file again (no token limit, markdown kept) and return the report."""
    with tempfile.TemporaryDirectory() as scratch:
        return clean([path], Path(scratch), CleanConfig(format="auto", max_tokens=2**31 - 1, strip_markdown=False))


def overlaps(split_folders: dict[str, str | Path]) -> dict[tuple[str, str], int]:
    """Return, for each pair of splits and each of example id, group and normalized content, shared counts > 0."""
    import pyarrow.parquet as pq

    columns = ("example_id", "group_id", "norm_hash")
    values = {
        name: pq.read_table(Path(folder) / "members.parquet", columns=list(columns))
        for name, folder in split_folders.items()
    }
    found: dict[tuple[str, str], int] = {}
    names = list(values)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            for column in columns:
                shared = set(values[first][column].to_pylist()) & set(values[second][column].to_pylist())
                if shared:
                    found[(f"{first}/{second}", column)] = len(shared)
    return found
