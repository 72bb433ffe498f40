import math

import pytest

from ft_assets.evaluation.metrics import normalize_answer, parse_fields, percentile, score_answers


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
