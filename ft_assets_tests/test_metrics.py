import math

import numpy as np
import pytest

from ft_assets.evaluation.metrics import (
    MAIN_METRIC,
    bootstrap_ci,
    detect_task,
    normalize_answer,
    paired_test,
    parse_fields,
    percentile,
    score_answers,
    score_examples,
    summarize,
)


def test_parse_fields_reads_key_value_lines():
    assert parse_fields("Category: Travel\nVendor:  Skyline Airways \nnoise") == {
        "category": "Travel",
        "vendor": "Skyline Airways",
    }
    assert parse_fields("Category: A\nCategory: B") == {"category": "A"}
    assert parse_fields("") == {}


def test_score_answers_counts_exact_and_per_field_hits():
    golds = ["Category: Travel\nVendor: Metro Rail", "Category: Software\nVendor: Ledgerly"]
    predictions = ["Category: Travel\nVendor: Metro Rail  ", "Category: software\nVendor: Cloudnest"]
    scores = score_answers(predictions, golds)
    assert scores.n == 2
    assert scores.exact_match == 0.5
    assert scores.field_accuracy == {"category": 1.0, "vendor": 0.5}


def test_score_answers_rejects_mismatched_lengths_and_handles_none():
    with pytest.raises(ValueError, match="1 predictions for 2"):
        score_answers(["a"], ["a", "b"])
    assert math.isnan(score_answers([], []).exact_match)


def test_normalize_answer_and_percentile():
    assert normalize_answer(" a \r\nb  \n") == "a\nb"
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([5.0], 95) == 5.0
    assert math.isnan(percentile([], 50))


INVOICE_GOLDS = [
    f"Category: {category}\nVendor: {vendor}"
    for category, vendor in [
        ("Travel", "Metro Rail"),
        ("Software", "Ledgerly"),
        ("Travel", "Skyline Airways"),
        ("Meals", "Cafe Nord"),
        ("Software", "Cloudnest"),
        ("Travel", "City Cabs"),
        ("Meals", "Bistro 9"),
        ("Software", "Paperdesk"),
    ]
]
JSON_GOLDS = [
    '{"name": "Ada", "age": 36}',
    '{"name": "Alan", "age": 41}',
    '{"name": "Grace", "age": 85}',
    '["a", "b"]',
    "not json",
]
QA_GOLDS = [
    "The capital of France is Paris, which sits on the Seine.",
    "Water boils at 100 degrees Celsius at sea level.",
    "Photosynthesis turns light, water and carbon dioxide into sugar.",
    "Q: why is the sky blue?\nBecause air scatters short wavelengths of sunlight more than long ones.",
    "The Treaty of Westphalia was signed in 1648.",
    "A prime number has exactly two distinct divisors.",
]


def test_detect_task_labels_json_free_text():
    task, reason = detect_task(INVOICE_GOLDS)
    assert task == "labels"
    assert "8 of 8" in reason and "category" in reason
    task, reason = detect_task(JSON_GOLDS)
    assert (task, reason) == ("json", "4 of 5 gold answers parse as JSON objects or arrays.")
    task, reason = detect_task(QA_GOLDS)
    assert task == "free_text"
    assert "6 distinct answers" in reason
    assert detect_task(["positive", "negative", "positive", "positive"])[0] == "labels"
    assert detect_task(["Paris", "1945", "Ada Lovelace", "blue"])[0] == "free_text"  # short but never repeats


def test_detect_task_configured_and_edge_cases():
    assert detect_task(QA_GOLDS, "labels") == ("labels", "configured")
    with pytest.raises(ValueError, match="unknown task"):
        detect_task(QA_GOLDS, "regression")
    assert detect_task([])[0] == "free_text"
    # Key: value lines whose values never repeat (a Q&A transcript) are free text, not labels
    transcript = [f"Q: question number {i}?\nA: a long and different answer {i}" for i in range(6)]
    assert detect_task(transcript)[0] == "free_text"


def test_stray_field_line_in_free_text_creates_no_field():
    predictions = ["x"] * len(QA_GOLDS)
    assert not any(key.startswith("field_accuracy") for key in score_examples(predictions, QA_GOLDS, "labels"))
    assert score_answers(predictions, QA_GOLDS).field_accuracy == {}
    assert score_answers(predictions, QA_GOLDS).task == "free_text"


