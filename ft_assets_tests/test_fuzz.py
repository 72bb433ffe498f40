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
