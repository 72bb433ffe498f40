"""Clean, deduplicate, group and split JSONL examples: streaming, in parallel, every row accounted for.

The stages, each in its own module: read (``read``: files, JSON arrays, byte ranges), validate
and clean (``validate``, per chunk on worker processes), deduplicate (``deduplicate``, on 64-bit
keys), group and split (``group``, ``splitting``, on fixed-size numbers per row, on a second
thread while this one writes the rejected rows) and write (``write``: every chunk's surviving
rows copied to their offset in the outputs, on the workers). Memory grows by about 150 bytes
per row (the grouping columns and the band search); the rows themselves stay on disk.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from itertools import compress
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import xxhash
from filelock import FileLock, Timeout

from ft_assets.compute_threads import available_cores
from ft_assets.dataset.columnar import fixed_width_array, fixed_width_matrix
from ft_assets.dataset.deduplicate import find_duplicates, same_content
from ft_assets.dataset.group import EMPTY_BIN, SIGNATURE_BINS, GroupConfig, form_groups, near_duplicate_pairs
from ft_assets.dataset.memory import keep_freed_memory, worker_environment
from ft_assets.dataset.read import NO_SPLIT, InputFile, PrepError, binary_kind, open_inputs, plan_chunks
from ft_assets.dataset.splitting import SPLITS, SplitConfig, SplitError, assign_splits, require_examples
from ft_assets.dataset.validate import (
    FIX_NAMES,
    FORMAT_CODES,
    QUALITY_NAMES,
    QUALITY_TOO_LONG,
    ChunkResult,
    ChunkTask,
    CleanConfig,
    scan_chunk,
    warm_up,
)
from ft_assets.dataset.write import plan_writes, read_at, write_chunk

__all__ = ["GroupConfig", "PrepError", "SplitConfig", "SplitError", "clean", "prep", "split"]

CHUNK_BYTES = 8 * 1024 * 1024
# Freed memory the prep command's own process keeps for reuse: blocks up to this size (its
# arrays of a million rows) reuse freed pages, larger ones go back to the system when freed.
MERGE_KEEP_BYTES = 32 * 1024 * 1024
CLEANED = "cleaned.jsonl"
CLEANED_INDEX = "cleaned.index.parquet"
REJECTED = "rejected.jsonl"
REPORT = "report.json"
LOCK = ".prep.lock"
MEMBER_COLUMNS = ["example_id", "group_id", "source_id", "file", "line", "tokens", "norm_hash"]
GROUP_COLUMNS = [
    "norm_hash",
    "group_hash",
    "id_hash",
    "source_hash",
    "answer_hash",
    "free_text",
    "signature",
    "user_split",
]
# An answer longer than this many times the median answer (and than ``LONG_ANSWER_CHARS``) is flagged.
LONG_ANSWER_FACTOR = 4
LONG_ANSWER_CHARS = 200
QUALITY_EXAMPLES = 50

# Maps a worker function over items and returns a function that waits for the results.
Runner = Callable[[Callable[[Any], Any], list[Any]], Callable[[], list[Any]]]


def start_method(preferred: str) -> str:
    """Return ``preferred`` where this system offers it, else ``spawn`` (every system has it)."""
    return preferred if preferred in multiprocessing.get_all_start_methods() else "spawn"


@contextmanager
def _workers(count: int, tasks: int, method: str) -> Iterator[Runner]:
    """Yield a ``Runner``: it maps a worker function over items, on a process pool when worth it.

    ``forkserver`` (the default) forks workers from a fresh single-threaded server that has
    imported and warmed up the scan; it is safe in any process. ``fork`` starts faster but is
    only safe from a process that has not yet run threads holding locks (the ``prep`` command);
    that process then keeps up to ``MERGE_KEEP_BYTES`` of freed memory for reuse. Where neither
    exists (Windows), workers are spawned.
    """
    if count <= 1 or tasks <= 1:

        def run_here(function: Callable[[Any], Any], items: list[Any]) -> Callable[[], list[Any]]:
            results = [function(item) for item in items]
            return lambda: results

        yield run_here
        return
    method = start_method(method)
    context = multiprocessing.get_context(method)
    if method == "forkserver":
        context.set_forkserver_preload(["ft_assets.dataset.warm"])
    elif method == "fork":
        keep_freed_memory(MERGE_KEEP_BYTES)
        warm_up()
        gc.freeze()  # the objects so far are shared with the workers: collections skip them
    with worker_environment():
        pool = context.Pool(min(count, tasks), initializer=keep_freed_memory)
    with pool:
        yield lambda function, items: pool.map_async(function, items, chunksize=1).get


def _columns(results: list[ChunkResult], names: Sequence[str], keep: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Return index columns over every chunk (only the rows where ``keep``), each chunk's index read once."""
    total = int(np.count_nonzero(keep)) if keep is not None else sum(r.kept for r in results)
    out: dict[str, np.ndarray] = {}
    row = written = 0
    for result in results:
        mask = keep[row : row + result.kept] if keep is not None else None
        row += result.kept
        count = result.kept if mask is None else int(np.count_nonzero(mask))
        for name, values in result.columns(names).items():
            if name not in out:
                out[name] = np.empty((total, *values.shape[1:]), dtype=values.dtype)
            out[name][written : written + count] = values if mask is None else values[mask]
        written += count
    return {name: out.get(name, np.zeros(0, dtype=np.uint64)) for name in names}


