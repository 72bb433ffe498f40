import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from ft_assets.cli import main
from ft_assets.dataset.prep import CLEANED, CLEANED_INDEX, LOCK, REJECTED, SplitConfig, clean, prep, split
from ft_assets.dataset.validate import CleanConfig
from ft_assets_tests.conftest import ROOT, chat, read_jsonl, write_jsonl


def _accounted(out: Path, files: list[Path]) -> None:
    """Every input line is kept (in the index) or rejected, exactly once."""
    index = pq.read_table(out / CLEANED_INDEX, columns=["file", "line"]).to_pylist()
    kept = {(row["file"], row["line"]) for row in index}
    rejected = {(row["file"], row["line"]) for row in read_jsonl(out / REJECTED)}
    assert not kept & rejected
    expected = set()
    for file in files:
        count = file.read_bytes().count(b"\n") + (not file.read_bytes().endswith(b"\n"))
        expected |= {(str(file), n) for n in range(1, count + 1)}
    assert kept | rejected == expected
    assert len(index) + len(rejected) == len(expected)


def test_shipped_data_is_cleaned_with_every_row_accounted(shipped_raw, tmp_path):
    files = sorted(shipped_raw.glob("*.jsonl"))
    report = clean(files, tmp_path)
    assert report["read"] == report["kept"] + report["rejected"]
    assert report["kept"] >= 300
    assert report["by_reason"] == {
        "empty_content": 1,
        "example_missing_assistant_message": 1,
        "exact_duplicate": 1,
        "invalid_json": 1,
        "normalized_duplicate": 1,
        "system_not_first": 1,
    }
    assert report["fixes"] == {"stripped_markdown": 1, "trimmed_whitespace": 1}
    _accounted(tmp_path, files)
    answers = [row["messages"][-1]["content"] for row in read_jsonl(tmp_path / CLEANED)]
    assert not any("**" in a or "`" in a or a != a.strip() for a in answers)


def test_hostile_lines_never_crash_and_are_all_accounted(tmp_path):
    good = json.dumps(chat("Invoice 1", "Category: Travel")).encode()
    deep = b"[" * 100_000 + b"]" * 100_000
    huge = json.dumps(chat("x " * 2_500_000, "Category: Travel")).encode()
    lines = [
        b"\xef\xbb\xbf" + good,  # BOM on the first line
        good.replace(b"Invoice 1", b"Invoice 2") + b"\r",  # CRLF ending
        b"",
        b"   ",
        b'{"messages": [{"role": "user", "content": "trunc',
        b"\xff\xfe\xfa not utf-8",
        b"42",
        b'"just a string"',
        b"null",
        b'{"messages": {"role": "user"}}',
        b'{"messages": [1, 2, 3]}',
        b'{"messages": [{"role": {"nested": ["garbage", {"x": [1, [2, [3]]]}]}, "content": [[]]}]}',
        deep,
        huge,
        b'{"id": {"a": 1}, "messages": []}',
        json.dumps(chat("Invoice 3", "Category: Travel", id=["not", "a", "label"])).encode(),
        b"\x00\x01\x02",
        good.replace(b"Invoice 1", b"Invoice 4"),
    ]
    path = tmp_path / "hostile.jsonl"
    path.write_bytes(b"\n".join(lines))  # no newline at the end either
    report = clean([path], tmp_path / "out", CleanConfig(format="chat", max_tokens=4096))
    assert report["read"] == len(lines)
    assert report["kept"] == 3
    _accounted(tmp_path / "out", [path])
    reasons = {row["line"]: row["reasons"] for row in read_jsonl(tmp_path / "out" / REJECTED)}
    assert reasons[3] == ["blank_line"] and reasons[4] == ["blank_line"]
    assert reasons[5] == ["invalid_json"]
    assert reasons[6] == ["invalid_utf8"]
    assert reasons[7] == ["data_type"]
    assert reasons[13] == ["invalid_json"]
    assert reasons[14] == ["too_many_tokens"]
    assert "invalid_id" in reasons[16]
    raw = {row["line"]: row["raw"] for row in read_jsonl(tmp_path / "out" / REJECTED)}
    assert len(raw[14]) == len(huge)


def test_duplicates_point_at_their_first_occurrence(tmp_path):
    first = chat("Invoice from ACME", "Category: Travel", id="a")
    rows = [
        first,
        chat("Invoice from Other", "Category: Software", id="b"),
        {**first, "id": "c"},
        chat("invoice   from acme", "**category:** travel", id="d"),
    ]
    report = clean([write_jsonl(tmp_path / "in.jsonl", rows)], tmp_path / "out")
    rejected = read_jsonl(tmp_path / "out" / REJECTED)
    assert [(r["line"], r["reasons"]) for r in rejected] == [(3, ["exact_duplicate"]), (4, ["normalized_duplicate"])]
    assert all(r["duplicate_of"]["line"] == 1 for r in rejected)
    assert report["duplicates"] == 2


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failure_while_accounting_for_rows_leaves_no_split_file(tmp_path, monkeypatch, workers):
    import ft_assets.dataset.prep as prep_module

    def full_disk(*args: object) -> None:
        raise OSError("No space left on device")

    monkeypatch.setattr(prep_module, "_merge", full_disk)
    rows = [chat(f"Invoice {i} from vendor {i * 7}", f"Category: C{i}") for i in range(400)]
    with pytest.raises(OSError, match="No space"):
        prep([write_jsonl(tmp_path / "in.jsonl", rows)], tmp_path / "out", workers=workers, chunk_bytes=4096)
    assert [p.name for p in (tmp_path / "out").iterdir()] == [LOCK]  # only the lock that kept other runs out


