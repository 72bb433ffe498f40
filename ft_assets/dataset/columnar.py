"""Columnar fast path of the scan: whole blocks of plain chat rows parsed and validated by Arrow kernels.

A line takes this path only when its verdict is certain: it is one JSON object on one line, its
messages hold exactly ``role`` and ``content`` (system, user or assistant; non-empty strings
with nothing to trim, no CR, no control character but tab and newline, no markdown in answers
when markdown is stripped), the order rules hold, it is under the token limit, and its
``id``/``group``/``source_id`` are non-empty strings or absent. Every other line goes to the
per-line Python path in ``validate``, which is the reference for every rule: this module only
decides which rows need no further thought, and serializes them exactly as orjson would.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from ft_assets.dataset.read import SPLIT_NAMES
from ft_assets.dataset.text import (
    CHARS_PER_TOKEN,
    CUT_OFF_MIN_WORDS,
    SENTENCE_ENDS,
    TOKENS_PER_MESSAGE,
    TOKENS_PER_REPLY,
)

LABELS = ("id", "group", "source_id", "split")
SCHEMA = pa.schema(
    [("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())])))]
    + [(name, pa.string()) for name in LABELS]
)
ROLE_CODES = {"system": 0, "user": 1, "assistant": 2}
_ROW_IN_ERROR = re.compile(r"in row (\d+)")
_LABEL_CLASH = re.compile(r"Column\(/(?:id|group|source_id|split)\)")
_NON_STRING_LABEL = re.compile(rb'"(?:id|group|source_id|split)"\s*:\s*[^"\s]')
# A JSON escape of a UTF-16 surrogate: a lone one is not text; Arrow would not say so.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
MAX_FAILED_PARSES = 64


@dataclass
class FastRows:
    """Rows taken by the fast path: their line indices in the chunk and their outputs."""

    lines: np.ndarray
    payload: pa.Array
    tokens: np.ndarray
    example_id: pa.Array
    group_id: pa.Array
    source_id: pa.Array
    split: pa.Array
    prompt: pa.Array
    answer: pa.Array

    @classmethod
    def empty(cls) -> FastRows:
        """No rows."""
        none = pa.array([], pa.string())
        return cls(np.zeros(0, np.int64), none, np.zeros(0, np.int64), none, none, none, none, none, none)


@dataclass(frozen=True)
class ChunkLines:
    """The lines of a chunk (without their newlines), located by offset instead of copied out."""

    data: bytes
    starts: np.ndarray
    lengths: np.ndarray

    @classmethod
    def of(cls, data: bytes) -> ChunkLines:
        """Locate the lines of ``data``; a last line without a newline counts too."""
        ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == ord("\n"))
        if data and data[-1:] != b"\n":
            ends = np.append(ends, len(data))
        starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64)
        return cls(data, starts, (ends - starts).astype(np.int64))

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> bytes:
        start = int(self.starts[index])
        return self.data[start : start + int(self.lengths[index])]


def _invalid_text_lines(lines: ChunkLines) -> np.ndarray:
    """Return a mask of lines that hold invalid UTF-8 or a JSON surrogate escape (Arrow accepts both)."""
    bad = np.zeros(len(lines), dtype=bool)
    try:
        lines.data.decode("utf-8")
    except UnicodeDecodeError:
        for index in range(len(lines)):
            try:
                lines[index].decode("utf-8")
            except UnicodeDecodeError:
                bad[index] = True
    escapes = [m.start() for m in _SURROGATE_ESCAPE.finditer(lines.data)]
    if escapes:
        bad[np.searchsorted(lines.starts, escapes, side="right") - 1] = True
    return bad


def candidate_lines(lines: ChunkLines) -> np.ndarray:
    """Return indices of the lines that start with '{' and end with '}' (before an optional CR).

    Such lines cannot continue a JSON value from, or into, a neighbouring line, so a parse of
    many of them yields exactly one row per line or an error. Lines that are not valid text
    (invalid UTF-8, surrogate escapes) are left to the per-line path.
    """
    buffer = np.frombuffer(lines.data, dtype=np.uint8)
    starts, lengths = lines.starts, lines.lengths
    nonempty = lengths > 0
    last = np.where(nonempty, starts + lengths - 1, 0)
    crlf = nonempty & (buffer[last] == ord("\r")) & (lengths > 1)
    last = np.where(crlf, last - 1, last)
    first = buffer[np.where(nonempty, starts, 0)]
    return np.flatnonzero(nonempty & (first == ord("{")) & (buffer[last] == ord("}")) & ~_invalid_text_lines(lines))


def _parse(block: bytes) -> pa.Table:
    return pj.read_json(
        pa.BufferReader(block),
        read_options=pj.ReadOptions(block_size=max(len(block) + 1, 1 << 16), use_threads=False),
        parse_options=pj.ParseOptions(explicit_schema=SCHEMA, unexpected_field_behavior="infer"),
    )


def parse_lines(
    lines: ChunkLines, candidates: np.ndarray, first_block: bytes | None = None
) -> tuple[list[tuple[np.ndarray, pa.Table]], np.ndarray]:
    """Parse the candidate lines in as few Arrow calls as possible.

    Returns (line indices, table) parts and the indices of lines left unparsed.

    On an error naming a row, that row and its neighbours are set aside and both sides are
    parsed again. A type clash on a label column (an integer ``id``, say) first sets aside
    every line whose labels are not strings. After ``MAX_FAILED_PARSES`` errors the rest is
    set aside untried: the per-line path handles whatever is set aside. ``first_block``, when
    given, is the text of all candidates to parse first (any bytes between them blank).
    """
    parts: list[tuple[np.ndarray, pa.Table]] = []
    rejected: list[np.ndarray] = []
    pending = [candidates]
    failures = 0
    labels_filtered = False
    while pending:
        positions = pending.pop()
        if not len(positions):
            continue
        if failures >= MAX_FAILED_PARSES:
            rejected.append(positions)
            continue
        try:
            if first_block is not None:
                block, first_block = first_block, None
            else:
                block = b"\n".join([lines[i] for i in positions])
            table = _parse(block)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
            failures += 1
            message = str(error)
            if not labels_filtered and _LABEL_CLASH.search(message):
                labels_filtered = True
                plain = np.array([_NON_STRING_LABEL.search(lines[i]) is None for i in positions], dtype=bool)
                rejected.append(positions[~plain])
                pending.append(positions[plain])
                continue
            match = _ROW_IN_ERROR.search(message)
            if match is None or len(positions) <= 3:
                if len(positions) <= 64:
                    rejected.append(positions)
                else:
                    middle = len(positions) // 2
                    pending += [positions[:middle], positions[middle:]]
                continue
            row = int(match.group(1))
            low, high = max(0, row - 1), min(len(positions), row + 2)
            rejected.append(positions[low:high])
            pending += [positions[:low], positions[high:]]
            continue
        if table.num_rows != len(positions):
            rejected.append(positions)
            continue
        parts.append((positions, table))
    leftover = np.concatenate(rejected) if rejected else np.zeros(0, dtype=np.int64)
    return parts, leftover


def _segment_first(values: np.ndarray, offsets: np.ndarray, n_rows: int) -> np.ndarray:
    """For each message, the cumulative count of ``values`` in its row up to and including it."""
    cumulative = np.cumsum(values, dtype=np.int64)
    before_row = np.concatenate([[0], cumulative])[offsets[:-1]]
    row_of = np.repeat(np.arange(n_rows), np.diff(offsets))
    return cumulative - before_row[row_of]


def _escape(content: pa.Array, escapes: np.ndarray) -> pa.Array:
    """JSON-escape non-null strings the way orjson does for text without CR or other control characters.

    ``escapes`` counts the characters to escape in each string; the whole buffer is escaped at once.
    """
    if not escapes.any():
        return content
    data, offsets = string_buffers(content)
    text = data.tobytes().replace(b"\\", b"\\\\").replace(b'"', b'\\"').replace(b"\n", b"\\n").replace(b"\t", b"\\t")
    offsets = (offsets + np.concatenate([[0], np.cumsum(escapes)])).astype(np.int32)
    return pa.StringArray.from_buffers(len(content), pa.py_buffer(offsets), pa.py_buffer(text))


def string_buffers(strings: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Return (bytes, offsets from 0) of a string array without copying; nulls have empty extents."""
    _, offsets, data = strings.buffers()
    width = np.int64 if pa.types.is_large_string(strings.type) else np.int32
    offsets = np.frombuffer(offsets, dtype=width)[strings.offset : strings.offset + len(strings) + 1].astype(np.int64)
    if data is None or offsets[-1] == offsets[0]:
        return np.zeros(0, np.uint8), offsets - offsets[0]
    return np.frombuffer(data, dtype=np.uint8)[offsets[0] : offsets[-1]], offsets - offsets[0]