def _column(results: list[ChunkResult], name: str, keep: np.ndarray | None = None) -> np.ndarray:
    """Return one index column over every chunk (only the rows where ``keep``)."""
    return _columns(results, [name], keep)[name]


def _signatures(arrays: Sequence[pa.Array | pa.ChunkedArray]) -> np.ndarray:
    """Return the prompt signatures of fixed-size binary columns as one (rows x bins) uint8 matrix."""
    parts = [
        fixed_width_matrix(array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array, SIGNATURE_BINS)
        for array in arrays
    ]
    return np.concatenate(parts) if parts else np.zeros((0, SIGNATURE_BINS), np.uint8)


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


def plan_splits(
    columns: dict[str, np.ndarray], split_config: SplitConfig, group_config: GroupConfig
) -> tuple[np.ndarray, dict[str, Any]]:
    """Return each kept row's split (0/1/2) and the grouping report (``columns`` is used up)."""
    group_of_row, report = form_groups(columns, group_config)  # uses up the grouping columns
    group_key = np.full(report["groups"], np.iinfo(np.uint64).max, dtype=np.uint64)
    np.minimum.at(group_key, group_of_row, columns["group_hash"])
    target, report["user_split_conflicts"] = assign_splits(group_of_row, group_key, columns["user_split"], split_config)
    sizes = np.bincount(group_of_row, minlength=report["groups"])
    report["largest_groups"] = [int(s) for s in np.sort(sizes)[::-1][:10]]
    split_of_group = np.zeros(report["groups"], dtype=np.uint8)
    split_of_group[group_of_row] = target  # a group never straddles splits: one value per group
    report["groups_per_split"] = dict(zip(SPLITS, np.bincount(split_of_group, minlength=3).tolist(), strict=True))
    report["user_assigned_rows"] = int(np.count_nonzero(columns["user_split"] != NO_SPLIT))
    return target, report


@dataclass
class _Scanned:
    """Inputs scanned into a scratch folder, with the duplicate verdict of every kept row."""

    files: list[InputFile]
    config: CleanConfig
    results: list[ChunkResult]
    duplicate: np.ndarray
    first_of: np.ndarray

    def kept_columns(self, names: Sequence[str]) -> dict[str, np.ndarray]:
        """Return index columns for the rows that survive de-duplication, in input order."""
        return _columns(self.results, names, ~self.duplicate)

    def grouping_columns(self) -> dict[str, np.ndarray]:
        """Return what ``form_groups`` reads, for the surviving rows: signatures of free-text answers only."""
        columns = self.kept_columns(GROUP_COLUMNS)
        free = ~self.duplicate
        free[free] = columns["free_text"]  # over every scanned row, from the kept rows' column: no second read
        columns["answer_signature"] = _columns(self.results, ["answer_signature"], free)["answer_signature"]
        return columns

    def long_answer_limit(self) -> float:
        """Return the answer length (characters) above which a kept answer is far longer than its peers."""
        chars = self.kept_columns(["answer_chars"])["answer_chars"]
        if not len(chars):
            return float("inf")
        return max(LONG_ANSWER_FACTOR * float(np.median(chars)), LONG_ANSWER_CHARS)

    def write(self, run: Runner, outputs: list[Path], targets: np.ndarray) -> Callable[[], list[Any]]:
        """Start writing every surviving row into ``outputs[target]``, in input order, on the workers.

        ``targets`` holds the output of each surviving row. Returns the function that waits for
        the writes, so the caller can work meanwhile.
        """
        every_target = np.zeros(len(self.duplicate), dtype=np.uint8)
        every_target[~self.duplicate] = targets
        tasks = plan_writes(
            [r.path("kept.jsonl") for r in self.results],
            [r.kept for r in self.results],
            ~self.duplicate,
            every_target,
            _column(self.results, "size"),
            outputs,
        )
        return run(write_chunk, tasks)


