"""One pass over a byte range of a JSONL file: parse, validate, clean and fingerprint each line.

This is the hot loop of data preparation and runs in worker processes, one chunk each. It
writes three files into a scratch folder: the kept rows (canonical JSON: sorted keys, cleaned
contents), their index (ids, groups, hashes, token estimates, source offsets) as Parquet, and
the rejected rows with their reasons. Line numbers there are relative to the chunk; ``prep``
adds the chunk's first line number when it merges them.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import xxhash
from pyarrow import feather

from ft_assets.dataset.columnar import ChunkLines, FastRows, fast_rows, string_buffers
from ft_assets.dataset.formats import CHAT_PASSTHROUGH_KEYS, check_chat, check_preference, detect_format, label_of
from ft_assets.dataset.splitting import SplitConfig, assign_splits
from ft_assets.dataset.text import NORMALIZED_AWAY, estimate_tokens, has_markdown, strip_markdown

BOM = b"\xef\xbb\xbf"
FIX_WHITESPACE = 1
FIX_MARKDOWN = 2
FIX_NEWLINES = 4
FIX_NAMES = {FIX_WHITESPACE: "trimmed_whitespace", FIX_MARKDOWN: "stripped_markdown", FIX_NEWLINES: "crlf_to_lf"}
_CANONICAL = orjson.OPT_SORT_KEYS

INDEX_SCHEMA = pa.schema(
    [
        ("line", pa.int64()),
        ("offset", pa.int64()),
        ("length", pa.int64()),
        ("example_id", pa.string()),
        ("group_id", pa.string()),
        ("source_id", pa.string()),
        ("tokens", pa.int32()),
        ("norm_hash", pa.uint64()),
        ("fixes", pa.uint8()),
        ("group_hash", pa.uint64()),
        ("size", pa.int64()),
        ("target", pa.uint8()),
    ]
)


@dataclass(frozen=True)
class CleanConfig:
    """What counts as a trainable row and which fixes are applied to kept rows.

    ``format`` is ``auto`` (from the first row), ``chat`` or ``preference``.
    """

    format: str = "auto"
    max_tokens: int = 4096
    strip_markdown: bool = True


@dataclass(frozen=True)
class ChunkTask:
    """A byte range of one input file, starting and ending at line boundaries."""

    number: int
    file_index: int
    path: str
    start: int
    end: int
    scratch: str
    config: CleanConfig
    split: SplitConfig | None = None


@dataclass
class ChunkResult:
    """Counts of one scanned chunk; the rows themselves are in the scratch files."""

    task: ChunkTask
    lines: int = 0
    kept: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    _index: pa.Table | None = field(default=None, repr=False, compare=False)

    def index(self) -> pa.Table:
        """Return the chunk's index of kept rows, memory-mapped on first use."""
        if self._index is None:
            self._index = feather.read_table(self.path("index.arrow"), memory_map=True)
        return self._index

    def path(self, suffix: str) -> Path:
        """Return the scratch file of this chunk with the given suffix."""
        return Path(self.task.scratch) / f"chunk-{self.task.number:06d}.{suffix}"


def clean_messages(messages: list[dict[str, Any]], markdown: bool) -> tuple[list[dict[str, Any]], int]:
    """Return the messages with CRLF made LF, outer whitespace trimmed and (if asked) assistant markdown removed."""
    fixes = 0
    cleaned = []
    for message in messages:
        content = message.get("content")
        if type(content) is not str:
            cleaned.append(message)
            continue
        text = content
        if "\r" in text:
            text = text.replace("\r\n", "\n")
            fixes |= FIX_NEWLINES
        if markdown and message["role"] == "assistant" and has_markdown(text):
            stripped = strip_markdown(text)
            if stripped != text.strip():
                fixes |= FIX_MARKDOWN
            text = stripped
        trimmed = text.strip()
        if trimmed != text:
            fixes |= FIX_WHITESPACE
        cleaned.append({**message, "content": trimmed} if trimmed != content else message)
    return cleaned, fixes


def clean_row(row: dict[str, Any], fmt: str, markdown: bool) -> tuple[dict[str, Any], list[dict[str, Any]], int]:
    """Return the trainable payload of a valid row, all its messages, and the fixes applied."""
    if fmt == "chat":
        messages, fixes = clean_messages(row["messages"], markdown)
        payload: dict[str, Any] = {"messages": messages}
        for key in CHAT_PASSTHROUGH_KEYS:
            if key in row:
                payload[key] = row[key]
        return payload, messages, fixes
    source, fix_in = clean_messages(row["input"]["messages"], markdown)
    preferred, fix_p = clean_messages(row["preferred_output"], markdown)
    rejected, fix_r = clean_messages(row["non_preferred_output"], markdown)
    payload = {
        "input": {**row["input"], "messages": source},
        "preferred_output": preferred,
        "non_preferred_output": rejected,
    }
    return payload, source + preferred + rejected, fix_in | fix_p | fix_r


def _content_length(messages: list[dict[str, Any]]) -> int:
    return sum(len(m.get("content") or "") for m in messages)


