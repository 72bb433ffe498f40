"""The synthetic examples asset: GPT-generated examples when credentials are set, the offline generator otherwise."""

import json
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import dagster as dg
from pydantic import Field

from ft_assets.artifacts import ArtifactRef
from ft_assets.code_versions import source_version
from ft_assets.metadata import chat_preview, counts_table, reading_order, table
from ft_assets.resources import ArtifactStore, LineageStore, LLMResource

SYNTHETIC_CODE = source_version(__name__, "synthetic_examples")
NO_VARIANT = "the offline generator has no further rewording of this source that differs in words"


class SyntheticConfig(dg.Config):
    """What to generate, and the limits of one materialization."""

    mode: Literal["paraphrase", "documents", "distill"] = Field(
        "paraphrase", description="paraphrase raw examples, question/answer chats from source documents, or distill "
        "(a teacher model answers the raw prompts)."
    )  # fmt: skip
    variants: int = Field(1, description="Examples generated per source example or document entry.")
    max_sources: int | None = Field(40, description="Use at most this many source examples / entries (None: all).")
    temperature: float = Field(0.7, description="Sampling temperature.")
    seed: int = Field(0, description="Seed sent with every request (variant n uses seed + n).")
    concurrency: int = Field(16, description="Requests in flight at once.")
    max_requests: int | None = Field(2000, description="Budget: stop after sending this many requests (retries count).")
    max_cost_usd: float | None = Field(5.0, description="Budget: stop once this many dollars are spent.")
    offline_when_unconfigured: bool = Field(True, description="Without credentials, use the offline generator.")
    term_field: str | None = Field(
        None, description="Documents: JSON key / CSV column of the term (default: term, else question)."
    )
    definition_field: str | None = Field(
        None, description="Documents: JSON key / CSV column of the definition (default: definition, else answer)."
    )


def _generate(
    context: dg.AssetExecutionContext, config: SyntheticConfig, planned: list[Any], llm: LLMResource
) -> tuple[str, list[Any], dict[str, Any]]:
    """Return (provider, per-request (status, content, error), usage report) for the planned requests."""
    from ft_assets.llm.client import CREDENTIAL_VARIABLES
    from ft_assets.synthetic import offline

    settings = llm.client_settings()
    if settings.provider is None:
        context.log.warning(
            f"synthetic_examples: no credentials ({CREDENTIAL_VARIABLES} unset): "
            "using the offline rule-based generator (provider: offline), not GPT"
        )
        try:
            answers = [("ok", text, None) if (text := offline.answer(item)) is not None else ("none", None, NO_VARIANT)
                       for item in planned]  # fmt: skip
        except offline.OfflineUnsupported as error:
            raise dg.Failure(f"synthetic_examples: {error}") from error
        return offline.PROVIDER, answers, {"requests_sent": 0, "cost_usd": 0.0, "prompt_tokens": 0}
    import asyncio

    from ft_assets.llm.calls import Budget, Prices, ResponseCache, run_requests
    from ft_assets.llm.client import async_client

    context.log.info(f"synthetic_examples: {len(planned)} generations from {settings.describe()}")
    results, report = asyncio.run(
        run_requests(
            lambda: async_client(settings),
            [item.request for item in planned],
            endpoint=settings.endpoint,
            cache=ResponseCache(llm.cache_dir),
            concurrency=config.concurrency,
            budget=Budget(config.max_requests, config.max_cost_usd),
            prices=Prices(llm.input_usd_per_1m, llm.output_usd_per_1m),
            log=context.log.info,
        )
    )
    answers = [(r.status if r.status != "cached" else "ok", r.content, r.error) for r in results]
    return str(settings.provider), answers, report.as_dict()


def _entries(
    context: dg.AssetExecutionContext, config: SyntheticConfig, folder: Path
) -> tuple[list[dict[str, str]], list[dict[str, Any]]]:
    """Return the source documents' entries and per-file report, warning about each file that gave none."""
    from ft_assets.dataset.snapshot import snapshot_files
    from ft_assets.synthetic.sources import Fields, read_entries

    fields = Fields(config.term_field, config.definition_field)
    entries, report = read_entries(snapshot_files(folder), folder / "files", fields)
    for row in report:
        if row["problem"]:
            context.log.warning(f"synthetic_examples: source file {row['file']} gave no entries: {row['problem']}")
    return entries, report


def _variants_per_source(planned: list[Any], kept: list[dict[str, Any]]) -> dict[str, int]:
    """Return, for each source that had a planned example, how many examples were generated from it."""
    counts = dict.fromkeys((item.source_id for item in planned), 0)
    for example in kept:
        counts[example["source_id"]] += 1
    return counts