def _scan(files: list[InputFile], tasks: list[ChunkTask], run: Runner, config: CleanConfig) -> _Scanned:
    results = run(scan_chunk, tasks)()
    duplicate, first_of = find_duplicates(_column(results, "norm_hash"))
    return _Scanned(files, config, results, duplicate, first_of)


class _CleanedIndex:
    """Collects the index of kept rows into ``cleaned.index.parquet``."""

    def __init__(self, out_dir: Path) -> None:
        import pyarrow.parquet as pq

        self.schema = _cleaned_index_schema()
        self.writer = pq.ParquetWriter(out_dir / CLEANED_INDEX, self.schema, compression="zstd")

    def add(self, table: pa.Table, file: str, line_base: int, position: int) -> None:
        """Append the index rows of one chunk's kept rows; lines count from ``line_base``."""
        table = table.set_column(0, "line", pc.add(table["line"], line_base))
        table = table.append_column("file", pa.repeat(pa.scalar(file, pa.string()), table.num_rows))
        table = table.append_column("position", pa.array(np.arange(position, position + table.num_rows)))
        self.writer.write_table(table.select(self.schema.names).cast(self.schema))

    def close(self) -> None:
        """Finish the file."""
        self.writer.close()


def _run_phases(
    inputs: Sequence[str | Path],
    out_dir: Path,
    config: CleanConfig | None,
    labels: Sequence[str] | None,
    workers: int | None,
    chunk_bytes: int,
    method: str,
    plan: Callable[[_Scanned], tuple[list[Path], np.ndarray]],
    write_index: bool,
    check: Callable[[_Scanned], None] | None = None,
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Read, scan, decide and write; return the report, each kept row's output and its tokens.

    ``check`` may refuse the scanned rows before anything is written. ``plan`` names the output
    files and the output of each kept row. It runs on a second thread (mostly in NumPy, which
    releases the GIL) while this one accounts for every row, and the workers start writing as
    soon as it returns, unless accounting failed. ``write_index`` writes ``cleaned.index.parquet``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    config = config or CleanConfig()
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".scan-") as scratch:
        files, ignored = open_inputs(inputs, Path(scratch), labels, skip=out_dir)
        tasks = [
            ChunkTask(n, index, str(path), start, end, scratch, config, files[index].split)
            for n, (index, path, start, end) in enumerate(plan_chunks(files, chunk_bytes))
        ]
        with _workers(workers or available_cores(), len(tasks), method) as run:
            scanned = _scan(files, tasks, run, config)
            if check is not None:
                check(scanned)
            failed = threading.Event()

            def plan_and_write() -> tuple[np.ndarray, Callable[[], list[Any]]]:
                paths, targets = plan(scanned)
                if failed.is_set():  # the rows could not be accounted for: write nothing
                    return targets, list
                return targets, scanned.write(run, paths, targets)

            with ThreadPoolExecutor(1) as planner:
                planned = planner.submit(plan_and_write)
                sink = _CleanedIndex(out_dir) if write_index else None
                try:
                    report, tokens = _merge(scanned, out_dir, sink)
                except BaseException:
                    failed.set()
                    raise
                finally:
                    if sink is not None:
                        sink.close()
                targets, written = planned.result()
            written()
    report["ignored_inputs"] = ignored
    report["config"] = asdict(config)
    return report, targets, tokens


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
    kept row: ids, group keys, source file and line, tokens, fingerprints, quality flags) and
    ``rejected.jsonl`` (``file``, ``line``, ``reasons``, ``raw`` and for duplicates ``duplicate_of``).
    """

    def plan(scanned: _Scanned) -> tuple[list[Path], np.ndarray]:
        return [out_dir / CLEANED], np.zeros(int((~scanned.duplicate).sum()), np.uint8)

    report, _, _ = _run_phases(inputs, out_dir, config, labels, workers, chunk_bytes, "forkserver", plan, True)
    return report


def prep(
    inputs: Sequence[str | Path],
    out_dir: Path,
    clean_config: CleanConfig | None = None,
    split_config: SplitConfig | None = None,
    group_config: GroupConfig | None = None,
    *,
    workers: int | None = None,
    chunk_bytes: int = CHUNK_BYTES,
    start_method: str = "forkserver",
) -> dict[str, Any]:
    """Clean, group and split in one go (the ``ft-assets prep`` command); write ``report.json``.

    Kept rows go straight into the split files: the same rows, order and assignment as
    ``clean`` followed by ``split``, without ``cleaned.jsonl`` in between.
    """
    with locked_output(out_dir):
        return _prep(inputs, out_dir, clean_config, split_config or SplitConfig(), group_config or GroupConfig(),
                     workers, chunk_bytes, start_method)  # fmt: skip


@contextmanager
def locked_output(out_dir: Path) -> Iterator[None]:
    """Create ``out_dir`` and hold its lock while a run writes there; raise ``PrepError`` if another run holds it.

    The lock (``.prep.lock``, an OS file lock through ``filelock``) is let go by the OS when a
    run is killed, so a crash never leaves the folder locked.
    """
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PrepError(f"{out_dir}: cannot be made an output folder ({error.strerror or error})") from None
    lock = FileLock(out_dir / LOCK, blocking=False)
    try:
        lock.acquire()
    except Timeout:
        raise PrepError(
            f"{out_dir}: another ft-assets prep is writing there; wait for it or choose another --out"
        ) from None
    except OSError as error:  # a read-only folder, or a folder where the lock file should be
        raise PrepError(f"{out_dir}: cannot be written to ({error.strerror or error})") from None
    try:
        yield
    finally:
        lock.release()


def _prep(
    inputs: Sequence[str | Path],
    out_dir: Path,
    clean_config: CleanConfig | None,
    split_config: SplitConfig,
    group_config: GroupConfig,
    workers: int | None,
    chunk_bytes: int,
    start_method: str,
) -> dict[str, Any]:
    grouping: dict[str, Any] = {}
    outputs = [out_dir / name for name in (*(f"{split}.jsonl" for split in SPLITS), REJECTED, REPORT)]
    for path in outputs:  # a failed run leaves no stale outputs
        path.unlink(missing_ok=True)

    def check(scanned: _Scanned) -> None:
        kept = int(np.count_nonzero(~scanned.duplicate))
        if kept >= split_config.min_examples:
            return
        reasons: Counter[str] = Counter()
        by_file = [Counter() for _ in scanned.files]
        counts = [[0, 0] for _ in scanned.files]
        for result in scanned.results:
            reasons.update(result.reasons)
            by_file[result.task.file_index].update(result.reasons)
            counts[result.task.file_index][0] += result.lines
            counts[result.task.file_index][1] += result.kept
        if duplicates := int(scanned.duplicate.sum()):
            reasons["exact or normalized duplicates"] += duplicates
        read = sum(r.lines for r in scanned.results)
        detail = [f"read {read} rows, rejected {read - kept}" + (f": {_top_reasons(reasons)}" if reasons else "")]
        detail += nothing_kept(scanned.files, [(r, k) for r, k in counts], by_file)
        require_examples(kept, split_config, "; ".join(detail))

    def plan(scanned: _Scanned) -> tuple[list[Path], np.ndarray]:
        targets, report = plan_splits(scanned.grouping_columns(), split_config, group_config)
        grouping.update(report)
        return partial, targets

    # The split files are written under temporary names and take their own once complete.
    final = [out_dir / f"{name}.jsonl" for name in SPLITS]
    partial = [path.with_name(f".{path.name}.partial") for path in final]
    try:
        report, targets, tokens = _run_phases(
            inputs, out_dir, clean_config, None, workers, chunk_bytes, start_method, plan, False, check
        )
        for written, path in zip(partial, final, strict=True):
            os.replace(written, path)
        rows = np.bincount(targets, minlength=3)
        split_tokens = np.bincount(targets, weights=tokens, minlength=3).astype(np.int64)
        report["splits"] = {
            name: {"rows": int(rows[i]), "tokens": int(split_tokens[i])} for i, name in enumerate(SPLITS)
        }
        report["seed"] = split_config.seed
        report["grouping"] = grouping
        (out_dir / REPORT).write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    except BaseException:
        for path in outputs:  # nor any of its own
            path.unlink(missing_ok=True)
        raise
    finally:
        for path in partial:
            path.unlink(missing_ok=True)
    return report


def _lines(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        yield from handle


def _rejected_rows(result: ChunkResult, label: str, base: int, element: bool) -> list[tuple[int, bytes]]:
    """Return the chunk's rejected rows as (line, JSON) with file-relative line numbers."""
    rows = []
    for raw in _lines(result.path("rejected.jsonl")):
        record = orjson.loads(raw)
        record["line"] += base
        if element:
            record["element"] = record["line"] - 1
        rows.append((record["line"], orjson.dumps({"file": label, **record})))
    return rows


