"""A new user's data, not ours: the fixtures in ft_assets_tests/fixtures (see its README) through prep."""

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from ft_assets.cli import main
from ft_assets.dataset.prep import LOCK, REJECTED, GroupConfig, SplitConfig, SplitError, clean, overlaps, prep, split
from ft_assets.dataset.validate import CleanConfig
from ft_assets_tests.conftest import chat, read_jsonl, write_jsonl

FIXTURES = Path(__file__).parent / "fixtures"
SPLITS = ("train", "validation", "test")


def _splits(out: Path) -> dict[str, list[dict]]:
    return {name: read_jsonl(out / f"{name}.jsonl") for name in SPLITS}


def _answers(rows: list[dict]) -> set[str]:
    return {row["messages"][-1]["content"] for row in rows}


def test_paraphrased_questions_never_straddle_splits(tmp_path):
    report = prep([FIXTURES / "glossary_qa.jsonl"], tmp_path, workers=1)
    rows = _splits(tmp_path)
    train = _answers(rows["train"])
    assert rows["validation"] and rows["test"]
    assert not _answers(rows["validation"]) & train
    assert not _answers(rows["test"]) & train
    assert report["grouping"]["groups"] == 30  # one group per term: the four paraphrases share an answer
    assert report["grouping"]["joined_by"]["same_answer"]["rows"] == 120
    # Grouping by answer turned off: the same data leaks, so grouping is what prevents it.
    prep([FIXTURES / "glossary_qa.jsonl"], tmp_path / "never", None, None, GroupConfig("never", 0), workers=1)
    leaked = _splits(tmp_path / "never")
    assert _answers(leaked["test"]) & _answers(leaked["train"]) or _answers(leaked["validation"]) & _answers(
        leaked["train"]
    )


def test_overlap_check_finds_shared_answers_and_near_duplicate_prompts(tmp_path):
    clean([FIXTURES / "glossary_qa.jsonl"], tmp_path / "clean")
    split(tmp_path / "clean", tmp_path / "grouped", SplitConfig(), GroupConfig())
    folders = {}
    for name in SPLITS:
        folder = tmp_path / "grouped" / name
        folder.mkdir()
        (tmp_path / "grouped" / f"{name}.members.parquet").rename(folder / "members.parquet")
        folders[name] = folder
    assert overlaps(folders) == {}
    # The same members, with one test row's answer key and prompt signature copied from a train row.
    train = pq.read_table(folders["train"] / "members.parquet")
    table = pq.read_table(folders["test"] / "members.parquet")
    test = table.to_pylist()
    test[0]["answer_key"] = train["answer_key"][0].as_py()
    test[1]["signature"] = train["signature"][1].as_py()
    test[2]["answer_signature"] = train["answer_signature"][2].as_py()
    pq.write_table(pa.Table.from_pylist(test, schema=table.schema), folders["test"] / "members.parquet")
    found = overlaps(folders)
    assert found[("train/test", "answer_key")] == 1
    assert found[("train/test", "near_duplicate_prompt")] >= 1
    assert found[("train/test", "near_duplicate_answer")] >= 1


