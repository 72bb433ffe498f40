"""An LLM judge for free-text answers: a model grades each prediction against its reference on a fixed rubric.

The grade is correctness from 1 to 5, asked for as structured output (a JSON schema) and
reported as ``judge_correctness`` = (grade - 1) / 4, so it lies in [0, 1] like every other
metric. Requests go through the same client, cache and budget as synthetic generation
(``ft_assets.llm.calls``): a repeated evaluation sends nothing. No dagster import here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

from ft_assets.llm.calls import ChatRequest

METRIC = "judge_correctness"
RUBRIC = (
    "You grade answers to questions against a reference answer. Judge only whether the answer is correct and "
    "complete with respect to the reference, not its style or length. Grades: 5 = says the same as the reference; "
    "4 = correct, a minor detail missing or extra; 3 = partly correct; 2 = mostly wrong; 1 = wrong, empty or off "
    "topic. Reply with JSON: the grade and one sentence of reason."
)
RESPONSE_FORMAT = json.dumps(
    {
        "type": "json_schema",
        "json_schema": {
            "name": "grade",
            "strict": True,
            "schema": {
                "type": "object",
                "properties": {"grade": {"type": "integer", "minimum": 1, "maximum": 5}, "reason": {"type": "string"}},
                "required": ["grade", "reason"],
                "additionalProperties": False,
            },
        },
    },
    sort_keys=True,
)


def judge_requests(
    model: str, prompts: Sequence[str], references: Sequence[str], predictions: Sequence[str]
) -> list[ChatRequest]:
    """Return one grading request per prediction (temperature 0, structured output)."""
    return [
        ChatRequest(
            model,
            (
                ("system", RUBRIC),
                ("user", f"Question:\n{prompt}\n\nReference answer:\n{reference}\n\nAnswer to grade:\n{prediction}"),
            ),
            temperature=0.0,
            response_format=RESPONSE_FORMAT,
            max_tokens=200,
        )
        for prompt, reference, prediction in zip(prompts, references, predictions, strict=True)
    ]


def parse_grade(content: str | None) -> float:
    """Return a judge reply's grade as a score in [0, 1]; NaN when the reply is missing or not a 1-5 grade."""
    try:
        grade = json.loads(content or "")["grade"]
    except (ValueError, TypeError, KeyError):
        return math.nan
    if type(grade) is not int or not 1 <= grade <= 5:
        return math.nan
    return (grade - 1) / 4
