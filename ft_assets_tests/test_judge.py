"""The LLM judge: rubric requests with structured output, through the real client against the stand-in server."""

import asyncio
import json
import math

from ft_assets.evaluation.judge import RESPONSE_FORMAT, judge_requests, parse_grade
from ft_assets.llm.calls import ResponseCache, run_requests
from ft_assets.llm.client import ClientSettings, async_client
from ft_assets_tests.standin import StandIn

API_KEY = "test-key-judge"


def test_grades_map_to_scores_and_bad_replies_to_nan():
    assert parse_grade('{"grade": 5, "reason": "same"}') == 1.0
    assert parse_grade('{"grade": 1, "reason": "wrong"}') == 0.0
    assert parse_grade('{"grade": 3, "reason": "partly"}') == 0.5
    for reply in (None, "", "not json", '{"grade": 7}', '{"grade": "4"}', '{"reason": "x"}', "[1]"):
        assert math.isnan(parse_grade(reply)), reply


def test_judge_asks_with_the_rubric_and_caches(tmp_path):
    seen = []

    def grader(body: dict) -> str:
        seen.append(body)
        graded = body["messages"][1]["content"]
        answer = graded.split("Answer to grade:\n", 1)[1]
        reference = graded.split("Reference answer:\n", 1)[1].split("\n\nAnswer to grade:", 1)[0]
        return json.dumps({"grade": 5 if answer == reference else 2, "reason": "compared"})

    requests = judge_requests("gpt-4o-mini", ["What is DNS?", "What is TCP?"], ["Names to addresses.", "A stream."],
                              ["Names to addresses.", "A colour."])  # fmt: skip
    cache = ResponseCache(tmp_path / "cache")
    with StandIn(API_KEY, chat_handler=grader) as server:
        settings = ClientSettings(base_url=server.openai_base_url, api_key=API_KEY)
        results, _ = asyncio.run(run_requests(lambda: async_client(settings), requests, endpoint=settings.endpoint,
                                              cache=cache, log=lambda _: None))  # fmt: skip
        again, report = asyncio.run(run_requests(lambda: async_client(settings), requests, endpoint=settings.endpoint,
                                                 cache=cache, log=lambda _: None))  # fmt: skip
    assert [parse_grade(r.content) for r in results] == [1.0, 0.25]
    assert [r.content for r in again] == [r.content for r in results]
    assert report.cache_hits == 2 and len(seen) == 2, "a repeated evaluation sends nothing"
    assert seen[0]["response_format"] == json.loads(RESPONSE_FORMAT) and seen[0]["temperature"] == 0.0
    assert "1 = wrong" in seen[0]["messages"][0]["content"]