class _FirstRows:
    """The first occurrences of repeated rows: their chunk, input line and bytes in the chunk's kept part.

    Memory grows with the rows asked for, not with every kept row.
    """

    def __init__(self, results: list[ChunkResult], chunk_line_base: list[int], rows: np.ndarray) -> None:
        self.rows = rows  # sorted kept-row numbers
        first_row = np.cumsum([0] + [r.kept for r in results])
        self.chunk = np.searchsorted(first_row, rows, side="right") - 1
        self.lines = np.zeros(len(rows), np.int64)
        self.starts = np.zeros(len(rows), np.int64)
        self.sizes = np.zeros(len(rows), np.int64)
        bounds = np.searchsorted(self.chunk, np.arange(len(results) + 1))
        for chunk in np.unique(self.chunk).tolist():
            mine = slice(bounds[chunk], bounds[chunk + 1])
            local = rows[mine] - first_row[chunk]
            columns = results[chunk].columns(["size", "line"])
            sizes = columns["size"]
            self.sizes[mine] = sizes[local]
            self.starts[mine] = np.cumsum(sizes)[local] - sizes[local]
            self.lines[mine] = columns["line"][local] + chunk_line_base[chunk]

    def at(self, rows: np.ndarray) -> np.ndarray:
        """Return where each of ``rows`` (kept-row numbers asked for at the start) is in this object's arrays."""
        return np.searchsorted(self.rows, rows)


