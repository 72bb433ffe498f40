"""Any bytes in, never a crash: mutated rows through the fast path and the reference path decide alike.

Bounded for CI; for a long run by hand: ``HYPOTHESIS_PROFILE=long .venv/bin/python -m pytest
ft_assets_tests/test_fuzz.py`` (profiles in conftest.py).
"""

import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ft_assets.dataset.prep import CLEANED, REJECTED, clean, revalidate
from ft_assets.dataset.validate import CleanConfig
from ft_assets_tests.conftest import read_jsonl
from ft_assets_tests.test_columnar import _scan_both

SEED_ROWS = [
    {
        "messages": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "What is **BGP**?"},
            {"role": "assistant", "content": "### BGP\nThe routing protocol of the internet.\n---\nQ: And OSPF?"},
        ]
    },
    {"messages": [{"role": "user", "content": 'Grüße 😀 "quoted" \\ back'}, {"role": "assistant", "content": "ok."}]},
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Category: Travel"}], "id": 7},
    {
        "input": [{"role": "user", "content": "Pick one"}],
        "preferred_output": [{"role": "assistant", "content": "A."}],
        "non_preferred_output": [{"role": "assistant", "content": "B."}],
    },
    {
        "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y", "weight": 0}],
        "split": "test",
    },
    {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Two"}, {"type": "text", "text": "parts"}]},
            {"role": "assistant", "content": "Joined."},
        ]
    },
]
SEED_LINES = [json.dumps(row, ensure_ascii=False).encode() for row in SEED_ROWS]
INSERTS = [
    b"\xff",
    b"\xc3",
    b"\xe2\x82",
    b"\x00",
    b"\x07",
    b"\\",
    b'"',
    b"{",
    b"}",
    b"\\ud800",
    b"\\udfff",
    b"\\u0000",
    b"\xef\xbb\xbf",
    b"1e999999",
    b"-99999999999999999999999999",
    b"[" * 300,
    b"\r",
    b"\xed\xa0\x80",
]


@st.composite
def mutated_line(draw: st.DrawFn) -> bytes:
    line = bytearray(draw(st.sampled_from(SEED_LINES)))
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["insert", "flip", "delete", "truncate", "repeat"]))
        at = draw(st.integers(0, max(0, len(line) - 1)))
        if kind == "insert":
            line[at:at] = draw(st.sampled_from(INSERTS))
        elif kind == "flip" and line:
            line[at] = draw(st.integers(0, 255))
        elif kind == "delete":
            del line[at : at + draw(st.integers(1, 8))]
        elif kind == "truncate":
            del line[at:]
        elif kind == "repeat":
            line[at:at] = line[at : at + 40] * draw(st.integers(1, 50))
    return bytes(line).replace(b"\n", b" ")


lines_strategy = st.lists(st.one_of(mutated_line(), st.sampled_from(SEED_LINES)), min_size=1, max_size=40)


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(lines=lines_strategy, strip=st.booleans(), fmt=st.sampled_from(["auto", "chat"]))
def test_fast_and_reference_paths_decide_alike(lines: list[bytes], strip: bool, fmt: str):
    fast, reference = _scan_both(lines, CleanConfig(format=fmt, strip_markdown=strip))
    assert fast == reference
    _, index, _, rejected = reference
    assert len(index) + len(rejected) == len(lines)


