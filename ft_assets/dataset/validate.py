"""Validate stage, per chunk: parse, validate, clean and fingerprint every line of a byte range.

This is the hot loop of data preparation and runs in worker processes, one chunk each. The
per-line reference path (``scan_line``) applies every rule; the columnar fast path
(``columnar``) takes whole blocks of plain chat rows whose verdict is certain and sends all
others to it. ``scan_chunk`` is the one seam between them: both paths' rows leave it as the
same columns. It writes three files into a scratch folder: the kept rows (canonical JSON:
sorted keys, cleaned contents, the example id first), their index (ids, group keys, grouping
features, token estimates, source offsets) and the rejected rows with their reasons. Line
numbers there are relative to the chunk; ``prep`` adds the chunk's first line number.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from pyarrow import feather

from ft_assets.dataset.columnar import (
    ChunkLines,
    FastRows,
    fast_rows,
    fixed_width_array,
    fixed_width_matrix,
    string_buffers,
)
from ft_assets.dataset.deduplicate import hex_ids, label_hashes, line_hashes
from ft_assets.dataset.formats import (
    CHAT_PASSTHROUGH_KEYS,
    LABEL_KEYS,
    PROVENANCE_KEYS,
    check_chat,
    check_preference,
    detect_format,
    join_content_parts,
    label_of,
)
from ft_assets.dataset.group import EMPTY_BIN, SIGNATURE_BINS, answer_features, free_text_answers, word_signatures
from ft_assets.dataset.read import NO_SPLIT, SPLIT_NAMES
from ft_assets.dataset.text import cut_followup, estimate_tokens, has_markdown, looks_cut_off, strip_markdown

BOM = b"\xef\xbb\xbf"
FIX_WHITESPACE = 1
FIX_MARKDOWN = 2
FIX_NEWLINES = 4
FIX_DROPPED_KEYS = 8
FIX_INPUT_LIST = 16
FIX_FOLLOWUP = 32
FIX_CONTENT_PARTS = 64
FIX_NAMES = {
    FIX_WHITESPACE: "trimmed_whitespace",
    FIX_MARKDOWN: "stripped_markdown",
    FIX_NEWLINES: "crlf_to_lf",
    FIX_DROPPED_KEYS: "dropped_top_level_keys",
    FIX_INPUT_LIST: "input_list_to_messages",
    FIX_FOLLOWUP: "cut_leaked_followup",
    FIX_CONTENT_PARTS: "joined_text_parts",
}
# Data-quality flags of a kept row; ``answer_too_long`` is decided across rows, by ``prep``.
QUALITY_FOLLOWUP = 1
QUALITY_CUT_OFF = 2
QUALITY_TOO_LONG = 4
QUALITY_NAMES = {
    QUALITY_FOLLOWUP: "leaked_followup",
    QUALITY_CUT_OFF: "cut_off_answer",
    QUALITY_TOO_LONG: "answer_too_long",
}
SUSPICIOUS_ACTIONS = ("keep", "fix", "reject")
FORMAT_CODES = {"chat": 0, "preference": 1}
PREFERENCE_KEYS = frozenset({"input", "preferred_output", "non_preferred_output"})
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
        ("quality", pa.uint8()),
        ("format", pa.uint8()),
        ("user_split", pa.uint8()),
        ("group_hash", pa.uint64()),
        ("id_hash", pa.uint64()),
        ("source_hash", pa.uint64()),
        ("answer_hash", pa.uint64()),
        ("answer_words", pa.int32()),
        ("answer_chars", pa.int32()),
        ("free_text", pa.bool_()),
        ("signature", pa.binary(SIGNATURE_BINS)),
        ("answer_signature", pa.binary(SIGNATURE_BINS)),
        ("size", pa.int64()),
    ]
)


@dataclass(frozen=True)
class CleanConfig:
    """What counts as a trainable row and which fixes are applied to kept rows.

    ``format`` is ``auto`` (each row's own), ``chat`` or ``preference`` (other rows rejected).
    ``strip_markdown`` removes markdown debris from every turn. ``suspicious`` is what happens to
    an answer with a leaked follow-up question or cut off mid-sentence: ``keep`` (flag only),
    ``fix`` (cut the follow-up; a cut-off answer is flagged) or ``reject``.
    """

    format: str = "auto"
    max_tokens: int = 4096
    strip_markdown: bool = True
    suspicious: str = "fix"

    def __post_init__(self) -> None:
        if self.format not in ("auto", "chat", "preference"):
            raise ValueError(f"format must be auto, chat or preference, got {self.format!r}")
        if self.suspicious not in SUSPICIOUS_ACTIONS:
            raise ValueError(f"suspicious must be one of {', '.join(SUSPICIOUS_ACTIONS)}, got {self.suspicious!r}")


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
    split_hint: int = NO_SPLIT


def _to_numpy(values: pa.Array) -> np.ndarray:
    """Return an index column as NumPy; a fixed-size binary column as a (rows x width) uint8 matrix."""
    if pa.types.is_fixed_size_binary(values.type):
        return fixed_width_matrix(values, values.type.byte_width)
    return values.to_numpy(zero_copy_only=False)


@dataclass
class ChunkResult:
    """Counts of one scanned chunk; the rows themselves are in the scratch files."""

    task: ChunkTask
    lines: int = 0
    kept: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    _index: pa.Table | None = field(default=None, repr=False, compare=False)

    def index(self) -> pa.Table:
        """Return the chunk's index of kept rows, memory-mapped on first use (``release`` unmaps it)."""
        if self._index is None:
            self._index = feather.read_table(self.path("index.arrow"), memory_map=True)
        return self._index

    def release(self) -> None:
        """Drop the mapped index, so its pages stop counting in this process's memory."""
        self._index = None

    def columns(self, names: Sequence[str]) -> dict[str, np.ndarray]:
        """Return index columns, read into memory with one read of the index (nothing stays mapped)."""
        table = feather.read_table(self.path("index.arrow"), columns=list(names), memory_map=False)
        return {name: _to_numpy(table[name].combine_chunks()) for name in names}

    def path(self, suffix: str) -> Path:
        """Return the scratch file of this chunk with the given suffix."""
        return Path(self.task.scratch) / f"chunk-{self.task.number:06d}.{suffix}"


@dataclass(frozen=True)
class ScannedRow:
    """What the reference path keeps of one valid row."""

    payload: bytes
    tokens: int
    example_id: str | None
    group_id: str | None
    source_id: str | None
    split: str | None
    fixes: int
    quality: int
    format: str
    prompt: str
    answer: str


def clean_messages(
    messages: list[dict[str, Any]], markdown: bool, suspicious: str
) -> tuple[list[dict[str, Any]], int, int]:
    """Return the messages cleaned, the fixes applied and the quality flags raised.

    CRLF becomes LF, outer whitespace is trimmed, markdown debris is removed (when asked) and
    a leaked follow-up question in an answer is flagged and, with ``suspicious='fix'``, cut.
    """
    fixes = quality = 0
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
        if message.get("role") == "assistant":
            cut, found = cut_followup(text)
            if found:
                quality |= QUALITY_FOLLOWUP
                if suspicious == "fix" and cut.strip():
                    text = cut
                    fixes |= FIX_FOLLOWUP
        if markdown and has_markdown(text):
            stripped = strip_markdown(text)
            if stripped != text.strip():
                fixes |= FIX_MARKDOWN
            text = stripped
        trimmed = text.strip()
        if trimmed != text:
            fixes |= FIX_WHITESPACE
        cleaned.append({**message, "content": trimmed} if trimmed != content else message)
    return cleaned, fixes, quality


def _text(messages: list[dict[str, Any]], role: str) -> list[str]:
    return [m["content"] for m in messages if m.get("role") == role and type(m.get("content")) is str]


def clean_row(
    row: dict[str, Any], fmt: str, markdown: bool, suspicious: str = "fix"
) -> tuple[dict[str, Any], list[dict[str, Any]], int, int, str, str]:
    """Return a valid row's trainable payload, all its messages, fixes, quality flags, prompt and answer.

    The prompt is the user turns joined by newlines; the answer is the last assistant turn
    (the preferred output of a preference row).
    """
    if fmt == "chat":
        messages, fixes, quality = clean_messages(row["messages"], markdown, suspicious)
        payload: dict[str, Any] = {"messages": messages}
        for key in CHAT_PASSTHROUGH_KEYS:
            if key in row:
                payload[key] = row[key]
        answers = _text(messages, "assistant")
        return payload, messages, fixes, quality, "\n".join(_text(messages, "user")), answers[-1] if answers else ""
    source, fix_in, q_in = clean_messages(row["input"]["messages"], markdown, suspicious)
    preferred, fix_p, q_p = clean_messages(row["preferred_output"], markdown, suspicious)
    rejected, fix_r, q_r = clean_messages(row["non_preferred_output"], markdown, suspicious)
    payload = {
        "input": {**row["input"], "messages": source},
        "preferred_output": preferred,
        "non_preferred_output": rejected,
    }
    answers = _text(preferred, "assistant")
    prompt = "\n".join(_text(source, "user"))
    return (
        payload,
        source + preferred + rejected,
        fix_in | fix_p | fix_r,
        q_in | q_p | q_r,
        prompt,
        answers[-1] if answers else "",
    )


def written_answer(row: dict[str, Any], fmt: str) -> str:
    """Return a valid row's answer as written, before cleaning (the last assistant turn of its output)."""
    answers = _text(row["messages"] if fmt == "chat" else row["preferred_output"], "assistant")
    return answers[-1] if answers else ""


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


def _labels(row: dict[str, Any], errors: set[str]) -> tuple[str | None, str | None, str | None, str | None]:
    """Return the row's id, group, source id and split as strings, adding errors for unusable ones."""
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
    split = row.get("split")
    if type(split) is str and split.lower() in SPLIT_NAMES:
        split = split.lower()  # "Test" names the test split, as a folder named Test does
    elif split is not None:
        errors.add("invalid_split")
    return example_id or None, group_id or None, source_id if source_id is None else label_of(source_id), split


def _join_text_parts(row: dict[str, Any], fmt: str) -> tuple[dict[str, Any], bool]:
    """Return the row with every message's text-part content joined into a string, and whether any was."""
    if fmt == "chat":
        messages, joined = join_content_parts(row.get("messages"))
        return ({**row, "messages": messages} if joined else row), joined
    source = row.get("input")
    messages, joined_input = join_content_parts(source.get("messages") if type(source) is dict else None)
    preferred, joined_preferred = join_content_parts(row.get("preferred_output"))
    rejected, joined_rejected = join_content_parts(row.get("non_preferred_output"))
    if not (joined_input or joined_preferred or joined_rejected):
        return row, False
    row = {**row}
    if joined_input:
        row["input"] = {**source, "messages": messages}
    if joined_preferred:
        row["preferred_output"] = preferred
    if joined_rejected:
        row["non_preferred_output"] = rejected
    return row, True


def scan_line(
    line: bytes, number: int, config: CleanConfig, reasons: Counter[str], rejected: list[bytes]
) -> ScannedRow | None:
    """Validate and clean one line on the reference (per-line) path; return what is kept, or None."""
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
    fmt = detect_format(row)
    if fmt is None or config.format not in ("auto", fmt):
        error = "data_type" if fmt is None else "format_mismatch"
        reasons[error] += 1
        _reject(rejected, number, [error], line)
        return None
    fixes = 0
    if fmt == "preference" and type(row.get("input")) is list:
        row = {**row, "input": {"messages": row["input"]}}
        fixes |= FIX_INPUT_LIST
    row, joined = _join_text_parts(row, fmt)
    if joined:
        fixes |= FIX_CONTENT_PARTS
    content_keys = {"messages", *CHAT_PASSTHROUGH_KEYS} if fmt == "chat" else PREFERENCE_KEYS
    known = LABEL_KEYS | PROVENANCE_KEYS | content_keys
    if any(key not in known for key in row):
        fixes |= FIX_DROPPED_KEYS
    errors = check_chat(row) if fmt == "chat" else check_preference(row)
    example_id, group_id, source_id, split = _labels(row, errors)
    if not errors:
        payload, messages, cleaning, quality, prompt, answer = clean_row(
            row, fmt, config.strip_markdown, config.suspicious
        )
        fixes |= cleaning
        if cleaning:  # what cleaning left must still be valid (a turn of debris only is now empty)
            errors |= check_chat(payload) if fmt == "chat" else check_preference(payload)
        if looks_cut_off(answer, written_answer(row, fmt)):
            quality |= QUALITY_CUT_OFF
        tokens = estimate_tokens(_content_length(messages), len(messages))
        if tokens > config.max_tokens:
            errors.add("too_many_tokens")
        if config.suspicious == "reject":
            errors.update(name for bit, name in QUALITY_NAMES.items() if quality & bit)
    if errors:
        ordered = sorted(errors)
        reasons.update(ordered)
        _reject(rejected, number, ordered, line)
        return None
    return ScannedRow(
        orjson.dumps(payload, option=_CANONICAL),
        tokens,
        example_id,
        group_id,
        source_id,
        split,
        fixes,
        quality,
        fmt,
        prompt,
        answer,
    )


def identify(row: dict[str, Any]) -> tuple[str, int] | None:
    """Return the example id cleaning gives a raw row (its ``id``, else a hash of its content) and its duplicate key.

    None when cleaning would reject the row. Synthetic generation uses it so that a variant's
    ``source_id`` names its source as cleaning does, and to skip duplicate sources.
    """
    kept = scan_line(orjson.dumps(row), 1, CleanConfig(), Counter(), [])
    if kept is None:
        return None
    key = line_hashes(pa.array([kept.payload.decode() + "\n"]))
    return kept.example_id or hex_ids(key).to_pylist()[0], int(key[0])


def warm_up() -> None:
    """Run the Arrow kernels of the fast path once, so that forked workers start with them loaded."""
    line = orjson.dumps({"messages": [{"role": "user", "content": "a b"}, {"role": "assistant", "content": "b"}]})
    scan_chunk_lines(ChunkLines.of(line), CleanConfig(format="chat"), Counter(), [], NO_SPLIT)


def _json_strings(values: pa.Array) -> pa.Array:
    """Return each string as a JSON string literal, the way orjson writes it."""
    data, _ = string_buffers(values)
    if not len(data) or not ((data < 0x20) | (data == ord('"')) | (data == ord("\\"))).any():
        return pc.binary_join_element_wise('"', values, '"', "")
    return pa.array([orjson.dumps(v).decode() for v in values.to_pylist()], pa.string())


def scan_chunk_lines(
    lines: ChunkLines,
    config: CleanConfig,
    reasons: Counter[str],
    rejected: list[bytes],
    split_hint: int,
    *,
    fast: bool = True,
) -> tuple[pa.Array, pa.Table]:
    """Scan the lines of a chunk; return the kept rows' output lines and their index (offsets from 0).

    ``fast=False`` sends every line through the reference path (the differential tests do).
    """
    taken = FastRows.empty()
    if fast and config.format != "preference" and len(lines):
        taken = fast_rows(lines, config.max_tokens, config.strip_markdown)
    slow_path = np.ones(len(lines), dtype=bool)
    slow_path[taken.lines] = False
    slow_lines, slow_rows = [], []
    for index in np.flatnonzero(slow_path).tolist():
        kept = scan_line(lines[index], index + 1, config, reasons, rejected)
        if kept is not None:
            slow_lines.append(index)
            slow_rows.append(kept)
    line_index, order = taken.lines, None
    if slow_lines:
        line_index = np.concatenate([taken.lines, np.asarray(slow_lines, dtype=np.int64)])
        order = np.argsort(line_index, kind="stable")
        line_index = line_index[order]

    def combined(fast_values: pa.Array, name: str) -> pa.Array:
        if order is None:
            return fast_values
        slow = [getattr(r, name) for r in slow_rows]
        if name == "payload":
            slow = [p.decode() for p in slow]
        return pa.concat_arrays([fast_values, pa.array(slow, pa.string())]).take(pa.array(order))

    def combined_numbers(fast_values: np.ndarray, name: str, dtype: type[np.generic]) -> np.ndarray:
        if order is None:
            return fast_values.astype(dtype, copy=False)
        slow = np.asarray([getattr(r, name) for r in slow_rows], dtype)
        return np.concatenate([fast_values.astype(dtype), slow])[order]

    n_fast = len(taken.lines)
    payload = combined(taken.payload, "payload")
    norm_hash = line_hashes(pc.binary_join_element_wise(payload, "\n", ""))
    own_id = combined(taken.example_id, "example_id")
    group_id = combined(taken.group_id, "group_id")
    source_id = combined(taken.source_id, "source_id")
    split = combined(taken.split, "split")
    example_id = pc.coalesce(own_id, hex_ids(norm_hash))
    id_hash = label_hashes(own_id, norm_hash)
    group_hash = label_hashes(group_id, id_hash)
    group_id = pc.coalesce(group_id, example_id)
    source_hash = label_hashes(source_id, np.zeros(len(payload), np.uint64))
    user_split = np.full(len(payload), split_hint, dtype=np.uint8)
    for name, code in SPLIT_NAMES.items():
        user_split[pc.equal(split, name).fill_null(False).to_numpy(zero_copy_only=False)] = code
    answer = combined(taken.answer, "answer")
    answer_hash, answer_words, answer_chars = answer_features(answer)
    signature = word_signatures(combined(taken.prompt, "prompt"))
    free_text = free_text_answers(answer, answer_words)
    answer_signature = np.full((len(answer), SIGNATURE_BINS), EMPTY_BIN, dtype=np.uint8)
    if (free_rows := np.flatnonzero(free_text)).size:  # label answers are never near duplicates of each other
        answer_signature[free_rows] = word_signatures(answer.take(pa.array(free_rows)))
    formats = np.zeros(len(payload), np.uint8)
    if order is not None:
        slow_formats = np.asarray([FORMAT_CODES[r.format] for r in slow_rows], np.uint8)
        formats = np.concatenate([np.zeros(n_fast, np.uint8), slow_formats])[order]
    body = pc.binary_replace_slice(payload.cast(pa.binary()), 0, 1, "")  # the payload after its "{"
    json_id = _json_strings(example_id).cast(pa.binary())
    # Joined as bytes: slicing off the "{" as a string would decode UTF-8 for nothing.
    lines_out = pc.binary_join_element_wise(pa.scalar(b'{"id":'), json_id, pa.scalar(b","), body, pa.scalar(b"\n"), b"")
    index = pa.table(
        {
            "line": line_index + 1,
            "offset": lines.starts[line_index],
            "length": lines.lengths[line_index],
            "example_id": example_id,
            "group_id": group_id,
            "source_id": source_id,
            "tokens": combined_numbers(taken.tokens, "tokens", np.int64),
            "norm_hash": norm_hash,
            "fixes": combined_numbers(np.zeros(n_fast, np.uint8), "fixes", np.uint8),
            "quality": combined_numbers(np.zeros(n_fast, np.uint8), "quality", np.uint8),
            "format": formats,
            "user_split": user_split,
            "group_hash": group_hash,
            "id_hash": id_hash,
            "source_hash": source_hash,
            "answer_hash": answer_hash,
            "answer_words": answer_words,
            "answer_chars": answer_chars,
            "free_text": free_text,
            "signature": fixed_width_array(signature),
            "answer_signature": fixed_width_array(answer_signature),
            "size": np.diff(string_buffers(lines_out)[1]),
        }
    ).cast(INDEX_SCHEMA)
    return lines_out, index


def scan_chunk(task: ChunkTask) -> ChunkResult:
    """Scan one chunk and write its kept rows, index and rejected rows to the scratch folder."""
    with open(task.path, "rb") as handle:
        handle.seek(task.start)
        data = handle.read(task.end - task.start)
    lines = ChunkLines.of(data)
    result = ChunkResult(task=task, lines=len(lines))
    rejected: list[bytes] = []
    lines_out, index = scan_chunk_lines(lines, task.config, result.reasons, rejected, task.split_hint)
    index = index.set_column(1, "offset", pc.add(index["offset"], task.start))
    result.kept = index.num_rows
    feather.write_feather(index, result.path("index.arrow"), compression="uncompressed")
    result.path("kept.jsonl").write_bytes(string_buffers(lines_out)[0])
    result.path("rejected.jsonl").write_bytes(b"\n".join(rejected) + b"\n" if rejected else b"")
    return result