def test_free_text_answers_with_a_phrase_added_never_straddle_splits(tmp_path):
    import random

    vocabulary = [
        *("storage", "backup", "history", "email", "support", "member", "team", "archive", "folder"),
        *("sync", "device", "laptop", "phone", "tablet", "share", "link", "password", "audit"),
        *("region", "encryption", "key", "invoice", "refund", "trial", "upgrade", "quota", "limit"),
        *("upload", "download", "restore", "version", "retention", "policy", "admin", "console", "report"),
        *("alert", "schedule", "export", "import", "migrate", "cancel", "renew"),
    ]
    answers = [f"Plan {i}: " + " ".join(random.Random(i).sample(vocabulary, 14)) + "." for i in range(30)]
    questions = ["What does plan {i} include?", "Tell me about plan {i}.", "Which features come with plan {i}?"]
    rows = [
        chat(question.format(i=i), ("Sure! " if k == 1 else "") + answer)
        for i, answer in enumerate(answers)
        for k, question in enumerate(questions)
    ]
    report = prep([write_jsonl(tmp_path / "plans.jsonl", rows)], tmp_path / "out", workers=1)
    assert report["grouping"]["joined_by"]["near_duplicate_answer"]["rows"] == 90  # each plan's three answers

    def plan_of(row: dict) -> str:
        return row["messages"][-1]["content"].removeprefix("Sure! ").split()[1]

    plans = {name: {plan_of(row) for row in found} for name, found in _splits(tmp_path / "out").items()}
    assert not plans["train"] & (plans["validation"] | plans["test"])
    # Without it, the "Sure! " rows are apart from their plan's other answers and land in other splits.
    prep([write_jsonl(tmp_path / "plans.jsonl", rows)], tmp_path / "never", None, None, GroupConfig("never", 0.8))
    plans = {name: {plan_of(row) for row in found} for name, found in _splits(tmp_path / "never").items()}
    assert plans["train"] & (plans["validation"] | plans["test"])


def test_label_answers_repeat_by_design_and_every_category_is_in_every_split(shipped_raw, tmp_path):
    report = prep([shipped_raw], tmp_path, workers=1)
    assert report["grouping"]["free_text_answers"] == 0
    for name, rows in _splits(tmp_path).items():
        categories = {row["messages"][-1]["content"].splitlines()[0] for row in rows}
        assert len(categories) == 5, (name, categories)


def test_ten_rows_split_eight_one_one_and_too_few_fail_clearly(tmp_path):
    report = prep([FIXTURES / "ten_rows.jsonl"], tmp_path / "ten", workers=1)
    assert [report["splits"][name]["rows"] for name in SPLITS] == [8, 1, 1]
    rows = read_jsonl(FIXTURES / "ten_rows.jsonl")[:6]
    with pytest.raises(SplitError, match=r"6 examples .* at least 10 \(4 more\)"):
        prep([write_jsonl(tmp_path / "six.jsonl", rows)], tmp_path / "six", workers=1)
    result = CliRunner().invoke(main, ["prep", str(tmp_path / "six.jsonl"), "--out", str(tmp_path / "cli")])
    assert result.exit_code == 2 and "at least 10" in result.output
    small = prep([tmp_path / "six.jsonl"], tmp_path / "small", None, SplitConfig(min_examples=3), workers=1)
    assert all(small["splits"][name]["rows"] >= 1 for name in SPLITS)


@pytest.mark.parametrize("rows", [13, 20, 37, 101, 250])
def test_split_sizes_follow_the_ratios_by_largest_remainder(tmp_path, rows):
    data = [chat(f"Question number {i} about topic {i * 7}", f"Label {i % 3}") for i in range(rows)]
    report = prep([write_jsonl(tmp_path / "in.jsonl", data)], tmp_path / "out", workers=1)
    expected = {13: [11, 1, 1], 20: [16, 2, 2], 37: [29, 4, 4], 101: [81, 10, 10], 250: [200, 25, 25]}[rows]
    assert [report["splits"][name]["rows"] for name in SPLITS] == expected


def test_the_users_own_splits_are_kept(tmp_path):
    report = prep([FIXTURES / "with_splits"], tmp_path, workers=1)
    assert [report["splits"][name]["rows"] for name in SPLITS] == [20, 4, 4]
    given = {name: read_jsonl(FIXTURES / "with_splits" / f"{name}.jsonl") for name in SPLITS}
    for name, rows in _splits(tmp_path).items():
        assert [r["messages"] for r in rows] == [g["messages"] for g in given[name]]
    rows = [chat(f"Item {i}", f"Answer {i}", split="test" if i < 5 else None) for i in range(40)]
    rows = [{k: v for k, v in row.items() if v is not None} for row in rows]
    pinned = prep([write_jsonl(tmp_path / "pinned.jsonl", rows)], tmp_path / "pinned", workers=1)
    test_users = {r["messages"][1]["content"] for r in read_jsonl(tmp_path / "pinned" / "test.jsonl")}
    assert {f"Item {i}" for i in range(5)} <= test_users
    assert pinned["splits"]["test"]["rows"] == 5  # the user's five fill the test share (0.1 x 40 = 4 rounds up to 5)