@settings(
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture], deadline=None, max_examples=25
)
@given(lines=lines_strategy)
def test_any_bytes_end_kept_or_rejected_and_kept_rows_are_valid(lines: list[bytes], tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    source = folder / "in.jsonl"
    source.write_bytes(b"\n".join(lines) + b"\n")
    report = clean([source], folder / "out", workers=1)
    assert report["read"] == len(lines) == report["kept"] + report["rejected"]
    rejected = read_jsonl(folder / "out" / REJECTED)
    assert len(rejected) == report["rejected"]
    assert all(r["reasons"] for r in rejected)
    if report["kept"]:
        again = revalidate(folder / "out" / CLEANED)
        assert again["rejected"] == 0 and not again["fixes"], again


def test_big_mutated_file_never_crashes(tmp_path: Path):
    """A 20,000-line file of mutated rows over several chunks and two workers: every line accounted for."""
    import random

    rng = random.Random(5)
    lines = []
    for n in range(20_000):
        line = bytearray(rng.choice(SEED_LINES).replace(b'"content": "', b'"content": "%d ' % n, 1))
        if n % 3 == 0:
            at = rng.randrange(len(line))
            line[at:at] = rng.choice(INSERTS)
        if n % 7 == 0:
            line[rng.randrange(len(line))] = rng.randrange(256)
        lines.append(bytes(line).replace(b"\n", b" "))
    source = tmp_path / "big.jsonl"
    source.write_bytes(b"\n".join(lines) + b"\n")
    report = clean([source], tmp_path / "out", workers=2, chunk_bytes=64 * 1024)
    assert report["read"] == 20_000 == report["kept"] + report["rejected"]
    assert report["kept"] > 5000
    assert report["by_reason"]["invalid_utf8"] > 100


# Grouping: the vectorized signatures, near-duplicate search and union-find against plain Python
# versions of the same definitions (group.py's docstring), on prompts that are paraphrase-like
# near duplicates of each other, around the similarity threshold.

_MASK64 = (1 << 64) - 1
_PUNCTUATION = "".join(map(chr, [*range(0x21, 0x30), *range(0x3A, 0x41), *range(0x5B, 0x61), *range(0x7B, 0x7F)]))
VOCABULARY = [
    *("what", "is", "the", "a", "BGP", "route", "Routing", "protocol", "explain", "define", "means"),
    *("Grüße", "ÉTÉ", "straße", "Ωmega", "naïve", "😀", "x-ray", "it's", "2024", "v1.2", "e=mc2"),
]
SEPARATORS = [" ", " ", " ", "  ", "\t", "\n", ", ", "? ", ". ", "\u00a0", "\u2003", " (", ") ", "\x1c", "\x1f", "\x0b"]


def _splitmix(value: int) -> int:
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def reference_signature(prompt: str | None) -> bytes:
    """MinHash of the prompt's set of lower-cased words, as group.word_signatures defines it, one row at a time."""
    import xxhash

    from ft_assets.dataset.group import EMPTY_BIN, SIGNATURE_BINS

    text = (prompt or "").lower()
    for character in _PUNCTUATION + "\t\n\r":
        text = text.replace(character, " ")
    words = {word.encode() for word in text.split()}
    if not words:
        return bytes([EMPTY_BIN] * SIGNATURE_BINS)
    hashes = [xxhash.xxh3_64_intdigest(word) for word in words]
    return bytes(
        min(_splitmix(h ^ (((k + 1) * 0x9E3779B97F4A7C15) & _MASK64)) >> 48 for h in hashes) & 0xFF
        for k in range(SIGNATURE_BINS)
    )


def reference_near_duplicate_pairs(signatures: list[bytes], threshold: float) -> list[tuple[int, int]]:
    """For each band: rows with a band key in (key, row) order; a row and each of the next two that
    share its key form a pair when enough of their bins are equal (group.near_duplicate_pairs)."""
    from ft_assets.dataset.group import BANDS, NEAR_DUPLICATE_REACH, SIGNATURE_BINS

    if threshold <= 0:
        return []
    pairs = []
    for band in range(BANDS):
        keyed = []
        for row, signature in enumerate(signatures):
            key = int.from_bytes(signature[4 * band : 4 * band + 4], "little")
            if key not in (0, 0xFFFFFFFF):
                keyed.append((key, row))
        keyed.sort()
        for step in range(1, NEAR_DUPLICATE_REACH + 1):
            for (key, row), (other_key, other) in zip(keyed, keyed[step:], strict=False):
                equal = sum(a == b for a, b in zip(signatures[row], signatures[other], strict=True))
                if key == other_key and equal >= threshold * SIGNATURE_BINS - 1e-9:
                    pairs.append((row, other))
    return pairs


def reference_components(n: int, pairs: list[tuple[int, int]]) -> list[int]:
    """Connected components numbered in order of their smallest row, by a plain union-find."""
    parent = list(range(n))

    def root(node: int) -> int:
        while parent[node] != node:
            node = parent[node]
        return node

    for a, b in pairs:
        low, high = sorted((root(a), root(b)))
        parent[high] = low
    roots = [root(node) for node in range(n)]
    numbers = {r: i for i, r in enumerate(sorted(set(roots)))}
    return [numbers[r] for r in roots]


@st.composite
def paraphrases(draw: st.DrawFn) -> list[str | None]:
    """Prompts in families: a base question and variants with a few words dropped, swapped or added."""
    prompts: list[str | None] = []
    for _ in range(draw(st.integers(1, 8))):
        base = draw(st.lists(st.sampled_from(VOCABULARY), min_size=0, max_size=14))
        for _ in range(draw(st.integers(1, 6))):
            words = list(base)
            for _ in range(draw(st.integers(0, 3))):
                edit = draw(st.sampled_from(["drop", "add", "swap", "case"]))
                at = draw(st.integers(0, max(len(words) - 1, 0)))
                if edit == "add" or not words:
                    words.insert(at, draw(st.sampled_from(VOCABULARY)))
                elif edit == "drop":
                    del words[at]
                elif edit == "swap":
                    words[at] = draw(st.sampled_from(VOCABULARY))
                else:
                    words[at] = words[at].upper()
            separators = draw(st.lists(st.sampled_from(SEPARATORS), min_size=len(words), max_size=len(words)))
            text = "".join(w + s for w, s in zip(words, separators, strict=True))
            prompts.append(draw(st.sampled_from([text, text.strip(), None])) if not words else text)
    return draw(st.permutations(prompts))


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    prompts=paraphrases(),
    threshold=st.sampled_from([0.0, 0.5, 0.75, 0.8, 0.85, 0.9, 1.0]) | st.floats(0.01, 1.0),
    long_words=st.sampled_from([2, 5, 256]),
    pair_slice=st.sampled_from([1, 3, 1 << 20]),
    ascii_only=st.booleans(),
    parallel_bands_memory=st.sampled_from([0, 256 << 20]),
)
def test_grouping_matches_a_plain_reference(
    prompts, threshold, long_words, pair_slice, ascii_only, parallel_bands_memory
):
    import numpy as np
    import pyarrow as pa

    from ft_assets.dataset import group

    if ascii_only:
        prompts = [p.encode("ascii", "ignore").decode() if p is not None else None for p in prompts]
    saved = group.LONG_PROMPT_WORDS, group.PAIR_SLICE, group.PARALLEL_BANDS_MEMORY
    # exercise both reductions, slicing, and bands searched one at a time or at once
    group.LONG_PROMPT_WORDS, group.PAIR_SLICE, group.PARALLEL_BANDS_MEMORY = (
        long_words,
        pair_slice,
        parallel_bands_memory,
    )
    try:
        signature = group.word_signatures(pa.array(prompts, pa.string()))
        first, second = group.near_duplicate_pairs(signature, threshold)
    finally:
        group.LONG_PROMPT_WORDS, group.PAIR_SLICE, group.PARALLEL_BANDS_MEMORY = saved
    expected = [reference_signature(p) for p in prompts]
    assert [bytes(row) for row in signature] == expected
    pairs = reference_near_duplicate_pairs(expected, threshold)
    assert list(zip(first.tolist(), second.tolist(), strict=True)) == pairs
    count, labels = group.connected_groups(len(prompts), first, second)
    assert labels.tolist() == reference_components(len(prompts), pairs)
    assert count == len(set(labels.tolist()))
    keys = np.array([int.from_bytes(s[:8], "little") for s in expected], dtype=np.uint64) % np.uint64(7)
    assert group.stable_order(keys).tolist() == sorted(range(len(keys)), key=lambda i: (int(keys[i]), i))