def _reject(out: list[bytes], line: int, reasons: list[str], raw: bytes) -> None:
    out.append(orjson.dumps({"line": line, "reasons": reasons, "raw": raw.decode("utf-8", "backslashreplace")}))


def _parse_error(raw: bytes) -> str:
    """Name why a line that orjson refused is not one JSON value."""
    if not raw.strip():
        return "blank_line"
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return "invalid_utf8"
    return "invalid_json"


def _labels(row: dict[str, Any], errors: set[str]) -> tuple[str | None, str | None, str | None]:
    """Return the row's id, group and source id as strings, adding errors for unusable ones."""
    example_id = row.get("id")
    if example_id is not None and type(example_id) is not str:
        example_id = label_of(example_id)
        if example_id is None:
            errors.add("invalid_id")
    group_id = row.get("group")
    if group_id is not None and type(group_id) is not str:
        group_id = label_of(group_id)
        if group_id is None:
            errors.add("invalid_group")
    source_id = row.get("source_id")
    return example_id or None, group_id or None, source_id if source_id is None else label_of(source_id)


def _scan_line(
    line: bytes, number: int, config: CleanConfig, reasons: Counter[str], rejected: list[bytes]
) -> tuple[Any, ...] | None:
    """Validate and clean one line on the reference (per-line) path; return its kept fields or None."""
    fmt = config.format
    raw = line[:-1] if line.endswith(b"\r") else line
    if raw.startswith(BOM):
        raw = raw[3:]
    try:
        row = orjson.loads(raw)
    except orjson.JSONDecodeError:
        error = _parse_error(raw)
        reasons[error] += 1
        _reject(rejected, number, [error], line)
        return None
    if type(row) is not dict or detect_format(row) != fmt:
        error = "data_type" if type(row) is not dict else "format_mismatch"
        reasons[error] += 1
        _reject(rejected, number, [error], line)
        return None
    errors = check_chat(row) if fmt == "chat" else check_preference(row)
    example_id, group_id, source_id = _labels(row, errors)
    if not errors:
        payload, messages, fixes = clean_row(row, fmt, config.strip_markdown)
        tokens = estimate_tokens(_content_length(messages), len(messages))
        if tokens > config.max_tokens:
            errors.add("too_many_tokens")
    if errors:
        ordered = sorted(errors)
        reasons.update(ordered)
        _reject(rejected, number, ordered, line)
        return None
    return orjson.dumps(payload, option=_CANONICAL), tokens, example_id, group_id, source_id, fixes


_BACKSLASH = ord("\\")
# Letters that make a backslash and themselves a whitespace escape, dropped from the key (the key is
# lower-cased, so upper-case ones count too).
_WHITESPACE_ESCAPES = np.zeros(256, dtype=bool)
_WHITESPACE_ESCAPES[list(b"ntrNTR")] = True
_LOWER_ASCII = bytes.maketrans(bytes(range(ord("A"), ord("Z") + 1)), bytes(range(ord("a"), ord("z") + 1)))
_DROPPED = bytes(sorted(set(NORMALIZED_AWAY) - {ord("\n")}))
HASH_SLICE_BYTES = 1 << 17  # the keys of this many bytes of rows are computed at once
_AUTO_ID = re.compile(r"[0-9a-f]{16}")
_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def line_hashes(lines: pa.Array) -> np.ndarray:
    """Return the 64-bit duplicate key of each canonical JSON payload followed by a newline.

    The key hashes the payload lower-cased with whitespace, its JSON escapes and markdown marks
    dropped, so examples differing only in those share a key. Canonical JSON holds no raw
    newline, so the rows are cleaned in one buffer and told apart by their newlines again.
    """
    data, _ = string_buffers(lines)
    if len(data) and data.max() >= 0x80:
        data, _ = string_buffers(pc.utf8_lower(lines))
    escapes = np.flatnonzero(data[:-1] == _BACKSLASH)
    escapes = escapes[_WHITESPACE_ESCAPES[data[escapes + 1]]]
    if len(escapes):
        data = data.copy()
        data[escapes] = ord(" ")  # dropped below, like the other whitespace
        data[escapes + 1] = ord(" ")
    text = data.tobytes().translate(_LOWER_ASCII, _DROPPED)
    hashes = np.empty(len(lines), dtype=np.uint64)
    row = start = 0
    while start < len(text):  # a slice at a time, so that the rows' bytes objects reuse the same memory
        end = text.find(b"\n", start + HASH_SLICE_BYTES) + 1 or len(text)
        rows = text[start : end - 1].split(b"\n")
        hashes[row : row + len(rows)] = np.fromiter(map(xxhash.xxh3_64_intdigest, rows), np.uint64, len(rows))
        row += len(rows)
        start = end
    return hashes


def normalized_hashes(payload: pa.Array) -> np.ndarray:
    """Return the 64-bit duplicate key of each canonical JSON payload (see ``line_hashes``)."""
    return line_hashes(pc.binary_join_element_wise(payload, "\n", ""))