def test_no_markdown_debris_survives_in_any_turn_and_fixes_are_counted(tmp_path):
    report = clean([FIXTURES / "glossary_qa.jsonl"], tmp_path)
    assert report["fixes"]["stripped_markdown"] == 34
    assert report["fixes"]["cut_leaked_followup"] == 10 and report["quality"]["leaked_followup"] == 10
    for row in read_jsonl(tmp_path / "cleaned.jsonl"):
        for message in row["messages"]:
            text = message["content"]
            assert "**" not in text and "```" not in text and "\nQ:" not in text, text
            assert not any(line.startswith("#") or line.strip() == "---" for line in text.splitlines()), text


def test_suspicious_answers_can_be_kept_flagged_or_rejected(tmp_path):
    long = "A sentence of filler words that goes on. " * 40
    rows = [
        chat("What is DNS?", "The phone book of the internet: it maps names to addresses.\n---\nQ: And DHCP?"),
        chat("What is TCP?", "A reliable, ordered byte stream protocol that retransmits lost segments and"),
        chat("What is UDP?", long.strip()),
        *[chat(f"What is term {i}?", f"Term {i} is a short thing.") for i in range(12)],
    ]
    path = write_jsonl(tmp_path / "in.jsonl", rows)
    kept = clean([path], tmp_path / "keep", CleanConfig(suspicious="keep"))
    assert kept["quality"] == {"answer_too_long": 1, "cut_off_answer": 1, "leaked_followup": 1}
    assert {tuple(r["flags"]) for r in kept["quality_rows"]} == {
        ("leaked_followup",),
        ("cut_off_answer",),
        ("answer_too_long",),
    }
    assert "Q: And DHCP?" in (tmp_path / "keep" / "cleaned.jsonl").read_text()
    fixed = clean([path], tmp_path / "fix", CleanConfig(suspicious="fix"))
    assert fixed["fixes"]["cut_leaked_followup"] == 1 and "DHCP" not in (tmp_path / "fix" / "cleaned.jsonl").read_text()
    rejected = clean([path], tmp_path / "reject", CleanConfig(suspicious="reject"))
    assert rejected["by_reason"] == {"cut_off_answer": 1, "leaked_followup": 1}


def test_json_arrays_are_read_with_element_positions(tmp_path):
    report = clean([FIXTURES / "array_rows.json"], tmp_path)
    assert (report["read"], report["kept"], report["rejected"]) == (15, 13, 2)
    assert report["files"][0]["kind"] == "json_array"
    rejected = read_jsonl(tmp_path / REJECTED)
    assert [(r["element"], r["reasons"]) for r in rejected] == [
        (4, ["example_missing_assistant_message"]),
        (9, ["data_type"]),
    ]
    rows = [chat("Invoice from Acme", "Category: Travel"), chat("Invoice from Bolt", "Category: Rail")]
    (tmp_path / "pair.json").write_text(json.dumps([rows[0], rows[1], rows[0]]), encoding="utf-8")
    clean([tmp_path / "pair.json"], tmp_path / "pair")
    (duplicate,) = read_jsonl(tmp_path / "pair" / REJECTED)
    assert duplicate["element"] == 2 and duplicate["duplicate_of"]["element"] == 0