def test_score_examples_labels_fields_and_nan():
    golds = ["Category: Travel\nVendor: A", "Category: Meals\nVendor: B", "Category: Travel"]
    predictions = ["Category: travel\nVendor: A", "Category: Travel\nVendor: B", "Category: Travel"]
    scores = score_examples(predictions, golds, "labels")
    assert scores["exact_match"] == [0.0, 0.0, 1.0]
    assert scores["field_accuracy:category"] == [1.0, 0.0, 1.0]
    assert scores["field_accuracy:vendor"][:2] == [1.0, 1.0]
    assert math.isnan(scores["field_accuracy:vendor"][2])
    means = summarize(scores)
    assert means["field_accuracy:vendor"] == 1.0  # NaN (gold lacks the field) is left out of the mean
    assert means["field_accuracy:category"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="2 predictions for 3"):
        score_examples(predictions[:2], golds, "labels")


def test_score_examples_json():
    predictions = ['{"age": 36, "name": "Ada"}', '{"name": "Alan"}', "nope", '["a", "c"]', "{}"]
    scores = score_examples(predictions, JSON_GOLDS, "json")
    assert scores["valid_json"] == [1.0, 1.0, 0.0, 1.0, 1.0]
    assert scores["schema_match"][:4] == [1.0, 0.0, 0.0, 1.0]
    assert scores["key_accuracy"][:4] == [1.0, 0.5, 0.0, 0.5]
    assert math.isnan(scores["key_accuracy"][4])  # gold is not JSON
    assert scores["exact_match"] == [0.0] * 5
    assert score_examples(['{"a": true}'], ['{"a": 1}'], "json")["key_accuracy"] == [0.0]


def test_rouge_and_chrf_near_miss_and_identical():
    gold = "The capital of France is Paris."
    scores = score_examples(["Paris is the capital of France.", gold], [gold, gold], "free_text")
    assert 0 < scores["rouge_l"][0] < 1 and 0 < scores["chrf"][0] < 1
    assert scores["rouge_l"][1] == 1.0 and scores["chrf"][1] == 1.0
    assert score_examples(["日本の首都"], ["日本の首都"], "free_text")["rouge_l"] == [1.0]  # tokenizer drops non-ASCII
    assert set(summarize(scores)) == {"exact_match", "rouge_l", "chrf"}
    assert MAIN_METRIC == {"labels": "exact_match", "json": "key_accuracy", "free_text": "rouge_l"}


def test_bootstrap_ci_contains_mean_and_narrows_with_n():
    rng = np.random.default_rng(1)
    small, large = rng.random(20).tolist(), rng.random(2000).tolist()
    low, high = bootstrap_ci(small)
    assert low <= np.mean(small) <= high
    big_low, big_high = bootstrap_ci(large)
    assert big_low <= np.mean(large) <= big_high
    assert big_high - big_low < (high - low) / 3
    assert bootstrap_ci(small, seed=3) == bootstrap_ci(small, seed=3)
    assert all(math.isnan(v) for v in bootstrap_ci([]))
    assert bootstrap_ci([0.4]) == (0.4, 0.4)
    assert bootstrap_ci([1.0, math.nan, 1.0]) == (1.0, 1.0)


def test_paired_test_consistent_difference_and_noise():
    rng = np.random.default_rng(7)
    b = rng.random(40) * 0.7
    better = paired_test((b + 0.3).tolist(), b.tolist())
    assert better["difference"] == pytest.approx(0.3)
    assert better["p_value"] < 0.01 and better["significant"]
    assert better["ci_low"] == pytest.approx(0.3) and better["ci_high"] == pytest.approx(0.3)
    noise = paired_test(rng.random(40).tolist(), rng.random(40).tolist())
    assert noise["p_value"] > 0.2 and not noise["significant"]
    assert noise["ci_low"] < 0 < noise["ci_high"]
    a, b2 = rng.random(30).tolist(), rng.random(30).tolist()
    assert paired_test(a, b2, seed=5) == paired_test(a, b2, seed=5)
    assert paired_test([0.5] * 5, [0.5] * 5)["p_value"] == 1.0
    assert paired_test([], [])["n"] == 0
    with pytest.raises(ValueError, match="same examples"):
        paired_test([1.0], [1.0, 0.0])


def test_score_answers_reports_task_and_means():
    predictions = ["Category: Travel\nVendor: Metro Rail"] * len(INVOICE_GOLDS)
    scores = score_answers(predictions, INVOICE_GOLDS)
    assert scores.task == "labels"
    assert scores.exact_match == 1 / 8
    assert scores.field_accuracy == {"category": 3 / 8, "vendor": 1 / 8}
    assert scores.metrics["field_accuracy:category"] == 3 / 8