def _position(file: InputFile, line: int) -> dict[str, Any]:
    """Return where a row is: its file and line, and for a JSON array its element (from 0)."""
    return {"file": file.label, "line": line, **({"element": line - 1} if file.kind == "json_array" else {})}


def _merge(scanned: _Scanned, out_dir: Path, index: _CleanedIndex | None) -> tuple[dict[str, Any], np.ndarray]:
    """Write the rejected rows (and the kept rows' ``index``), in input order; count everything.

    Returns the report and the tokens of each kept row.
    """
    results, files = scanned.results, scanned.files
    duplicate, first_of = scanned.duplicate, scanned.first_of
    line_base: dict[int, int] = Counter()
    chunk_line_base = []
    for result in results:
        chunk_line_base.append(line_base[result.task.file_index])
        line_base[result.task.file_index] += result.lines
    reasons: Counter[str] = Counter()
    fixes: Counter[str] = Counter()
    quality: Counter[str] = Counter()
    formats: Counter[str] = Counter()
    quality_rows: list[dict[str, Any]] = []
    per_file = [{"path": f.label, "kind": f.kind, "read": 0, "kept": 0, "rejected": 0} for f in files]
    file_reasons: list[Counter[str]] = [Counter() for _ in files]
    tokens_kept = []
    long_answer = scanned.long_answer_limit()
    position = row = written_rejects = 0
    repeated = np.flatnonzero(duplicate)
    firsts = _FirstRows(results, chunk_line_base, np.unique(first_of[repeated]))
    first_of_next = iter(firsts.at(first_of[repeated]).tolist())  # each repeated row's first occurrence, in order
    with open(out_dir / REJECTED, "wb") as rejected, ExitStack() as stack:
        sources = [stack.enter_context(open(f.path, "rb", buffering=0)) for f in files]
        parts: dict[int, Any] = {}

        def cleaned(chunk: int, size: int, start: int) -> bytes:
            if chunk not in parts:
                parts[chunk] = stack.enter_context(open(results[chunk].path("kept.jsonl"), "rb", buffering=0))
            return read_at(parts[chunk], size, start)

        for number, (result, base) in enumerate(zip(results, chunk_line_base, strict=True)):
            file_index = result.task.file_index
            label = files[file_index].label
            element = files[file_index].kind == "json_array"
            reasons.update(result.reasons)
            file_reasons[file_index].update(result.reasons)
            table = result.index()
            dup = duplicate[row : row + result.kept]
            out_rows = _rejected_rows(result, label, base, element)
            repeats = np.flatnonzero(dup).tolist()
            if repeats:
                offsets, lengths = table["offset"].to_numpy(), table["length"].to_numpy()
                sizes, lines = table["size"].to_numpy(), table["line"].to_numpy()
                starts = np.cumsum(sizes) - sizes
            for local in repeats:
                at = next(first_of_next)
                first_chunk = int(firsts.chunk[at])
                mine = cleaned(number, int(sizes[local]), int(starts[local]))
                theirs = cleaned(first_chunk, int(firsts.sizes[at]), int(firsts.starts[at]))
                reason = "exact_duplicate" if same_content(mine, theirs) else "normalized_duplicate"
                reasons[reason] += 1
                file_reasons[file_index][reason] += 1
                line = read_at(sources[file_index], int(lengths[local]), int(offsets[local]))
                record: dict[str, Any] = {
                    "file": label,
                    "line": int(lines[local]) + base,
                    "reasons": [reason],
                    "raw": line.decode("utf-8", "backslashreplace"),
                    "duplicate_of": _position(files[results[first_chunk].task.file_index], int(firsts.lines[at])),
                }
                if element:
                    record["element"] = record["line"] - 1
                out_rows.append((record["line"], orjson.dumps(record)))
            out_rows.sort(key=lambda item: item[0])
            if out_rows:
                rejected.write(b"\n".join([item[1] for item in out_rows]) + b"\n")
            written_rejects += len(out_rows)
            kept_table = table.filter(pa.array(~dup)) if dup.any() else table
            flags = kept_table["quality"].to_numpy() | np.where(
                kept_table["answer_chars"].to_numpy() > long_answer, QUALITY_TOO_LONG, 0
            ).astype(np.uint8)
            kept_table = kept_table.set_column(kept_table.schema.get_field_index("quality"), "quality", pa.array(flags))
            if index is not None:
                index.add(kept_table, label, base, position)
            _count_bits(kept_table["fixes"].to_numpy(), FIX_NAMES, fixes)
            _count_bits(flags, QUALITY_NAMES, quality)
            for flagged in np.flatnonzero(flags).tolist()[: max(0, QUALITY_EXAMPLES - len(quality_rows))]:
                names = [name for bit, name in QUALITY_NAMES.items() if flags[flagged] & bit]
                line_number = int(kept_table["line"][flagged].as_py()) + base
                quality_rows.append({"file": label, "line": line_number, "flags": names})
            codes = np.bincount(kept_table["format"].to_numpy(), minlength=len(FORMAT_CODES))
            formats.update({name: int(codes[code]) for name, code in FORMAT_CODES.items() if codes[code]})
            tokens_kept.append(kept_table["tokens"].to_numpy())
            n_kept = kept_table.num_rows
            per_file[file_index]["read"] += result.lines
            per_file[file_index]["kept"] += n_kept
            per_file[file_index]["rejected"] += result.lines - n_kept
            position += n_kept
            row += result.kept
            result.release()
    read = sum(r.lines for r in results)
    if written_rejects != read - position:
        raise RuntimeError(f"row accounting broke: read {read}, kept {position}, rejected {written_rejects}")
    tokens = np.concatenate(tokens_kept) if tokens_kept else np.zeros(0, np.int64)
    report = {
        "read": read,
        "kept": position,
        "rejected": written_rejects,
        "duplicates": int(duplicate.sum()),
        "by_reason": dict(sorted(reasons.items())),
        "fixes": dict(sorted(fixes.items())),
        "quality": dict(sorted(quality.items())),
        "quality_rows": quality_rows,
        "formats": dict(sorted(formats.items())),
        "format": "mixed" if len(formats) > 1 else next(iter(formats), "chat"),
        "tokens": _token_stats(tokens),
        "files": per_file,
        "warnings": nothing_kept(files, [(f["read"], f["kept"]) for f in per_file], file_reasons),
    }
    return report, tokens


