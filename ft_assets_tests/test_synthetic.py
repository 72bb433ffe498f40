"""Synthetic generation: planning and parsing, the offline generator, and GPT calls against the local stand-in."""

import asyncio
import json
import logging
import shutil
from pathlib import Path

import dagster as dg
import pytest

from ft_assets.dataset.validate import identify
from ft_assets.definitions import defs
from ft_assets.llm.calls import Budget, ChatRequest, Prices, ResponseCache, run_requests
from ft_assets.llm.client import ClientSettings, NotConfigured, async_client
from ft_assets.resources import ArtifactIOManager, ArtifactStore, LineageStore, LLMResource
from ft_assets.synthetic import offline
from ft_assets.synthetic.generate import Settings, build_example, plan
from ft_assets.synthetic.rows import usable_examples
from ft_assets.synthetic.sources import Fields, read_entries
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


def _entries(folder: Path, fields: Fields | None = None) -> tuple[list[dict], list[dict]]:
    return read_entries(sorted(p for p in folder.rglob("*") if p.is_file()), folder, fields or Fields())


def test_plan_uses_valid_raw_rows_and_document_entries(raw_rows):
    examples, _ = usable_examples([raw_rows])
    assert [e["source_id"] for e in examples] == [f"r{i}" for i in range(6)]
    entries, _ = _entries(ROOT / "data" / "sources")
    terms = {e["term"] for e in entries}
    assert {"Travel", "Consulting", "Skyline Airways"} <= terms
    skyline = next(e for e in entries if e["term"] == "Skyline Airways")
    assert skyline["definition"] == "Travel; Scheduled airline flying European and transatlantic routes"
    planned = plan(Settings(variants=2, max_sources=3), examples, entries)
    assert len(planned) == 6 and len({p.example_id for p in planned}) == 6
    assert {p.group for p in planned} == {"r0", "r1", "r2"}
    assert plan(Settings(variants=2, max_sources=3), examples, entries) == planned


def test_malformed_generations_become_rejections_with_reasons(raw_rows):
    item = plan(Settings(max_sources=1), usable_examples([raw_rows])[0], [])[0]
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
    examples, _ = usable_examples([raw_rows])
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