def fixed_width_matrix(values: pa.Array, width: int) -> np.ndarray:
    """Return a fixed-size binary array (``width`` bytes a value) as a (rows x width) uint8 matrix, not copied."""
    flat = np.frombuffer(values.buffers()[1], np.uint8) if len(values) else np.zeros(0, np.uint8)
    return flat[values.offset * width : (values.offset + len(values)) * width].reshape(-1, width)


def fixed_width_array(matrix: np.ndarray) -> pa.FixedSizeBinaryArray:
    """Return a (rows x width) uint8 matrix as a fixed-size binary array (``fixed_width_matrix`` reversed)."""
    rows, width = matrix.shape
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), rows, [None, pa.py_buffer(matrix.tobytes())])


def _byte_table(*groups: tuple[int, bytes | range]) -> np.ndarray:
    table = np.zeros(256, dtype=np.uint8)
    for flag, values in groups:
        for value in values:
            table[value] |= flag
    return table


_CONTROL_BYTE, _SPACE_FIRST, _SPACE_LAST, _ESCAPED = 1, 4, 8, 16
# Lead bytes of the multi-byte characters Python's str.strip() removes (U+0085, U+00A0, U+1680,
# U+2000..U+200A, U+2028, U+2029, U+202F, U+205F, U+3000) and the final bytes they can end on:
# a content starting or ending on one of these goes to the Python path (conservative).
_FLAGS = _byte_table(
    (_CONTROL_BYTE, bytes([*range(0x00, 0x09), *range(0x0B, 0x20)])),
    (_ESCAPED, b'"\\\n\t'),
    (_SPACE_FIRST, b" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\xc2\xe1\xe2\xe3"),
    (_SPACE_LAST, bytes([*b" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f", 0x85, 0xA0, *range(0x80, 0x8B), 0xA8, 0xA9, 0xAF, 0x9F])),
)


