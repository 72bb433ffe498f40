"""The columnar fast path must agree with the per-line Python path on every row it accepts."""

import json
import random
from collections import Counter

from ft_assets.dataset.columnar import ChunkLines, candidate_lines, fast_rows
from ft_assets.dataset.read import NO_SPLIT
from ft_assets.dataset.validate import CleanConfig, scan_chunk_lines

PIECES = [
    "plain text",
    "Ünïcödé",
    "emoji 😀",
    'quote "x"',
    "back\\slash",
    "new\nline",
    "tab\there",
    "\u2028sep",
    "**bold**",
    "`code`",
    "# heading",
    "__under__",
    " lead",
    "trail ",
    "\u00a0nbsp",
    "nbsp\u00a0",
    "cr\r\nlf",
    "ctrl\x07char",
    "",
    "   ",
    "slash /",
    "\u3000ideo",
    "x" * 50,
    "#tag",
    "*single*",
    "a_b",
    "é",
    "\x1f",
]


CLEAN = ["plain text", "Ünïcödé", "emoji 😀", 'quote "x"', "back\\slash", "new\nline", "tab\there", "slash /"]


def _rows(count: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)

    def text() -> str:
        return "".join(rng.choice(CLEAN if rng.random() < 0.8 else PIECES) for _ in range(rng.randint(1, 3)))

    lines = []
    for i in range(count):
        messages = []
        if rng.random() < 0.7:
            messages.append({"role": "system", "content": rng.choice(PIECES[:8]) + " system"})
        for _ in range(rng.randint(1, 2)):
            messages.append({"role": "user", "content": text()})
            messages.append({"role": "assistant", "content": text()})
        if rng.random() < 0.1:
            rng.shuffle(messages)
        row = {"messages": messages}
        if rng.random() < 0.5:
            row["id"] = rng.choice([f"ex-{i}", "", 7, f"é-{i}"])
        if rng.random() < 0.2:
            row["group"] = f"g{i % 7}"
        if rng.random() < 0.05:
            row["messages"][0]["weight"] = 1
        if rng.random() < 0.05:
            row["metadata"] = {"k": i}
        encoded = json.dumps(row, ensure_ascii=rng.random() < 0.3, indent=None if rng.random() < 0.8 else 0)
        lines.append(encoded.replace("\n", " ").encode())
    return lines


def _scan_both(lines: list[bytes], config: CleanConfig, split_hint: int = NO_SPLIT) -> list[tuple]:
    """Scan the same lines on the fast path and on the reference path only; return both outcomes."""
    chunk = ChunkLines.of(b"\n".join(lines) + b"\n")
    outcomes = []
    for fast in (True, False):
        reasons: Counter[str] = Counter()
        rejected: list[bytes] = []
        out, index = scan_chunk_lines(chunk, config, reasons, rejected, split_hint, fast=fast)
        outcomes.append((out.to_pylist(), index.drop_columns(["offset"]).to_pylist(), dict(reasons), rejected))
    return outcomes


def test_fast_path_matches_the_reference_on_every_row():
    lines = _rows(3000, seed=11)
    for strip in (True, False):
        config = CleanConfig(format="chat", max_tokens=40, strip_markdown=strip)
        chunk = ChunkLines.of(b"\n".join(lines) + b"\n")
        assert len(fast_rows(chunk, config.max_tokens, strip).lines) > 300, "the corpus exercises the fast path"
        fast, reference = _scan_both(lines, config)
        assert fast == reference


def test_fast_path_payload_is_what_orjson_writes():
    lines = _rows(500, seed=3)
    fast = fast_rows(ChunkLines.of(b"\n".join(lines) + b"\n"), 40, True)
    for index, payload in zip(fast.lines.tolist(), fast.payload.to_pylist(), strict=True):
        row = json.loads(lines[index])
        expected = {"messages": row["messages"]}
        assert payload == json.dumps(expected, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def test_candidate_lines_only_takes_one_object_per_line():
    lines = [b'{"a": 1}', b"", b'  {"a": 1}', b'{"a": 1}\r', b'{"a":', b"1}", b"\r", b"}", b"{"]
    assert candidate_lines(ChunkLines.of(b"\n".join(lines))).tolist() == [0, 3]


def test_fast_path_defers_what_it_cannot_tell():
    """Null-valued unknown keys, blank labels, odd rules: the fast path must decide as the reference does."""
    rows = [
        '{"messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b"}],"input":null}',
        '{"messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b","foo":null}]}',
        '{"messages":[{"role":"user","content":"a","name":null},{"role":"assistant","content":"b"}]}',
        '{"messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b"}],"tools":null}',
        '{"messages":[{"role":"user","content":"a\\n_ _ _\\nc"},{"role":"assistant","content":"b"}]}',
        '{"messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b"}],"source_id":" "}',
        '{"messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b"}],"extra":null}',
        '{"messages":[{"role":"user","content":"a"},{"role":"assistant","content":"---"}]}',
        '{"messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b"}],"split":["train"]}',
        '{"messages":[{"role":"user","content":"c"},{"role":"assistant","content":"d"}],"split":"TEST"}',
    ]
    fast, reference = _scan_both([r.encode() for r in rows], CleanConfig())
    assert fast == reference
    assert reference[2] == {
        "empty_content": 1,
        "invalid_split": 1,
        "message_unrecognized_key": 1,
        "missing_input_messages": 1,
        "missing_non_preferred_output": 1,
        "missing_preferred_output": 1,
    }