def test_token_limit_is_configurable(tmp_path):
    rows = [chat("short", "Category: Travel"), chat("word " * 400, "Category: Travel")]
    path = write_jsonl(tmp_path / "in.jsonl", rows)
    assert clean([path], tmp_path / "a", CleanConfig(max_tokens=100))["by_reason"] == {"too_many_tokens": 1}
    assert clean([path], tmp_path / "b", CleanConfig(max_tokens=10_000))["rejected"] == 0


def test_many_chunks_on_worker_processes_match_one_chunk(shipped_raw, tmp_path):
    files = sorted(shipped_raw.glob("*.jsonl"))
    one = clean(files, tmp_path / "one", workers=1)
    many = clean(files, tmp_path / "many", workers=2, chunk_bytes=4096)
    assert one == many
    for name in (CLEANED, REJECTED):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "many" / name).read_bytes()
    assert pq.read_table(tmp_path / "one" / CLEANED_INDEX).equals(pq.read_table(tmp_path / "many" / CLEANED_INDEX))


def _grouped_rows(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        rows.append(chat(f"Invoice {i}", f"Category: C{i % 5}", id=f"ex-{i}", group=f"g-{i // 4}"))
    return rows


def test_splits_are_group_aware_deterministic_and_follow_ratios(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", _grouped_rows(400))
    clean([path], tmp_path / "clean")
    result = split(tmp_path / "clean", tmp_path / "s1", SplitConfig(seed=3))
    split(tmp_path / "clean", tmp_path / "s2", SplitConfig(seed=3))
    other = split(tmp_path / "clean", tmp_path / "s3", SplitConfig(seed=4))
    groups = {}
    for name in ("train", "validation", "test"):
        assert (tmp_path / "s1" / f"{name}.jsonl").read_bytes() == (tmp_path / "s2" / f"{name}.jsonl").read_bytes()
        members = pq.read_table(tmp_path / "s1" / f"{name}.members.parquet").to_pylist()
        groups[name] = {m["group_id"] for m in members}
        assert len(members) == result[name]["rows"]
    assert not groups["train"] & groups["validation"] and not groups["train"] & groups["test"]
    assert not groups["validation"] & groups["test"]
    # 100 groups of 4 rows, each group placed by hash: within 3 standard deviations of the ratios.
    assert abs(result["train"]["rows"] - 320) <= 48 and abs(result["test"]["rows"] - 40) <= 36
    assert (
        other != result
        or (tmp_path / "s3" / "test.jsonl").read_bytes() != (tmp_path / "s1" / "test.jsonl").read_bytes()
    )


def test_synthetic_variants_follow_their_source_group(tmp_path):
    rows = _grouped_rows(200)
    variants = [
        chat(f"Paraphrased invoice {i}", "Category: C0", group=f"g-{i // 4}", source_id=f"ex-{i}") for i in range(200)
    ]
    path = write_jsonl(tmp_path / "in.jsonl", rows + variants)
    clean([path], tmp_path / "clean")
    split(tmp_path / "clean", tmp_path / "out", SplitConfig())
    where = {}
    for name in ("train", "validation", "test"):
        for member in pq.read_table(tmp_path / "out" / f"{name}.members.parquet").to_pylist():
            where.setdefault(member["group_id"], set()).add(name)
            if member["source_id"]:
                assert member["source_id"].startswith("ex-")
    assert all(len(splits) == 1 for splits in where.values())


def test_preference_rows_are_cleaned_and_split(tmp_path):
    rows = [
        {
            "input": {"messages": [{"role": "user", "content": f"Question {i}"}]},
            "preferred_output": [{"role": "assistant", "content": f"Good answer {i} "}],
            "non_preferred_output": [{"role": "assistant", "content": f"Bad answer {i}"}],
        }
        for i in range(30)
    ]
    rows.append({"messages": [{"role": "user", "content": "a chat row"}, {"role": "assistant", "content": "x"}]})
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    report = prep([path], tmp_path / "out")
    assert report["format"] == "mixed" and report["formats"] == {"chat": 1, "preference": 30}
    assert report["by_reason"] == {}
    assert report["fixes"] == {"trimmed_whitespace": 30}
    assert sum(s["rows"] for s in report["splits"].values()) == 31
    only = prep([path], tmp_path / "only", CleanConfig(format="preference"))
    assert only["format"] == "preference" and only["by_reason"] == {"format_mismatch": 1}


def test_prep_cli_writes_the_promised_files_byte_identically(shipped_raw, tmp_path):
    for out in ("a", "b"):
        command = [
            sys.executable,
            "-m",
            "ft_assets.cli",
            "prep",
            str(shipped_raw),
            "--out",
            str(tmp_path / out),
            "--seed",
            "7",
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "rejected 6" in result.stdout
    for name in ("train.jsonl", "validation.jsonl", "test.jsonl", "rejected.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert {"read", "kept", "rejected", "duplicates", "by_reason", "splits"} <= set(report)
    assert report["read"] == report["kept"] + report["rejected"]
    assert sum(s["rows"] for s in report["splits"].values()) == report["kept"]
    for row in read_jsonl(tmp_path / "a" / "rejected.jsonl"):
        assert {"file", "line", "reasons", "raw"} <= set(row)
    assert [p.name for p in (tmp_path / "a").glob(".*")] == [LOCK], "scratch folders are cleaned up"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["prep", "missing.jsonl"], "missing.jsonl: no such file or folder"),
        (["prep", "{empty}"], "holds no .jsonl or .json file"),
    ],
)
def test_prep_cli_fails_with_one_clear_line(tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    args = [a.format(empty=tmp_path / "empty") for a in args]
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "out")])
    assert result.exit_code != 0
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_prep_cli_rejects_bad_ratios(shipped_raw, tmp_path):
    result = CliRunner().invoke(main, ["prep", str(shipped_raw), "--out", str(tmp_path), "--ratios", "0.5,0.5,0.5"])
    assert result.exit_code == 2
    assert "summing to 1" in result.output