def hex_ids(values: np.ndarray) -> pa.Array:
    """Return each 64-bit value as 16 lower-case hex digits (the id of a row without one)."""
    octets = values.astype(">u8").view(np.uint8).reshape(-1, 8)
    digits = np.empty((len(values), 16), dtype=np.uint8)
    digits[:, 0::2] = _HEX_DIGITS[octets >> 4]
    digits[:, 1::2] = _HEX_DIGITS[octets & 15]
    offsets = np.arange(0, 16 * (len(values) + 1), 16, dtype=np.int32)
    return pa.StringArray.from_buffers(len(values), pa.py_buffer(offsets), pa.py_buffer(digits.tobytes()))


def label_hash(label: str) -> int:
    """Return the 64-bit key of a group label; an auto id (16 hex digits) maps back to its hash."""
    return int(label, 16) if _AUTO_ID.fullmatch(label) else xxhash.xxh3_64_intdigest(label.encode())


def warm_up() -> None:
    """Run the Arrow kernels of the fast path once, so that forked workers start with them loaded."""
    line = orjson.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})
    normalized_hashes(fast_rows(ChunkLines.of(line), 100, strip_markdown=True).payload)


def scan_chunk(task: ChunkTask) -> ChunkResult:
    """Scan one chunk and write its kept rows, index and rejected rows to the scratch folder."""
    with open(task.path, "rb") as handle:
        handle.seek(task.start)
        data = handle.read(task.end - task.start)
    lines = ChunkLines.of(data)
    lengths = lines.lengths
    config = task.config
    result = ChunkResult(task=task, lines=len(lines))
    fast = FastRows.empty()
    if config.format == "chat" and len(lines):
        fast = fast_rows(lines, config.max_tokens, config.strip_markdown)
    rejected: list[bytes] = []
    slow_lines, slow_rows = [], []
    slow_path = np.ones(len(lines), dtype=bool)
    slow_path[fast.lines] = False
    for index in np.flatnonzero(slow_path).tolist():
        kept = _scan_line(lines[index], index + 1, config, result.reasons, rejected)
        if kept is not None:
            slow_lines.append(index)
            slow_rows.append(kept)
    slow = list(zip(*slow_rows, strict=True)) or [[] for _ in range(6)]
    line_index, order = fast.lines, None
    if slow_lines:
        line_index = np.concatenate([fast.lines, np.asarray(slow_lines, dtype=np.int64)])
        order = np.argsort(line_index, kind="stable")
        line_index = line_index[order]

    def combined(fast_values: pa.Array, slow_values: Any) -> pa.Array:
        if order is None:
            return fast_values
        return pa.concat_arrays([fast_values, pa.array(slow_values, pa.string())]).take(pa.array(order))

    def combined_numbers(fast_values: np.ndarray, slow_values: Any, dtype: type[np.generic]) -> np.ndarray:
        if order is None:
            return fast_values.astype(dtype, copy=False)
        return np.concatenate([fast_values.astype(dtype), np.asarray(slow_values, dtype)])[order]

    payload = combined(fast.payload, [p.decode() for p in slow[0]])
    lines_out = pc.binary_join_element_wise(payload, "\n", "")
    example_id = combined(fast.example_id, slow[2])
    group_id = combined(fast.group_id, slow[3])
    norm_hash = line_hashes(lines_out)
    unlabelled = pc.and_(group_id.is_null(), example_id.is_null()).to_numpy(zero_copy_only=False)
    example_id = pc.coalesce(example_id, hex_ids(norm_hash))
    group_id = pc.coalesce(group_id, example_id)
    group_hash = norm_hash.copy()
    labelled = np.flatnonzero(~unlabelled)
    if len(labelled):
        labels = group_id.take(pa.array(labelled)).to_pylist()
        group_hash[labelled] = np.array([label_hash(g) for g in labels], dtype=np.uint64)
    starts = lines.starts + task.start
    targets = assign_splits(group_hash, task.split) if task.split else np.zeros(len(group_hash), dtype=np.uint8)
    table = pa.table(
        {
            "line": line_index + 1,
            "offset": starts[line_index],
            "length": lengths[line_index],
            "example_id": example_id,
            "group_id": group_id,
            "source_id": combined(fast.source_id, slow[4]),
            "tokens": combined_numbers(fast.tokens, slow[1], np.int64),
            "norm_hash": norm_hash,
            "fixes": combined_numbers(np.zeros(len(fast.lines), np.uint8), slow[5], np.uint8),
            "group_hash": group_hash,
            "size": np.diff(string_buffers(lines_out)[1]),
            "target": targets,
        }
    ).cast(INDEX_SCHEMA)
    result.kept = table.num_rows
    feather.write_feather(table, result.path("index.arrow"), compression="uncompressed")
    for target in range(3 if task.split else 1):
        selected = lines_out.filter(pa.array(targets == target)) if task.split else lines_out
        result.path(f"kept-{target}.jsonl").write_bytes(string_buffers(selected)[0])
    result.path("rejected.jsonl").write_bytes(b"\n".join(rejected) + b"\n" if rejected else b"")
    return result