def nothing_kept(
    files: Sequence[InputFile], counts: Sequence[tuple[int, int]], reasons: Sequence[Counter[str]]
) -> list[str]:
    """Return a warning for each file none of whose rows was kept: its main rejection reasons, and what it looks like.

    ``counts`` holds (rows read, rows kept) per file, ``reasons`` its rejection reasons.
    """
    warnings = []
    for file, (read, kept), why in zip(files, counts, reasons, strict=True):
        if kept:
            continue
        if not read:
            warnings.append(f"{file.label}: empty, no rows")
            continue
        with open(file.path, "rb") as handle:
            kind = binary_kind(handle.read(4096))
        looks = f"; it looks like {kind}" if kind else ""
        none = "its only row was not kept" if read == 1 else f"none of its {read} rows was kept"
        warnings.append(f"{file.label}: {none} ({_top_reasons(why)}){looks}")
    return warnings


def _top_reasons(reasons: Counter[str], shown: int = 3) -> str:
    """Return the most common reasons with their counts, e.g. ``invalid_json 10, blank_line 2``."""
    return ", ".join(f"{name} {count}" for name, count in reasons.most_common(shown))


def _count_bits(values: np.ndarray, names: dict[int, str], counter: Counter[str]) -> None:
    for bit, name in names.items():
        count = int(np.count_nonzero(values & bit))
        if count:
            counter[name] += count