_SENTENCE_END_BYTES = np.zeros(256, dtype=bool)
_SENTENCE_END_BYTES[[ord(c) for c in SENTENCE_ENDS if ord(c) < 0x80]] = True


def _line_starts_flagged(
    data: np.ndarray, starts: np.ndarray, ends: np.ndarray, markdown: np.ndarray, answer: np.ndarray
) -> np.ndarray:
    """Flag contents with a line that may open a rule (``-``, ``_``, ``*``) or a follow-up question (``Q``).

    Rules are looked for in ``markdown`` contents, follow-up questions in ``answer`` contents; a
    line starting with a blank is flagged too (the per-line path looks past it).
    """
    newlines = np.flatnonzero(data == ord("\n"))
    owners = np.concatenate([np.arange(len(starts)), np.searchsorted(ends, newlines, side="right")])
    line_starts = np.concatenate([starts, newlines + 1])
    inside = line_starts < ends[owners]
    owners, line_starts = owners[inside], line_starts[inside]
    byte = data[line_starts]
    rule = (byte == ord("-")) | (byte == ord("_")) | (byte == ord("*"))
    hit = (markdown[owners] & rule) | (answer[owners] & ((byte | 0x20) == ord("q")))
    hit |= (markdown[owners] | answer[owners]) & ((byte == ord(" ")) | (byte == ord("\t")))
    flagged = np.zeros(len(starts), dtype=bool)
    flagged[owners[hit]] = True
    return flagged