def test_prep_equals_clean_then_split(shipped_raw, tmp_path):
    report = prep([shipped_raw], tmp_path / "prep", split_config=SplitConfig(seed=5), workers=2, chunk_bytes=8192)
    clean([shipped_raw], tmp_path / "clean")
    result = split(tmp_path / "clean", tmp_path / "split", SplitConfig(seed=5))
    for name in ("train", "validation", "test"):
        assert (tmp_path / "prep" / f"{name}.jsonl").read_bytes() == (tmp_path / "split" / f"{name}.jsonl").read_bytes()
        assert report["splits"][name] == result[name]
    assert (tmp_path / "prep" / REJECTED).read_bytes() == (tmp_path / "clean" / REJECTED).read_bytes()


HIDE_LINUX_ONLY = """
import multiprocessing
import os

for name in ("copy_file_range", "pread", "pwrite"):
    if hasattr(os, name):
        delattr(os, name)
multiprocessing.get_all_start_methods = lambda: ["spawn"]
import ft_assets.dataset.memory as memory

memory._mallopt = lambda: None
os.environ["FT_ASSETS_HIDDEN_CALLS"] = "1"
"""

PREP_SCRIPT = """
import os, sys
from pathlib import Path
from ft_assets.dataset.prep import clean, prep

if __name__ == "__main__":
    assert os.environ.get("FT_ASSETS_HIDDEN_CALLS") == sys.argv[3], "sitecustomize ran as expected"
    assert hasattr(os, "copy_file_range") == (sys.argv[3] == "0") or not sys.platform.startswith("linux")
    prep([sys.argv[1]], Path(sys.argv[2]) / "prep", workers=2, chunk_bytes=4096, start_method="fork")
    clean([sys.argv[1]], Path(sys.argv[2]) / "clean", workers=2, chunk_bytes=4096)
"""


def test_prep_is_byte_identical_without_linux_only_calls(shipped_raw, tmp_path):
    """copy_file_range, pread, pwrite, mallopt and fork hidden (here and in every worker): the same bytes out."""
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(HIDE_LINUX_ONLY)
    script = tmp_path / "run.py"
    script.write_text(PREP_SCRIPT)
    for name, hidden in (("plain", "0"), ("hidden", "1")):
        env = {**os.environ, "FT_ASSETS_HIDDEN_CALLS": "0"}
        if hidden == "1":
            env["PYTHONPATH"] = os.pathsep.join([str(hide), str(ROOT)])
        command = [sys.executable, str(script), str(shipped_raw), str(tmp_path / name), hidden]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env, check=False)
        assert result.returncode == 0, result.stderr
    for relative in ("prep/train.jsonl", "prep/validation.jsonl", "prep/test.jsonl", "prep/rejected.jsonl"):
        assert (tmp_path / "plain" / relative).read_bytes() == (tmp_path / "hidden" / relative).read_bytes()
    for relative in ("clean/cleaned.jsonl", "clean/rejected.jsonl", "clean/cleaned.index.parquet"):
        assert (tmp_path / "plain" / relative).read_bytes() == (tmp_path / "hidden" / relative).read_bytes()