def _cleaned_index_schema() -> pa.Schema:
    from ft_assets.dataset.validate import INDEX_SCHEMA

    return INDEX_SCHEMA.append(pa.field("file", pa.string())).append(pa.field("position", pa.int64()))


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


def split(
    cleaned_dir: Path,
    out_dir: Path,
    config: SplitConfig,
    group_config: GroupConfig | None = None,
    *,
    members: bool = True,
) -> dict[str, Any]:
    """Write ``<split>.jsonl`` (and ``<split>.members.parquet``) for train, validation and test.

    Rows keep their cleaned order inside each split; returns rows and tokens per split and the
    grouping report (``grouping``). Raises ``SplitError`` when there are too few examples.
    """
    import pyarrow.parquet as pq

    index_path = cleaned_dir / CLEANED_INDEX
    index = pq.read_table(index_path, columns=[c for c in GROUP_COLUMNS if c != "signature"] + ["tokens"])
    columns = {name: index[name].to_numpy() for name in index.column_names}
    columns["signature"] = _signatures([pq.read_table(index_path, columns=["signature"])["signature"]])
    free = pa.array(columns["free_text"])
    answers = pq.read_table(index_path, columns=["answer_signature"])["answer_signature"].filter(free)
    columns["answer_signature"] = _signatures([answers])
    assignment, grouping = plan_splits(columns, config, group_config or GroupConfig())
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = np.bincount(assignment, minlength=3)
    content_hash = np.zeros(len(assignment), np.uint64)
    with ExitStack() as stack:
        handles = [stack.enter_context(open(out_dir / f"{name}.jsonl", "wb")) for name in SPLITS]
        row = 0
        for lines in _line_blocks(cleaned_dir / CLEANED):
            target = assignment[row : row + len(lines)]
            content_hash[row : row + len(lines)] = np.fromiter(
                map(xxhash.xxh3_64_intdigest, lines), np.uint64, len(lines)
            )
            row += len(lines)
            for i, handle in enumerate(handles):
                selected = list(compress(lines, (target == i).tolist()))
                if selected:
                    handle.write(b"\n".join(selected) + b"\n")
        if row != len(assignment):
            raise RuntimeError(f"{cleaned_dir / CLEANED} has {row} rows but its index {len(assignment)}")
    if members:
        _write_members(pq.ParquetFile(index_path), assignment, content_hash, out_dir, grouping)
    tokens = columns["tokens"]
    report: dict[str, Any] = {
        name: {"rows": int(counts[i]), "tokens": int(tokens[assignment == i].sum())} for i, name in enumerate(SPLITS)
    }
    report["grouping"] = grouping
    return report


