"""Synthetic generation: planning and parsing, the offline generator, and GPT calls against the local stand-in."""

import asyncio
import json
import shutil
from pathlib import Path

import dagster as dg
import pytest

from ft_assets.definitions import defs
from ft_assets.llm.calls import Budget, ChatRequest, Prices, ResponseCache, run_requests
from ft_assets.llm.client import ClientSettings, NotConfigured, async_client
from ft_assets.resources import ArtifactIOManager, ArtifactStore, LineageStore, LLMResource
from ft_assets.synthetic import offline
from ft_assets.synthetic.generate import Settings, build_example, document_entries, plan, usable_examples
from ft_assets_tests.conftest import ROOT, chat, write_jsonl
from ft_assets_tests.standin import StandIn

API_KEY = "sk-standin-secret-4d1f9a"


def paraphrasing_handler(body: dict) -> str:
    """What a model would answer: paraphrases upper-case the text, document questions echo the entry."""
    user = body["messages"][-1]["content"]
    name = body.get("response_format", {}).get("json_schema", {}).get("name", "")
    if name == "synthetic_paraphrase":
        return json.dumps({"text": user.rsplit("\n\n(rewrite", 1)[0].upper()})
    if name == "synthetic_documents":
        return json.dumps({"question": f"Q: {user.splitlines()[0]}", "answer": user.splitlines()[1]})
    return json.dumps({"answer": "Category: Travel"})


@pytest.fixture
def raw_rows(tmp_path) -> Path:
    rows = [
        chat(f"Invoice {i}\n- item a: 1.00\n- item b: 2.00\nTotal due: EUR 3.00", "Category: Travel", id=f"r{i}")
        for i in range(6)
    ]
    rows.append({"messages": [{"role": "user", "content": "no answer"}]})
    rows.append("{broken")
    return write_jsonl(tmp_path / "raw.jsonl", rows)


def test_plan_uses_valid_raw_rows_and_document_entries(raw_rows):
    examples = usable_examples([raw_rows])
    assert [e["source_id"] for e in examples] == [f"r{i}" for i in range(6)]
    entries = document_entries(ROOT / "data" / "sources")
    terms = {e["term"] for e in entries}
    assert {"Travel", "Consulting", "Skyline Airways"} <= terms
    planned = plan(Settings(variants=2, max_sources=3), examples, entries)
    assert len(planned) == 6 and len({p.example_id for p in planned}) == 6
    assert {p.group for p in planned} == {"r0", "r1", "r2"}
    assert plan(Settings(variants=2, max_sources=3), examples, entries) == planned


def test_malformed_generations_become_rejections_with_reasons(raw_rows):
    item = plan(Settings(max_sources=1), usable_examples([raw_rows]), [])[0]
    generator = {"provider": "test", "model": "m"}
    assert build_example(item, "not json", generator) == (None, "invalid_json")
    assert build_example(item, '{"other": "x"}', generator) == (None, "schema_mismatch")
    assert build_example(item, '{"text": "  "}', generator) == (None, "empty_field")
    assert build_example(item, json.dumps({"text": item.original}), generator) == (None, "unchanged")
    assert build_example(item, None, generator) == (None, "empty_response")
    example, reason = build_example(item, '{"text": "Rewritten invoice"}', generator)
    assert reason == "" and example["messages"][-1]["content"] == "Category: Travel"
    assert example["source_id"] == "r0" and example["group"] == "r0"
    assert example["generator"]["provider"] == "test" and len(example["generator"]["prompt_hash"]) == 12


def test_offline_generator_is_deterministic_and_refuses_distillation(raw_rows):
    examples = usable_examples([raw_rows])
    planned = plan(Settings(), examples, [])
    first = [offline.answer(p) for p in planned]
    assert first == [offline.answer(p) for p in planned]
    text = json.loads(first[0])["text"]
    assert text != planned[0].original and "EUR 3.00" in text
    with pytest.raises(offline.OfflineUnsupported, match="teacher model"):
        offline.answer(plan(Settings(mode="distill"), examples, [])[0])


def test_client_settings_name_the_variables_and_hide_the_key():
    with pytest.raises(NotConfigured, match="AZURE_OPENAI_ENDPOINT"):
        ClientSettings().require()
    settings = ClientSettings(azure_endpoint="https://x.openai.azure.com", api_key=API_KEY)
    assert settings.provider == "azure"
    assert API_KEY not in repr(settings) and API_KEY not in json.dumps(settings.describe())


def _requests(n: int) -> list[ChatRequest]:
    return [ChatRequest("gpt-4o-mini", (("user", f"prompt {i}"),), seed=i) for i in range(n)]


def test_every_request_is_answered_exactly_once_despite_429s_and_500s(tmp_path):
    with StandIn(API_KEY, fault_429_rate=0.1, fault_500_rate=0.1, retry_after_s=0.01, seed=3) as server:
        settings = ClientSettings(
            azure_endpoint=server.azure_endpoint, api_key=API_KEY, api_version="2025-04-01-preview"
        )
        requests = _requests(120)
        results, report = asyncio.run(
            run_requests(lambda: async_client(settings), requests, endpoint=settings.endpoint,
                         cache=ResponseCache(tmp_path / "cache"), concurrency=16, backoff_s=0.01, log=lambda _: None)
        )  # fmt: skip
        stats = server.stats()
    assert [r.request for r in results] == requests
    assert all(r.status == "ok" and r.content for r in results)
    assert stats["faults"].get("429", 0) + stats["faults"].get("500", 0) > 10
    assert report.requests_sent == stats["total"] == 120 + report.retries
    assert report.prompt_tokens > 0


