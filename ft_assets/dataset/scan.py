"""One pass over a byte range of a JSONL file: parse, validate, clean and fingerprint each line.

This is the hot loop of data preparation and runs in worker processes, one chunk each. It
writes three files into a scratch folder: the kept rows (canonical JSON: sorted keys, cleaned
contents), their index (ids, groups, hashes, token estimates, source offsets) as Parquet, and
the rejected rows with their reasons. Line numbers there are relative to the chunk; ``prep``
adds the chunk's first line number when it merges them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from ft_assets.dataset.formats import CHAT_PASSTHROUGH_KEYS, check_chat, check_preference, detect_format, label_of
from ft_assets.dataset.text import estimate_tokens, has_markdown, normalized_key, strip_markdown

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
        ("exact_hash", pa.uint64()),
        ("fixes", pa.uint8()),
        ("group_hash", pa.uint64()),
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


@dataclass
class ChunkResult:
    """Counts of one scanned chunk; the rows themselves are in the scratch files."""

    task: ChunkTask
    lines: int = 0
    kept: int = 0
    reasons: Counter[str] = field(default_factory=Counter)

    def path(self, suffix: str) -> Path:
        """Return the scratch file of this chunk with the given suffix."""
        return Path(self.task.scratch) / f"chunk-{self.task.number:06d}.{suffix}"


def plain_length(messages: list[dict[str, Any]]) -> int:
    """Return the characters of all contents, or -1 when some content needs a whitespace fix."""
    total = 0
    for message in messages:
        content = message.get("content")
        if content is None:
            continue
        if "\r" in content or content[0].isspace() or content[-1].isspace():
            return -1
        total += len(content)
    return total


def clean_messages(messages: list[dict[str, Any]], markdown: bool) -> tuple[list[dict[str, Any]], int]:
    """Return the messages with CRLF made LF, outer whitespace trimmed and (if asked) assistant markdown removed."""
    fixes = 0
    cleaned = []
    for message in messages:
        content = message.get("content")
        if type(content) is str:
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
            if trimmed != content:
                message = {**message, "content": trimmed}
        cleaned.append(message)
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


def scan_chunk(task: ChunkTask) -> ChunkResult:
    """Scan one chunk and write its kept rows, index and rejected rows to the scratch folder."""
    with open(task.path, "rb") as handle:
        handle.seek(task.start)
        lines = handle.read(task.end - task.start).split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    config = task.config
    fmt = config.format
    check = check_chat if fmt == "chat" else check_preference
    markdown = config.strip_markdown
    result = ChunkResult(task=task, lines=len(lines))
    reasons = result.reasons
    kept: list[bytes] = []
    rejected: list[bytes] = []
    index_rows: list[tuple[Any, ...]] = []
    offset = task.start
    for number, line in enumerate(lines, start=1):
        start = offset
        offset += len(line) + 1
        raw = line[:-1] if line.endswith(b"\r") else line
        if raw.startswith(BOM):
            raw = raw[3:]
        try:
            row = orjson.loads(raw)
        except orjson.JSONDecodeError:
            error = _parse_error(raw)
            reasons[error] += 1
            _reject(rejected, number, [error], line)
            continue
        if type(row) is not dict or detect_format(row) != fmt:
            error = "data_type" if type(row) is not dict else "format_mismatch"
            reasons[error] += 1
            _reject(rejected, number, [error], line)
            continue
        errors = check(row)
        example_id, group_id, source_id = _labels(row, errors)
        if not errors:
            fixes = 0
            if fmt == "chat" and not (markdown and has_markdown(raw)):
                messages = row["messages"]
                characters = plain_length(messages)
            else:
                characters = -1
            if characters >= 0:
                payload = {"messages": messages}
                for key in CHAT_PASSTHROUGH_KEYS:
                    if key in row:
                        payload[key] = row[key]
            else:
                payload, messages, fixes = clean_row(row, fmt, markdown)
                characters = _content_length(messages)
            tokens = estimate_tokens(characters, len(messages))
            if tokens > config.max_tokens:
                errors.add("too_many_tokens")
        if errors:
            ordered = sorted(errors)
            reasons.update(ordered)
            _reject(rejected, number, ordered, line)
            continue
        encoded = orjson.dumps(payload, option=_CANONICAL)
        kept.append(encoded)
        norm_hash = xxhash.xxh3_64_intdigest(normalized_key(encoded))
        if example_id is None:
            example_id = f"{norm_hash:016x}"
        index_rows.append(
            (number, start, len(line), example_id, group_id or example_id, source_id, tokens, norm_hash,
             xxhash.xxh3_64_intdigest(encoded), fixes)
        )
    result.kept = len(kept)
    _write_outputs(result, kept, rejected, index_rows)
    return result


def _write_outputs(result: ChunkResult, kept: list[bytes], rejected: list[bytes], index_rows: list[tuple[Any, ...]]) -> None:
    columns = [list(c) for c in zip(*index_rows, strict=True)] or [[] for _ in INDEX_SCHEMA.names[:-1]]
    columns.append([xxhash.xxh3_64_intdigest(g.encode()) for g in columns[4]])
    table = pa.table(dict(zip(INDEX_SCHEMA.names, columns, strict=True)), schema=INDEX_SCHEMA)
    pq.write_table(table, result.path("index.parquet"), compression="zstd")
    result.path("kept.jsonl").write_bytes(b"\n".join(kept) + b"\n" if kept else b"")
    result.path("rejected.jsonl").write_bytes(b"\n".join(rejected) + b"\n" if rejected else b"")