def _write_members(
    index: Any, assignment: np.ndarray, content_hash: np.ndarray, out_dir: Path, grouping: dict[str, Any]
) -> None:
    """Write each split's members: ids, source, group, content hash (of the row's bytes), overlap check keys."""
    import pyarrow.parquet as pq

    table = index.read(
        columns=[*MEMBER_COLUMNS, "answer_hash", "free_text", "signature", "answer_signature", "quality"]
    )
    if grouping["group_by_answer"] == "never":  # no answer is a key: nothing to check across splits
        answer_key = np.zeros(table.num_rows, np.uint64)
        nothing = fixed_width_array(np.full((table.num_rows, SIGNATURE_BINS), EMPTY_BIN, np.uint8))
        table = table.set_column(table.schema.get_field_index("answer_signature"), "answer_signature", nothing)
    else:
        answer_key = table["answer_hash"].to_numpy()
        if grouping["group_by_answer"] == "auto":
            answer_key = np.where(table["free_text"].to_numpy(zero_copy_only=False), answer_key, np.uint64(0))
    table = table.drop_columns(["answer_hash", "free_text"]).append_column("answer_key", pa.array(answer_key))
    table = table.append_column("content_hash", pa.array(content_hash))
    for i, name in enumerate(SPLITS):
        mask = assignment == i
        part = table.filter(pa.array(mask))
        part = part.append_column("position", pa.array(np.arange(part.num_rows, dtype=np.int64)))
        pq.write_table(part, out_dir / f"{name}.members.parquet")


def revalidate(path: Path) -> dict[str, Any]:
    """Clean an already-cleaned file again (no token limit, markdown and answers kept) and return the report."""
    with tempfile.TemporaryDirectory() as scratch:
        config = CleanConfig(format="auto", max_tokens=2**31 - 1, strip_markdown=False, suspicious="keep")
        return clean([path], Path(scratch), config)


def _source_links(sources: pa.Table, variants: pa.Table) -> int:
    """Count the rows of ``variants`` whose ``source_id`` is an example of ``sources``."""
    ids = set(sources["example_id"].to_pylist())
    return sum(1 for source in variants["source_id"].to_pylist() if source is not None and source in ids)


def overlaps(split_folders: dict[str, str | Path], near_duplicate_threshold: float = 0.8) -> dict[tuple[str, str], int]:
    """Return, per pair of splits, what they share: ids, groups, contents, answers, sources, near duplicates.

    Answers are the grouped free-text answers; near duplicates are of prompts and of free-text
    answers; a variant in one split whose source is in the other counts as a shared source.
    """
    import pyarrow.parquet as pq

    columns = ("example_id", "group_id", "norm_hash", "answer_key")
    tables = {name: pq.read_table(Path(folder) / "members.parquet") for name, folder in split_folders.items()}
    found: dict[tuple[str, str], int] = {}
    names = list(tables)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            for column in columns:
                values = set(tables[first][column].to_pylist()) & set(tables[second][column].to_pylist())
                values.discard(0)
                if values:
                    found[(f"{first}/{second}", column)] = len(values)
            linked = _source_links(tables[first], tables[second]) + _source_links(tables[second], tables[first])
            if linked:
                found[(f"{first}/{second}", "synthetic_source")] = linked
            boundary = tables[first].num_rows
            for column, kind in (("signature", "near_duplicate_prompt"), ("answer_signature", "near_duplicate_answer")):
                signature = _signatures([tables[first][column], tables[second][column]])
                a, b = near_duplicate_pairs(signature, near_duplicate_threshold)
                if across := int(np.count_nonzero((a < boundary) != (b < boundary))):
                    found[(f"{first}/{second}", kind)] = across
    return found