def test_other_files_are_refused_with_one_line_that_says_what_they_are(tmp_path):
    for name, text, what in [
        ("terms.csv", "term,definition\nA,b\n", "a CSV file"),
        ("number.json", "42", "a JSON int, not an array"),
        ("broken.json", "[{", "not valid JSON"),
    ]:
        (tmp_path / name).write_text(text)
        result = CliRunner().invoke(main, ["prep", str(tmp_path / name), "--out", str(tmp_path / "out")])
        assert result.exit_code == 2 and what in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1


def test_invalid_utf8_rows_are_rejected_with_their_lines(tmp_path):
    report = clean([FIXTURES / "not_utf8.jsonl"], tmp_path)
    assert (report["kept"], report["rejected"]) == (17, 3)
    assert [(r["line"], r["reasons"]) for r in read_jsonl(tmp_path / REJECTED)] == [
        (3, ["invalid_utf8"]),
        (7, ["invalid_utf8"]),
        (15, ["invalid_utf8"]),
    ]


def test_a_mixed_folder_is_read_row_by_row(tmp_path):
    report = prep([FIXTURES / "mixed"], tmp_path, workers=1)
    assert report["format"] == "mixed" and report["formats"] == {"chat": 25, "preference": 5}
    assert report["rejected"] == 0


def test_bare_list_preference_input_is_normalized(tmp_path):
    report = clean([FIXTURES / "preference.jsonl"], tmp_path)
    assert report["kept"] == 12 and report["fixes"]["input_list_to_messages"] == 3
    assert all(isinstance(row["input"], dict) for row in read_jsonl(tmp_path / "cleaned.jsonl"))