@dg.asset(
    group_name="data",
    code_version=SYNTHETIC_CODE,
    kinds={"jsonl", "openai"},
    description="Synthetic chat examples: paraphrases of distinct raw examples, question/answer chats from source "
    "documents (JSON, JSONL, CSV, Markdown glossaries), or a teacher's answers (distillation), generated by GPT when "
    "Azure OpenAI / OpenAI credentials are set (cached, retried, within a budget) and by a labelled offline "
    "rule-based generator otherwise. Each example keeps its source id and group, and its generator.",
)
def synthetic_examples(
    context: dg.AssetExecutionContext,
    config: SyntheticConfig,
    raw_examples: ArtifactRef,
    source_documents: ArtifactRef,
    artifacts: ArtifactStore,
    lineage: LineageStore,
    llm: LLMResource,
) -> dg.Output[ArtifactRef]:
    """Generate synthetic examples; every planned example ends up generated or rejected with a reason."""
    from ft_assets.dataset.snapshot import snapshot_files
    from ft_assets.synthetic.generate import Settings, build_example, plan
    from ft_assets.synthetic.rows import usable_examples

    settings = Settings(
        config.mode, llm.chat_model, config.variants, config.max_sources, config.temperature, config.seed
    )
    examples, duplicates = usable_examples(snapshot_files(Path(raw_examples.path)))
    if duplicates:
        context.log.info(f"synthetic_examples: skipped {duplicates} raw rows that repeat an earlier row's messages")
    entries, sources = _entries(context, config, Path(source_documents.path))
    planned = plan(settings, examples, entries)
    provider, answers, usage = _generate(context, config, planned, llm)
    model = "rules" if provider == "offline" else llm.chat_model
    generator = {"provider": provider, "model": model}
    kept, rejected = [], []
    for item, (status, content, error) in zip(planned, answers, strict=True):
        if status != "ok":
            reason = {"budget": "budget_reached", "none": "no_distinct_variant"}.get(status, "request_failed")
            rejected.append({"id": item.example_id, "source_id": item.source_id, "reasons": [reason], "error": error})
            continue
        example, reason = build_example(item, content, generator)
        if example is None:
            rejected.append({"id": item.example_id, "source_id": item.source_id, "reasons": [reason], "raw": content})
        else:
            kept.append(example)
    if len(kept) + len(rejected) != len(planned):
        raise dg.Failure(f"synthetic_examples: {len(planned)} planned but {len(kept)} kept + {len(rejected)} rejected")
    variants = _variants_per_source(planned, kept)
    summary = {**generator, "mode": config.mode, "planned": len(planned), "generated": len(kept),
               "rejected": len(rejected), "duplicate_sources_skipped": duplicates,
               "source_files_without_entries": sum(1 for row in sources if not row["entries"])}  # fmt: skip
    details = {**summary, "variants_per_source": variants, "entries_per_source_file": sources}
    with artifacts.stage("synthetic_examples") as staging:
        (staging / "examples.jsonl").write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in kept))
        (staging / "rejected.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rejected))
        (staging / "generator.json").write_text(json.dumps(details, indent=2, sort_keys=True))
        ref = artifacts.publish(staging, "synthetic_examples")
    context.log.info(
        f"synthetic_examples: {provider}, {len(planned)} planned = {len(kept)} generated + {len(rejected)} rejected"
        f" from {len(variants)} sources"
    )
    reasons = Counter(row["reasons"][0] for row in rejected)
    spread = Counter(str(count) for count in variants.values())
    recorded = lineage.record(context, ref, [raw_examples, source_documents], config)
    figures = {
        "generated": len(kept),
        "passes_validation": _passes_validation(kept),
        "rejected": len(rejected),
        "planned": len(planned),
        "sources": len(variants),
        "provider": provider,
        "model": model,
        "mode": config.mode,
        "duplicate_sources_skipped": duplicates,
        "source_files_without_entries": summary["source_files_without_entries"],
        "dagster/row_count": len(kept),
    }
    if provider != "offline":  # the offline generator sends no request and costs nothing: no constant zeros
        figures |= {
            "requests_sent": usage.get("requests_sent", 0),
            "cache_hits": usage.get("cache_hits", 0),
            "retries": usage.get("retries", 0),
            "prompt_tokens": usage.get("prompt_tokens", 0),
            "completion_tokens": usage.get("completion_tokens", 0),
            "estimated_cost_usd": round(float(usage.get("cost_usd", 0.0)), 4),
        }
    tables = {
        "rejects_by_reason": counts_table(reasons, "reason"),
        "rejected_rows": table(
            [{**row, "reasons": ", ".join(row["reasons"]), "detail": row.get("error") or row.get("raw")}
             for row in rejected[:20]],
            {"id": "string", "source_id": "string", "reasons": "string", "detail": "string"},
        ),
        "variants_per_source": table(
            [{"variants": int(k), "sources": v} for k, v in sorted(spread.items(), key=lambda kv: int(kv[0]))],
            {"variants": "int", "sources": "int"},
        ),
        "entries_per_source_file": table(sources, {"file": "string", "entries": "int", "problem": "string"}),
        "preview": chat_preview(kept[:5]),
    }  # fmt: skip
    return dg.Output(
        ref, data_version=dg.DataVersion(ref.version), metadata=reading_order(figures, tables, recorded=recorded)
    )


def _passes_validation(examples: list[dict[str, Any]]) -> int:
    """Return how many examples cleaning's validation accepts, counting examples that repeat one another once.

    cleaned_examples' ``from_synthetic`` says how many it kept (it also drops repeats of raw rows).
    """
    from ft_assets.dataset.validate import identify

    keys = set()
    for example in examples:
        identity = identify(example)
        if identity is not None:
            keys.add(identity[1])
    return len(keys)