def test_cached_requests_send_nothing_and_budget_stops_cleanly(tmp_path):
    cache = ResponseCache(tmp_path / "cache")
    with StandIn(API_KEY) as server:
        settings = ClientSettings(base_url=server.openai_base_url, api_key=API_KEY)
        factory = lambda: async_client(settings)  # noqa: E731
        asyncio.run(run_requests(factory, _requests(10), endpoint=settings.endpoint, cache=cache, log=lambda _: None))
        server.reset_stats()
        results, report = asyncio.run(
            run_requests(factory, _requests(10), endpoint=settings.endpoint, cache=cache, log=lambda _: None)
        )
        assert server.stats()["total"] == 0 and report.cache_hits == 10
        assert all(r.status == "cached" for r in results)
        limited, report = asyncio.run(
            run_requests(factory, _requests(30)[10:], endpoint=settings.endpoint, cache=cache, concurrency=2,
                         budget=Budget(max_requests=5), prices=Prices(1.0, 2.0), log=lambda _: None)
        )  # fmt: skip
    assert report.requests_sent == 5 == report.statuses["ok"]
    assert report.statuses["budget"] == 15 and len(limited) == 20
    assert report.cost_usd > 0


def _materialize(project: Path, llm: LLMResource, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    artifacts = str(project / "artifacts")
    return defs.resolve_job_def("data").execute_in_process(
        instance=instance,
        resources={
            "artifacts": ArtifactStore(root=artifacts),
            "io_manager": ArtifactIOManager(root=artifacts),
            "lineage": LineageStore(path=str(project / "lineage.duckdb")),
            "llm": llm,
        },
        run_config={
            "ops": {
                "raw_examples": {"config": {"folder": str(project / "raw")}},
                "source_documents": {"config": {"folder": str(project / "sources")}},
                "synthetic_examples": {"config": {"max_sources": 20}},
            }
        },
    )


def _synthetic_metadata(result: dg.ExecuteInProcessResult) -> dict:
    return next(
        e.step_materialization_data.materialization.metadata
        for e in result.get_asset_materialization_events()
        if e.asset_key.to_user_string() == "synthetic_examples"
    )


def test_gpt_generation_through_dagster_is_cached_and_never_leaks_the_key(tmp_path, monkeypatch):
    shutil.copytree(ROOT / "data" / "raw", tmp_path / "raw")
    shutil.copytree(ROOT / "data" / "sources", tmp_path / "sources")
    with StandIn(API_KEY, chat_handler=paraphrasing_handler) as server:
        monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", server.azure_endpoint)
        monkeypatch.setenv("AZURE_OPENAI_API_KEY", API_KEY)
        monkeypatch.setenv("OPENAI_API_VERSION", "2025-04-01-preview")
        llm = LLMResource.from_environment(cache_dir=str(tmp_path / "cache"))
        with dg.DagsterInstance.ephemeral() as instance:
            first = _materialize(tmp_path, llm, instance)
            sent = server.stats()["total"]
            server.reset_stats()
            again = _materialize(tmp_path, llm, instance)
            logs = "\n".join(str(e.dagster_event or "") + (e.message or "") for e in instance.all_logs(first.run_id))
        assert server.stats()["total"] == 0, "re-materializing sends no request"
    metadata = _synthetic_metadata(first)
    assert metadata["provider"].value == "azure" and metadata["generated"].value == 20 == sent
    assert metadata["requests_sent"].value == 20 and metadata["prompt_tokens"].value > 0
    assert _synthetic_metadata(again)["requests_sent"].value == 0
    assert _synthetic_metadata(again)["data_version"].value == metadata["data_version"].value
    examples = Path(metadata["path"].value, "examples.jsonl").read_text()
    assert "TAX INVOICE" in examples.upper()
    everything = [logs, json.dumps({k: str(v.value) for k, v in metadata.items()})]
    everything += [p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".duckdb"]
    everything.append((tmp_path / "lineage.duckdb").read_bytes().decode("latin-1"))
    assert not any(API_KEY in text for text in everything)


def test_paraphrase_keeps_earlier_turns_of_a_conversation(tmp_path):
    messages = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": "second question"},
        {"role": "assistant", "content": "second answer"},
    ]
    path = write_jsonl(tmp_path / "multi.jsonl", [{"id": "m1", "messages": messages}])
    item = plan(Settings(), usable_examples([path]), [])[0]
    example, _ = build_example(item, '{"text": "the second question, reworded"}', {"provider": "test"})
    assert [m["content"] for m in example["messages"]] == [
        "S", "first question", "first answer", "the second question, reworded", "second answer",
    ]  # fmt: skip


def test_a_malformed_retry_after_header_is_ignored():
    from types import SimpleNamespace

    from ft_assets.llm.calls import retry_after_s

    def error(headers: dict) -> Exception:
        failure = RuntimeError("429")
        failure.response = SimpleNamespace(headers=headers)  # type: ignore[attr-defined]
        return failure

    assert retry_after_s(error({"retry-after": "not a date"})) is None
    assert retry_after_s(error({"retry-after": "1.5"})) == 1.5
    assert retry_after_s(error({"retry-after-ms": "250"})) == 0.25