def test_text_parts_are_joined_and_other_parts_rejected(tmp_path):
    def parts(*texts: str) -> list[dict]:
        return [{"type": "text", "text": t} for t in texts]

    image = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    rows = [
        {
            "messages": [
                {"role": "user", "content": parts("What is a ledger?", "Be brief.")},
                {"role": "assistant", "content": "Accounts."},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": [*parts("Describe it."), image]},
                {"role": "assistant", "content": "A cat."},
            ]
        },
        {"messages": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": parts("Red")}]},
        {
            "input": [{"role": "user", "content": parts("Pick one.")}],
            "preferred_output": [{"role": "assistant", "content": "A"}],
            "non_preferred_output": [{"role": "assistant", "content": parts("B")}],
        },
    ]
    report = clean([write_jsonl(tmp_path / "in.jsonl", rows)], tmp_path / "out")
    assert (report["kept"], report["rejected"]) == (3, 1)
    assert report["fixes"] == {"joined_text_parts": 3, "input_list_to_messages": 1}
    assert [r["reasons"] for r in read_jsonl(tmp_path / "out" / REJECTED)] == [["non_text_content"]]
    kept = read_jsonl(tmp_path / "out" / "cleaned.jsonl")
    contents = [m["content"] for row in kept for m in row.get("messages", row.get("input", {}).get("messages", []))]
    assert "What is a ledger?\nBe brief." in contents and "Red" in contents
    assert all(isinstance(c, str) for c in contents)


def test_a_train_ratio_of_zero_is_refused(tmp_path):
    with pytest.raises(ValueError, match="train ratio must be above 0"):
        SplitConfig(ratios=(0.0, 0.5, 0.5))
    result = CliRunner().invoke(
        main, ["prep", str(FIXTURES / "glossary_qa.jsonl"), "--out", str(tmp_path), "--ratios", "0,0.5,0.5"]
    )
    assert result.exit_code == 2 and "train ratio must be above 0" in result.output
    assert not (tmp_path / "train.jsonl").exists()


def test_split_rows_carry_their_example_id_and_dropped_keys_are_fixes(tmp_path):
    rows = [chat(f"Q{i}", f"A{i}", id=f"row-{i}", note="internal") for i in range(12)]
    synthetic = [
        chat(f"Q{i} again", f"A{i}", id=f"syn-{i}", source_id=f"row-{i}", generator={"mode": "x"}) for i in range(3)
    ]
    report = prep([write_jsonl(tmp_path / "in.jsonl", rows + synthetic)], tmp_path / "out", workers=1)
    assert report["fixes"] == {"dropped_top_level_keys": 12}  # a synthetic row's generator is no flaw of the data
    ids = [row["id"] for rows in _splits(tmp_path / "out").values() for row in rows]
    assert sorted(ids) == sorted([*(f"row-{i}" for i in range(12)), *(f"syn-{i}" for i in range(3))])
    assert not any("note" in row or "generator" in row for rows in _splits(tmp_path / "out").values() for row in rows)


def test_unlabelled_sources_and_their_synthetic_variants_share_a_split(tmp_path):
    from ft_assets.dataset.validate import identify

    sources = [chat(f"Invoice {i} from vendor {i}", f"Category: C{i % 3}") for i in range(60)]
    variants = [
        chat(f"Reworded invoice {i} by supplier {i}", f"Category: C{i % 3}", source_id=identify(row)[0])
        for i, row in enumerate(sources)
    ]
    prep([write_jsonl(tmp_path / "in.jsonl", sources + variants)], tmp_path / "out", workers=1)
    where = {}
    for name, rows in _splits(tmp_path / "out").items():
        for row in rows:
            number = row["messages"][1]["content"].split()[-4 if "supplier" in row["messages"][1]["content"] else 1]
            where.setdefault(number, set()).add(name)
    assert len(where) == 60 and all(len(found) == 1 for found in where.values())


def test_report_counts_every_line(tmp_path):
    report = prep([FIXTURES / "glossary_qa.jsonl", FIXTURES / "not_utf8.jsonl"], tmp_path, workers=1)
    assert report["read"] == 140 == report["kept"] + report["rejected"]
    assert Counter(len(json.loads(line)["reasons"]) for line in (tmp_path / REJECTED).open()) == {1: 3}


def test_json_files_that_are_not_arrays_are_read_as_rows(tmp_path):
    one = chat("Only one row", "Its answer")
    (tmp_path / "one.json").write_text(json.dumps(one, indent=2))
    (tmp_path / "lines.json").write_text("\n".join(json.dumps(chat(f"Q{i}", f"A{i}")) for i in range(3)) + "\n")
    report = clean([tmp_path / "one.json", tmp_path / "lines.json"], tmp_path / "out")
    assert (report["read"], report["kept"]) == (4, 4)
    assert [f["kind"] for f in report["files"]] == ["json_array", "jsonl"]


def test_a_trailing_file_with_nothing_kept_and_odd_labels_do_not_crash(tmp_path):
    good = write_jsonl(tmp_path / "a.jsonl", [chat(f"Q{i}", f"A{i}") for i in range(12)])
    bad = write_jsonl(tmp_path / "b.jsonl", ["not json", {"messages": [], "split": ["train"]}])
    report = prep([good, bad], tmp_path / "out", workers=1)
    assert (report["kept"], report["rejected"]) == (12, 2)


def test_a_turn_of_debris_only_is_rejected_not_left_empty(tmp_path):
    rows = [chat("Q", "---"), chat("**Q2**", "```\n```"), chat("Q3", "A real answer.")]
    report = clean([write_jsonl(tmp_path / "in.jsonl", rows)], tmp_path / "out")
    assert report["kept"] == 1 and report["by_reason"] == {"empty_content": 2}


def test_pinned_rows_leave_the_rest_in_proportion(tmp_path):
    rows = [chat(f"Item {i}", f"Answer {i}", **({"split": "validation"} if i < 30 else {})) for i in range(100)]
    report = prep([write_jsonl(tmp_path / "in.jsonl", rows)], tmp_path / "out", workers=1)
    sizes = [report["splits"][name]["rows"] for name in SPLITS]
    assert sizes[1] == 30 and sizes[2] >= 7 and sum(sizes) == 100


def test_code_keeps_its_characters_while_its_fences_go(tmp_path):
    code = "```python\n# add one\ndef __init__(self):\n    return 2**3\n```"
    rows = [chat("Show `__init__` in **Python**", code), *[chat(f"Q{i}", f"A{i}") for i in range(3)]]
    clean([write_jsonl(tmp_path / "in.jsonl", rows)], tmp_path / "out")
    first = read_jsonl(tmp_path / "out" / "cleaned.jsonl")[0]["messages"]
    assert first[1]["content"] == "Show __init__ in Python"
    assert first[2]["content"] == "# add one\ndef __init__(self):\n    return 2**3"


def test_an_answer_ending_in_a_code_block_is_not_cut_off_but_one_ending_mid_sentence_is(tmp_path):
    code = "Here is a function that adds two numbers for you:\n\n```python\ndef add(a, b):\n    return a + b\n```"
    cut = "The invoice was paid late because the vendor sent it to the wrong"
    rows = [
        chat("Write add in Python", code),
        chat("Why was it late?", cut),
        *[chat(f"Q{i}", f"A{i}") for i in range(3)],
    ]
    report = clean([write_jsonl(tmp_path / "in.jsonl", rows)], tmp_path / "out", CleanConfig(suspicious="reject"))
    assert report["by_reason"] == {"cut_off_answer": 1}
    assert read_jsonl(tmp_path / "out" / REJECTED)[0]["line"] == 2


def test_answers_equal_up_to_punctuation_and_case_share_a_group(tmp_path):
    rows = []
    for i in range(20):
        answer = f"Shipment {i} left the depot on Monday morning"
        for j, variant in enumerate([f"{answer}.", answer, f"{answer.lower()}!", f"**{answer}**"]):
            rows.append(chat(f"Which shipment left, asked way {j}? Reference {i * 31 + j}", variant))
    write_jsonl(tmp_path / "in.jsonl", rows)
    report = prep([tmp_path / "in.jsonl"], tmp_path / "out", group_config=GroupConfig(near_duplicate_threshold=0))
    assert report["grouping"]["groups"] == 20
    shipment = {
        name: {r["messages"][-1]["content"].split()[1] for r in rows}
        for name, rows in _splits(tmp_path / "out").items()
    }
    assert not shipment["train"] & (shipment["validation"] | shipment["test"])


def test_a_failed_run_leaves_no_stale_outputs(tmp_path):
    write_jsonl(tmp_path / "many.jsonl", [chat(f"Invoice {i} from Acme", f"Category: c{i}") for i in range(20)])
    write_jsonl(tmp_path / "few.jsonl", [chat(f"Invoice {i} from Acme", f"Category: c{i}") for i in range(3)])
    prep([tmp_path / "many.jsonl"], tmp_path / "out")
    with pytest.raises(SplitError):
        prep([tmp_path / "few.jsonl"], tmp_path / "out")
    # refused before writing: nothing of either run is left, only the lock that kept other runs out
    assert [p.name for p in (tmp_path / "out").iterdir()] == [LOCK]


def test_an_output_folder_inside_an_input_folder_and_files_named_twice_are_left_out(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "rows.jsonl", [chat(f"Invoice {i} from Acme", f"Category: c{i}") for i in range(20)])
    first = prep([data], data / "out")
    (data / "out" / "train.jsonl").rename(data / "out" / "kept_by_hand.jsonl")  # a file prep does not replace
    second = prep([data, data / "rows.jsonl"], data / "out")
    assert first["read"] == second["read"] == 20 and second["duplicates"] == 0
    assert sorted((i["path"], i["why"]) for i in second["ignored_inputs"]) == [
        (str(data / "out" / "kept_by_hand.jsonl"), "inside the output folder"),
        (str(data / "rows.jsonl"), "named more than once"),
    ]
    result = CliRunner().invoke(main, ["prep", str(data), str(data / "rows.jsonl"), "--out", str(data / "out")])
    assert result.exit_code == 0 and "rows.jsonl (named more than once)" in result.output


@pytest.mark.parametrize("option", [["--min-examples", "0"], ["--workers", "0"], ["--max-tokens", "-1"]])
def test_out_of_range_options_are_refused_without_a_traceback(tmp_path, option):
    write_jsonl(tmp_path / "rows.jsonl", [chat("Invoice 1", "Category: a")])
    result = CliRunner().invoke(main, ["prep", str(tmp_path / "rows.jsonl"), "--out", str(tmp_path / "out"), *option])
    assert result.exit_code == 2 and "Invalid value" in result.output


def test_split_names_in_any_case_pin_their_rows(tmp_path):
    rows = [chat(f"Invoice {i} from vendor {i * 3}", f"Category: C{i}") for i in range(12)]
    rows[0]["split"], rows[1]["split"], rows[2]["split"] = "TEST", "Validation", "tesT"
    rows[3]["split"] = "testing"
    report = prep([write_jsonl(tmp_path / "in.jsonl", rows)], tmp_path / "out")
    assert report["by_reason"] == {"invalid_split": 1}
    ids = {name: {r["messages"][1]["content"] for r in split} for name, split in _splits(tmp_path / "out").items()}
    assert {"Invoice 0 from vendor 0", "Invoice 2 from vendor 6"} <= ids["test"]
    assert "Invoice 1 from vendor 3" in ids["validation"]


def test_a_second_run_into_the_same_folder_is_refused_while_the_first_writes(tmp_path):
    from filelock import FileLock

    from ft_assets.dataset.prep import PrepError

    rows = write_jsonl(tmp_path / "rows.jsonl", [chat(f"Invoice {i} from Acme", f"Category: c{i}") for i in range(20)])
    (tmp_path / "out").mkdir()
    with FileLock(tmp_path / "out" / LOCK):  # what a running prep holds
        with pytest.raises(PrepError, match="another ft-assets prep is writing there"):
            prep([rows], tmp_path / "out")
        result = CliRunner().invoke(main, ["prep", str(rows), "--out", str(tmp_path / "out")])
        assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert prep([rows], tmp_path / "out")["kept"] == 20  # the lock is let go with its holder


def test_an_output_folder_that_cannot_be_made_is_a_one_line_error(tmp_path):
    rows = write_jsonl(tmp_path / "rows.jsonl", [chat(f"Invoice {i}", f"Category: c{i}") for i in range(20)])
    result = CliRunner().invoke(main, ["prep", str(rows), "--out", str(tmp_path / "rows.jsonl" / "sub")])
    assert result.exit_code == 2 and "cannot be made an output folder" in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("option", "value"), [("--ratios", "nan,0.5,0.5"), ("--ratios", "0.8,nan,0.2"), ("--near-duplicates", "nan")]
)
def test_nan_options_are_refused(tmp_path, option, value):
    rows = write_jsonl(tmp_path / "rows.jsonl", [chat(f"Invoice {i}", f"Category: c{i}") for i in range(20)])
    result = CliRunner().invoke(main, ["prep", str(rows), "--out", str(tmp_path / "out"), option, value])
    assert result.exit_code == 2 and "Invalid value" in result.output