@st.composite
def write_plans(draw: st.DrawFn) -> tuple[int, list[list[tuple[bytes, bool, int]]], list[int]]:
    """Outputs, chunks of (row, kept, output) with any run pattern, and the order the chunks are written in."""
    outputs = draw(st.integers(1, 3))
    line = st.binary(max_size=40).map(lambda b: b.replace(b"\n", b" "))
    row = st.tuples(line, st.booleans(), st.integers(0, outputs - 1))
    chunks = draw(st.lists(st.lists(row, max_size=25), min_size=1, max_size=6))
    return outputs, chunks, draw(st.permutations(range(len(chunks))))


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(plan=write_plans())
def test_write_stage_matches_a_plain_reference(plan):
    """Any chunk boundaries, kept-row runs and write order: each output holds its kept rows in input order."""
    import tempfile

    import numpy as np

    from ft_assets.dataset.write import plan_writes, write_chunk

    outputs, chunks, order = plan
    with tempfile.TemporaryDirectory() as tmp:
        parts = []
        for n, chunk in enumerate(chunks):
            parts.append(Path(tmp) / f"part-{n}.jsonl")
            parts[-1].write_bytes(b"".join(line + b"\n" for line, _, _ in chunk))
        rows = [row for chunk in chunks for row in chunk]
        keep = np.array([kept for _, kept, _ in rows], dtype=bool)
        targets = np.array([output for _, _, output in rows], dtype=np.uint8)
        sizes = np.array([len(line) + 1 for line, _, _ in rows], dtype=np.int64)
        paths = [Path(tmp) / f"out-{o}.jsonl" for o in range(outputs)]
        tasks = plan_writes(parts, [len(chunk) for chunk in chunks], keep, targets, sizes, paths)
        for n in order:
            write_chunk(tasks[n])
        for o, path in enumerate(paths):
            expected = b"".join(line + b"\n" for line, kept, output in rows if kept and output == o)
            assert path.read_bytes() == expected