def _inspect_contents(
    content: pa.Array, markdown: np.ndarray | None, answer: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Flag contents the Python path must see, and count the characters JSON escapes in each.

    The Python path must see contents that are empty, need trimming, hold control characters,
    (where ``markdown`` says so) may hold markdown debris, or (``answer``) may hold a leaked
    follow-up question or stop mid-sentence.
    """
    data, offsets = string_buffers(content)
    starts, ends = offsets[:-1], offsets[1:]
    flagged = ends <= starts
    escapes = np.zeros(len(flagged), dtype=np.int64)
    if not len(data):
        return flagged, escapes
    nonempty = ~flagged
    flagged |= nonempty & (_FLAGS[data[np.where(nonempty, starts, 0)]] & _SPACE_FIRST > 0)
    last = data[np.where(nonempty, ends - 1, 0)]
    flagged |= nonempty & (_FLAGS[last] & _SPACE_LAST > 0)
    # Whole-buffer comparisons (vectorized) first, a table lookup only on the few hits.
    low = np.flatnonzero(data < 0x20)
    low_flags = _FLAGS[data[low]]
    flagged[np.searchsorted(ends, low[low_flags & _CONTROL_BYTE > 0], side="right")] = True
    quoted = np.flatnonzero((data == ord('"')) | (data == ord("\\")))
    owners = np.searchsorted(ends, np.concatenate([low[low_flags & _ESCAPED > 0], quoted]), side="right")
    escapes = np.bincount(owners, minlength=len(flagged))
    # An answer not ending like a sentence, with enough separators to be free text, may be cut off.
    open_ended = answer & nonempty & ~_SENTENCE_END_BYTES[last]
    if open_ended.any():
        separator = (data == ord(" ")) | (data == ord("\t")) | (data == ord("\n"))
        # Contents lie end to end and empty ones hold no byte, so each non-empty content runs
        # from its start to the next non-empty one's (a reduceat, not a cumsum over every byte).
        count = np.zeros(len(flagged), dtype=np.int32)
        count[nonempty] = np.add.reduceat(separator, starts[nonempty], dtype=np.int32)
        flagged |= open_ended & (count >= CUT_OFF_MIN_WORDS - 1)
    if markdown is not None:
        marks = np.flatnonzero((data == ord("*")) | (data == ord("_")) | (data == ord("`")) | (data == ord("#")))
        marks = np.concatenate([marks, np.flatnonzero(data == ord("~"))])
        following = data[np.minimum(marks + 1, len(data) - 1)]
        single = (data[marks] != ord("_")) | (following == ord("_"))
        owners = np.searchsorted(ends, marks[single], side="right")
        flagged[owners[markdown[owners]]] = True
    flagged |= _line_starts_flagged(
        data, starts, ends, markdown if markdown is not None else np.zeros(len(flagged), bool), answer
    )
    return flagged, escapes


def _per_row_text(content: pa.Array, selected: np.ndarray, row_of: np.ndarray, n_rows: int) -> pa.Array:
    """Join the ``selected`` messages of each row with newlines (an empty string where none)."""
    counts = np.bincount(row_of[selected], minlength=n_rows)
    chosen = content.filter(pa.array(selected))
    if (counts == 1).all():  # one message a row (the usual case): nothing to join
        return chosen
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), chosen), "\n")


def _trimmable(strings: pa.Array) -> np.ndarray:
    """Flag strings that are empty or start or end with a byte that may be whitespace (nulls are not flagged)."""
    data, offsets = string_buffers(strings)
    starts, ends = offsets[:-1], offsets[1:]
    flagged = (ends <= starts) & strings.is_valid().to_numpy(zero_copy_only=False)
    nonempty = ends > starts
    if len(data):
        flagged |= nonempty & (_FLAGS[data[np.where(nonempty, starts, 0)]] & _SPACE_FIRST > 0)
        flagged |= nonempty & (_FLAGS[data[np.where(nonempty, ends - 1, 0)]] & _SPACE_LAST > 0)
    return flagged


def accept(
    table: pa.Table, max_tokens: int, strip_markdown: bool, mentioning: Callable[[list[str]], np.ndarray]
) -> tuple[np.ndarray, np.ndarray, pa.Array, pa.Array, pa.Array]:
    """Return (accepted row mask, tokens, canonical payload, prompt, answer of accepted rows) for one table.

    ``mentioning(keys)`` flags the rows whose line holds one of ``keys`` as a JSON key: a key
    outside the fast path's schema sends its rows to the per-line path even when its value is
    null (Arrow cannot tell a null from a missing key).
    """
    n_rows = table.num_rows
    columns = {name: table[name].combine_chunks() for name in table.column_names}
    ok = np.ones(n_rows, dtype=bool)
    extra = [name for name in columns if name not in SCHEMA.names]
    message_type = columns["messages"].type.value_type
    extra += [message_type.field(i).name for i in range(message_type.num_fields)]
    extra = [name for name in extra if name not in ("role", "content")]
    if extra:
        ok &= ~mentioning(extra)
    for name in LABELS:
        ok &= ~_trimmable(columns[name])
    ok &= pc.is_in(columns["split"], pa.array(list(SPLIT_NAMES))).to_numpy(zero_copy_only=False) | columns[
        "split"
    ].is_null().to_numpy(zero_copy_only=False)
    messages = columns["messages"]
    lengths = pc.list_value_length(messages).fill_null(0).to_numpy(zero_copy_only=False)
    ok &= lengths >= 2
    offsets = messages.offsets.to_numpy()
    items = messages.values
    if messages.offset or len(items) != offsets[-1] - offsets[0]:
        raise ValueError("unexpected sliced message array")
    n_messages = len(items)
    bad_message = items.is_null().to_numpy(zero_copy_only=False)
    for field_index in range(items.type.num_fields):
        if items.type.field(field_index).name not in ("role", "content"):
            bad_message |= items.field(field_index).is_valid().to_numpy(zero_copy_only=False)
    role_text = items.field("role")
    content = items.field("content")
    role = np.full(n_messages, -1, dtype=np.int8)
    for name, code in ROLE_CODES.items():
        role[pc.equal(role_text, name).fill_null(False).to_numpy(zero_copy_only=False)] = code
    bad_message |= role < 0
    bad_message |= content.is_null().to_numpy(zero_copy_only=False)
    is_answer = role == ROLE_CODES["assistant"]
    needs_python, escapes = _inspect_contents(content, role >= 0 if strip_markdown else None, is_answer)
    bad_message |= needs_python
    position = np.arange(n_messages) - np.repeat(offsets[:-1], np.diff(offsets))
    bad_message |= (role == ROLE_CODES["system"]) & (position > 0)
    is_user = role == ROLE_CODES["user"]
    previous_user = np.concatenate([[False], is_user[:-1]]) & (position > 0)
    bad_message |= is_user & previous_user
    users_so_far = _segment_first(is_user, offsets, n_rows)
    bad_message |= is_answer & (users_so_far == 0)
    row_of = np.repeat(np.arange(n_rows), np.diff(offsets))
    ok &= np.bincount(row_of[bad_message], minlength=n_rows) == 0
    ok &= np.bincount(row_of[is_answer], minlength=n_rows) > 0
    characters = np.bincount(
        row_of, weights=pc.utf8_length(content).fill_null(0).to_numpy(zero_copy_only=False), minlength=n_rows
    ).astype(np.int64)
    tokens = -(-characters // CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE * lengths + TOKENS_PER_REPLY
    ok &= tokens <= max_tokens
    keep_messages = np.repeat(ok, np.diff(offsets))
    kept_content = content.filter(pa.array(keep_messages))
    kept_row_of = np.repeat(np.arange(int(ok.sum())), lengths[ok])
    kept_role = role[keep_messages]
    later_answer = np.zeros(len(kept_role), dtype=bool)
    answers = np.flatnonzero(kept_role == ROLE_CODES["assistant"])
    later_answer[answers[:-1]] = kept_row_of[answers[:-1]] == kept_row_of[answers[1:]]
    prompt = _per_row_text(kept_content, kept_role == ROLE_CODES["user"], kept_row_of, int(ok.sum()))
    answer = _per_row_text(
        kept_content, (kept_role == ROLE_CODES["assistant"]) & ~later_answer, kept_row_of, int(ok.sum())
    )
    escaped = _escape(kept_content, escapes[keep_messages])
    message_json = pc.binary_join_element_wise(
        '{"content":"', escaped, '","role":"', role_text.filter(pa.array(keep_messages)), '"}', ""
    )
    kept_offsets = np.concatenate([[0], np.cumsum(lengths[ok])]).astype(np.int32)
    joined = pc.binary_join(pa.ListArray.from_arrays(pa.array(kept_offsets), message_json), ",")
    payload = pc.binary_join_element_wise('{"messages":[', joined, "]}", "")
    return ok, tokens, payload, prompt, answer


def _blank_others(lines: ChunkLines, candidates: np.ndarray) -> bytes:
    """Return the chunk with every line that is not a candidate overwritten by spaces."""
    if len(candidates) == len(lines):
        return lines.data
    block = np.frombuffer(bytearray(lines.data), dtype=np.uint8)
    starts, lengths = lines.starts, lines.lengths
    others = np.ones(len(lengths), dtype=bool)
    others[candidates] = False
    for start, length in zip(starts[others].tolist(), lengths[others].tolist(), strict=True):
        block[start : start + length] = ord(" ")
    return block.tobytes()


def fast_rows(lines: ChunkLines, max_tokens: int, strip_markdown: bool) -> FastRows:
    """Parse and validate the candidate lines of a chunk; return the rows accepted (the rest go to Python)."""
    candidates = candidate_lines(lines)
    parts, _ = parse_lines(lines, candidates, _blank_others(lines, candidates))
    columns: dict[str, list[pa.Array]] = {name: [] for name in ("payload", "prompt", "answer", *LABELS)}
    taken, tokens = [], []
    for positions, table in parts:

        def mentioning(keys: list[str], positions: np.ndarray = positions) -> np.ndarray:
            pattern = re.compile(b"|".join(re.escape(json.dumps(key).encode()) for key in keys) + rb"\s*:")
            return np.array([pattern.search(lines[i]) is not None for i in positions.tolist()], dtype=bool)

        ok, row_tokens, payload, prompt, answer = accept(table, max_tokens, strip_markdown, mentioning)
        taken.append(positions[ok])
        tokens.append(row_tokens[ok])
        columns["payload"].append(payload)
        columns["prompt"].append(prompt)
        columns["answer"].append(answer)
        mask = pa.array(ok)
        for name in LABELS:
            columns[name].append(table[name].combine_chunks().filter(mask))
    if not taken:
        return FastRows.empty()
    lines_taken = np.concatenate(taken)
    if len(parts) == 1:  # the lines of a part are in order
        merged = {name: arrays[0] for name, arrays in columns.items()}
        order = None
    else:
        order = np.argsort(lines_taken, kind="stable")
        take = pa.array(order)
        merged = {name: pa.concat_arrays(arrays).take(take) for name, arrays in columns.items()}
        lines_taken = lines_taken[order]
    row_tokens = np.concatenate(tokens)
    return FastRows(
        lines=lines_taken,
        payload=merged["payload"],
        tokens=row_tokens if order is None else row_tokens[order],
        example_id=merged["id"],
        group_id=merged["group"],
        source_id=merged["source_id"],
        split=merged["split"],
        prompt=merged["prompt"],
        answer=merged["answer"],
    )