def test_train_gets_a_group_at_a_tiny_ratio_and_pinning_everything_elsewhere_is_refused(tmp_path):
    rows = [chat(f"Invoice {i} from Acme", f"Category: c{i}") for i in range(20)]
    report = prep(
        [write_jsonl(tmp_path / "rows.jsonl", rows)],
        tmp_path / "tiny",
        split_config=SplitConfig(ratios=(1e-9, 0.5, 0.5)),
    )
    assert report["splits"]["train"]["rows"] == 1
    pinned = [{**row, "split": "test" if i % 2 else "validation"} for i, row in enumerate(rows)]
    with pytest.raises(SplitError, match="every example is pinned to validation or test"):
        prep([write_jsonl(tmp_path / "pinned.jsonl", pinned)], tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == [LOCK]  # its rejected.jsonl is gone too


def test_a_folder_lists_the_files_it_does_not_read(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "rows.jsonl", [chat(f"Invoice {i} from Acme", f"Category: c{i}") for i in range(20)])
    (data / "faq.csv").write_text("question,answer\nWhat?,That.\n")
    (data / "more.jsonl.gz").write_bytes(b"\x1f\x8b")
    (data / ".DS_Store").write_bytes(b"\x00\x01")
    report = prep([data], tmp_path / "out")
    assert report["ignored_inputs"] == [
        {"path": str(data / "faq.csv"), "why": "not a .jsonl or .json file"},
        {"path": str(data / "more.jsonl.gz"), "why": "compressed: decompress it to read it"},
    ]


def test_a_json_array_saved_as_jsonl_is_read_as_an_array(tmp_path):
    rows = [chat(f"Invoice {i} from Acme", f"Category: c{i}") for i in range(12)]
    (tmp_path / "rows.jsonl").write_text(json.dumps(rows, indent=2))
    report = prep([tmp_path / "rows.jsonl"], tmp_path / "out")
    assert (report["read"], report["kept"], report["files"][0]["kind"]) == (12, 12, "json_array")


def test_a_file_that_gives_nothing_says_why_and_what_it_looks_like(tmp_path):
    import gzip

    rows = [chat(f"Invoice {i} from Acme", f"Category: c{i}") for i in range(20)]
    good = write_jsonl(tmp_path / "good.jsonl", rows)
    packed = tmp_path / "packed.jsonl"
    packed.write_bytes(gzip.compress(good.read_bytes()))
    report = prep([good, packed], tmp_path / "out")
    assert report["kept"] == 20
    [warning] = report["warnings"]
    assert warning.startswith(f"{packed}: none of its") and "gzip-compressed" in warning
    with pytest.raises(SplitError, match=r"read \d+ rows, rejected \d+: invalid_utf8 .*gzip-compressed"):
        prep([packed], tmp_path / "out")


def test_an_output_folder_that_cannot_be_written_is_a_one_line_error(tmp_path):
    rows = write_jsonl(tmp_path / "rows.jsonl", [chat(f"Invoice {i}", f"Category: c{i}") for i in range(20)])
    (tmp_path / "out" / LOCK).mkdir(parents=True)  # where the lock file should be
    result = CliRunner().invoke(main, ["prep", str(rows), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "cannot be written to" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_hidden_folders_are_no_input(tmp_path):
    data = tmp_path / "data"
    (data / ".ipynb_checkpoints").mkdir(parents=True)
    (data / ".git" / "objects").mkdir(parents=True)
    rows = [chat(f"Invoice {i} from Acme", f"Category: c{i}") for i in range(20)]
    write_jsonl(data / "rows.jsonl", rows)
    write_jsonl(data / ".ipynb_checkpoints" / "rows-checkpoint.jsonl", rows)
    (data / ".git" / "objects" / "ab").write_bytes(b"x")
    report = prep([data], tmp_path / "out")
    assert (report["read"], report["kept"], report["warnings"]) == (20, 20, [])
    checkpoint = str(data / ".ipynb_checkpoints" / "rows-checkpoint.jsonl")
    assert report["ignored_inputs"] == [{"path": checkpoint, "why": "hidden"}]


def test_too_few_examples_counts_duplicates_among_the_reasons(tmp_path):
    rows = [chat(f"Invoice {i} from Acme", f"Category: c{i}") for i in range(5)]
    first = write_jsonl(tmp_path / "five.jsonl", rows)
    copy = write_jsonl(tmp_path / "copy.jsonl", rows)
    with pytest.raises(SplitError, match=r"read 10 rows, rejected 5: exact or normalized duplicates 5"):
        prep([first, copy], tmp_path / "out")