def _materialize(
    project: Path, llm: LLMResource, instance: dg.DagsterInstance, **synthetic: object
) -> dg.ExecuteInProcessResult:
    artifacts = str(project / "artifacts")
    selection = {dg.AssetKey(k) for k in ("raw_examples", "source_documents", "synthetic_examples")}
    job = defs.resolve_implicit_global_asset_job_def().get_subset(asset_selection=selection)
    return job.execute_in_process(
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
                "synthetic_examples": {"config": {"max_sources": 20, **synthetic}},
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
    item = plan(Settings(), usable_examples([path])[0], [])[0]
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


GLOSSARY_TERMS = ["Accounts payable (AP)", "C++ licence", "Net 30/60", "3-way match", "P&L", "Wi-Fi 6+"]
GLOSSARY_TERMS += [f"Term {i}" for i in range(33 - len(GLOSSARY_TERMS))]


def _glossary(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [
        {"term": term, "definition": f"Meaning number {i} of the glossary."} for i, term in enumerate(GLOSSARY_TERMS)
    ]
    (folder / "glossary.json").write_text(json.dumps(rows, indent=2))
    (folder / "broken.json").write_text("[{")
    (folder / "prose.md").write_text("# Notes\n\nJust prose here, nothing to define.\n")
    return folder


def test_source_documents_in_json_jsonl_markdown_and_csv(tmp_path):
    _glossary(tmp_path)
    (tmp_path / "faq.jsonl").write_text(
        json.dumps({"Question": "Who approves refunds?", "Answer": "The finance lead."}) + "\n{bad\n"
    )
    (tmp_path / "terms.md").write_text(
        "# Glossary\n\nThe terms below are used by the finance team.\n\n"
        "Accrual (IFRS): Revenue recorded when earned.\n- **2FA/MFA**: A second login factor.\n---\n"
    )
    (tmp_path / "mapped.csv").write_text('name,meaning\nVAT,"Value added tax, charged on sales"\n')
    (tmp_path / "scan.pdf").write_bytes(b"%PDF-1.4")
    entries, report = _entries(tmp_path)
    by_file = {row["file"]: row for row in report}
    pairs = {(e["term"], e["definition"]) for e in entries}
    assert by_file["glossary.json"]["entries"] == 33 and ("Net 30/60", "Meaning number 2 of the glossary.") in pairs
    assert ("Who approves refunds?", "The finance lead.") in pairs
    assert {("Accrual (IFRS)", "Revenue recorded when earned."), ("2FA/MFA", "A second login factor.")} <= pairs
    assert by_file["terms.md"]["entries"] == 2
    assert ("VAT", "Value added tax, charged on sales") in pairs
    for name in ("broken.json", "prose.md", "scan.pdf"):
        assert by_file[name]["entries"] == 0 and by_file[name]["problem"]
    assert not any(word in e["definition"].lower() for e in entries for word in ("name", "meaning:", "definition"))
    mapped, report = _entries(tmp_path, Fields("meaning", "name"))
    tables = [(e["term"], e["definition"]) for e in mapped if e["document"].endswith((".csv", ".json"))]
    assert tables == [("Value added tax, charged on sales", "VAT")]
    assert {row["file"]: row["entries"] for row in report}["glossary.json"] == 0


def test_sources_are_distinct_raw_rows_and_carry_a_group(tmp_path):
    base = chat("Invoice A\nTotal due: EUR 1.00", "Category: Travel")
    rows = [
        {**base, "id": "a1"},
        {**chat("invoice  a\ntotal DUE: eur 1.00", "category: travel"), "id": "a2"},
        {**chat("Invoice B", "Category: Software"), "group": "vendor-b", "id": "b1"},
        chat("Invoice C", "Category: Utilities"),
        chat("Invoice C ", "Category: Utilities"),
    ]
    examples, duplicates = usable_examples([write_jsonl(tmp_path / "raw.jsonl", rows)])
    assert duplicates == 2 and [e["group"] for e in examples] == ["a1", "vendor-b", identify(rows[3])[0]]
    planned = plan(Settings(variants=2), examples, [])
    item = planned[-1]
    example, _ = build_example(item, '{"text": "Invoice C, reworded"}', {"provider": "test"})
    assert example["group"] == example["source_id"] == identify(rows[3])[0]
    assert len(example["group"]) == 16
    entry = {"document": "g.json", "term": "P&L", "definition": "Profit and loss."}
    assert plan(Settings(mode="documents"), examples, [entry])[0].group == "doc:g.json:P&L"


def test_offline_paraphrases_differ_in_words_and_survive_cleaning(tmp_path, shipped_raw):
    from ft_assets.dataset.prep import clean

    examples, _ = usable_examples(sorted(shipped_raw.glob("*.jsonl")))
    planned = plan(Settings(variants=4, max_sources=60), examples, [])
    built = [build_example(p, offline.answer(p), {"provider": "offline"}) for p in planned]
    kept = [example for example, _ in built if example is not None]
    assert len(kept) == len(planned) == 240
    for source in examples[:60]:
        texts = [source["messages"][-2]["content"]]
        texts += [e["messages"][-2]["content"] for e in kept if e["source_id"] == source["source_id"]]
        assert len({offline.words(t) for t in texts}) == 5
    generated = write_jsonl(tmp_path / "synthetic.jsonl", kept)
    clean([*sorted(shipped_raw.glob("*.jsonl")), generated], tmp_path / "cleaned")
    rejected = [json.loads(line) for line in (tmp_path / "cleaned" / "rejected.jsonl").read_text().splitlines()]
    assert not [row for row in rejected if row["file"].endswith("synthetic.jsonl")]
    assert offline.rewordings("ok", 0)[: len(offline.FRAMES)] and len(offline.rewordings("ok", 0)) == 6
    beyond = plan(Settings(variants=8), [examples[0] | {"messages": _short_chat()}], [])
    assert [offline.answer(p) is None for p in beyond] == [False] * 6 + [True] * 2


def _short_chat() -> list[dict]:
    return [{"role": "user", "content": "ok"}, {"role": "assistant", "content": "fine"}]


def _offline_llm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LLMResource:
    for name in ("AZURE_OPENAI_ENDPOINT", "AZURE_OPENAI_API_KEY", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    return LLMResource.from_environment(cache_dir=str(tmp_path / "cache"))


def _raw_with_a_duplicate(project: Path) -> None:
    (project / "raw").mkdir()
    rows = [chat(f"Invoice {i}\nTotal due: EUR {i}.00", "Category: Travel") for i in range(5)]
    write_jsonl(project / "raw" / "a.jsonl", [*rows, chat("INVOICE 0\nTotal   due: EUR 0.00", "category: travel")])
    _glossary(project / "sources")


def test_gpt_requests_are_never_spent_on_duplicate_raw_rows(tmp_path, monkeypatch):
    _raw_with_a_duplicate(tmp_path)
    with StandIn(API_KEY, chat_handler=paraphrasing_handler) as server:
        monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", server.azure_endpoint)
        monkeypatch.setenv("AZURE_OPENAI_API_KEY", API_KEY)
        monkeypatch.setenv("OPENAI_API_VERSION", "2025-04-01-preview")
        llm = LLMResource.from_environment(cache_dir=str(tmp_path / "cache"))
        with dg.DagsterInstance.ephemeral() as instance:
            metadata = _synthetic_metadata(_materialize(tmp_path, llm, instance))
        assert server.stats()["total"] == 5 == metadata["requests_sent"].value
    assert metadata["duplicate_sources_skipped"].value == 1


def test_offline_run_reports_variants_per_source_and_skipped_duplicates(tmp_path, monkeypatch):
    _raw_with_a_duplicate(tmp_path)
    with dg.DagsterInstance.ephemeral() as instance:
        result = _materialize(tmp_path, _offline_llm(tmp_path, monkeypatch), instance, variants=3)
    metadata = _synthetic_metadata(result)
    assert metadata["provider"].value == "offline" and metadata["generated"].value == 15
    assert metadata["duplicate_sources_skipped"].value == 1
    assert [r.data for r in metadata["variants_per_source"].records] == [{"variants": 3, "sources": 5}]
    details = json.loads(Path(metadata["path"].value, "generator.json").read_text())
    assert set(details["variants_per_source"].values()) == {3} and len(details["variants_per_source"]) == 5


@pytest.mark.parametrize("provider", ["offline", "azure"])
def test_a_json_glossary_of_33_terms_gives_33_document_examples(tmp_path, monkeypatch, provider):
    shutil.copytree(ROOT / "data" / "raw", tmp_path / "raw")
    _glossary(tmp_path / "sources")
    with StandIn(API_KEY, chat_handler=paraphrasing_handler) as server:
        llm = _offline_llm(tmp_path, monkeypatch)
        if provider == "azure":
            monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", server.azure_endpoint)
            monkeypatch.setenv("AZURE_OPENAI_API_KEY", API_KEY)
            monkeypatch.setenv("OPENAI_API_VERSION", "2025-04-01-preview")
            llm = LLMResource.from_environment(cache_dir=str(tmp_path / "cache"))
        with dg.DagsterInstance.ephemeral() as instance:
            result = _materialize(tmp_path, llm, instance, mode="documents", max_sources=None)
            warnings = [e.message or "" for e in instance.all_logs(result.run_id) if e.level == logging.WARNING]
    metadata = _synthetic_metadata(result)
    assert metadata["provider"].value == provider and metadata["generated"].value == 33
    assert metadata["source_files_without_entries"].value == 2
    entries = {r.data["file"]: r.data["entries"] for r in metadata["entries_per_source_file"].records}
    assert entries["glossary.json"] == 33
    assert any("broken.json gave no entries" in w for w in warnings)
    assert any("prose.md gave no entries" in w for w in warnings)
    examples = [json.loads(line) for line in Path(metadata["path"].value, "examples.jsonl").read_text().splitlines()]
    assert {e["group"] for e in examples} == {f"doc:glossary.json:{term}" for term in GLOSSARY_TERMS}


@pytest.mark.parametrize("mode", ["paraphrase", "distill"])
def test_sources_written_as_text_parts_are_read_as_strings(tmp_path, mode):
    def parts(text: str) -> list[dict]:
        return [{"type": "text", "text": text}]

    row = {"messages": [{"role": "system", "content": parts("You classify invoices.")},
                        {"role": "user", "content": parts("Invoice 7 from Acme")},
                        {"role": "assistant", "content": parts("Category: C7")}]}  # fmt: skip
    examples, _ = usable_examples([write_jsonl(tmp_path / "raw.jsonl", [row])])
    assert [m["content"] for m in examples[0]["messages"]] == [
        "You classify invoices.",
        "Invoice 7 from Acme",
        "Category: C7",
    ]
    [item] = plan(Settings(mode=mode, variants=1), examples, [])  # distill read the system turn as text
    if mode == "paraphrase":
        example, _ = build_example(item, '{"text": "Invoice 7 from Acme, reworded"}', {"provider": "test"})
        assert all(isinstance(m["content"], str) for m in example["messages"])
