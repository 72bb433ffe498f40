"""Synthetic chat examples: which requests to make, and how answers become examples. No dagster import here.

Three modes: ``paraphrase`` rewrites the user turn of raw examples and keeps their answer;
``documents`` turns term/definition entries of the source documents into question/answer
chats; ``distill`` lets a teacher model answer the prompts of raw examples. Every request asks
for JSON of a fixed schema; an answer that is not that JSON, or is empty or unchanged, becomes a
rejection with a reason. Each example records its source (so splits keep it in the source's
group) and its generator (provider, model, prompt hash, temperature, seed).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ft_assets.llm.calls import ChatRequest

Mode = Literal["paraphrase", "documents", "distill"]

PROMPTS: dict[str, str] = {
    "paraphrase": (
        "You rewrite training examples. Rewrite the message you are given so that it says the same thing with "
        "different wording and layout. Keep every name, number, date and amount exactly. Reply with JSON: "
        '{"text": "<the rewritten message>"}.'
    ),
    "documents": (
        "You write training data from reference documents. Given one entry (a term and its definition), write "
        "one question a user could ask about it and the answer, using only the entry. Reply with JSON: "
        '{"question": "...", "answer": "..."}.'
    ),
    "distill": (
        "Answer the conversation's last user message as the assistant would. Reply with JSON: "
        '{"answer": "<the assistant reply>"}.'
    ),
}
FIELDS: dict[str, tuple[str, ...]] = {
    "paraphrase": ("text",),
    "documents": ("question", "answer"),
    "distill": ("answer",),
}


def response_format(mode: str) -> str:
    """Return the JSON-schema response format of ``mode`` as canonical JSON."""
    properties = {name: {"type": "string"} for name in FIELDS[mode]}
    schema = {"type": "object", "properties": properties, "required": list(FIELDS[mode]), "additionalProperties": False}
    return json.dumps(
        {"type": "json_schema", "json_schema": {"name": f"synthetic_{mode}", "strict": True, "schema": schema}},
        sort_keys=True,
    )


def prompt_hash(mode: str) -> str:
    """Return a short hash of the instructions of ``mode`` (recorded with every example)."""
    return hashlib.sha256((PROMPTS[mode] + response_format(mode)).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Settings:
    """What to generate and with which model."""

    mode: Mode = "paraphrase"
    model: str = "gpt-4o-mini"
    variants: int = 1
    max_sources: int | None = 40
    temperature: float = 0.7
    seed: int = 0


@dataclass(frozen=True)
class Planned:
    """One example to generate: its request, and what the answer is combined with."""

    example_id: str
    source_id: str
    group: str
    variant: int
    mode: str
    request: ChatRequest
    system: str | None
    kept_answer: str | None = None
    original: str | None = None
    prior: tuple[tuple[str, str], ...] = ()
    entry: tuple[str, str] | None = None


def _example_id(*parts: object) -> str:
    return "syn-" + hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def _system_of(messages: Sequence[dict[str, Any]]) -> str | None:
    return messages[0]["content"] if messages and messages[0].get("role") == "system" else None


def plan(settings: Settings, examples: Sequence[dict[str, Any]], entries: Sequence[dict[str, str]]) -> list[Planned]:
    """Return the examples to generate for ``settings`` (deterministic)."""
    mode = settings.mode
    fmt = response_format(mode)
    planned = []
    sources: Sequence[Any] = entries if mode == "documents" else examples
    task_system = _system_of(examples[0]["messages"]) if examples else None
    for source in list(sources)[: settings.max_sources]:
        for variant in range(settings.variants):
            seed = settings.seed + variant
            if mode == "documents":
                source_id = f"{source['document']}#{source['term']}"
                group = f"doc:{source['document']}:{source['term']}"
                ask = f"Term: {source['term']}\nDefinition: {source['definition']}\n(question {variant + 1})"
                messages = (("system", PROMPTS[mode]), ("user", ask))
                system, kept, original, prior = task_system, None, None, ()
                entry = (source["term"], source["definition"])
            else:
                source_id, group = source["source_id"], source["group"]
                conversation = source["messages"]
                system = _system_of(conversation)
                if mode == "paraphrase":
                    if len(conversation) < 2 or conversation[-2]["role"] != "user":
                        continue
                    user = conversation[-2]["content"]
                    messages = (("system", PROMPTS[mode]), ("user", f"{user}\n\n(rewrite {variant + 1})"))
                    kept, original = conversation[-1]["content"], user
                    prior = tuple((m["role"], m["content"]) for m in conversation[:-2] if m["role"] != "system")
                else:
                    shown = [(m["role"], m["content"]) for m in conversation[:-1] if m["role"] != "system"]
                    messages = (("system", PROMPTS[mode] + ("\n\n" + system if system else "")), *shown)
                    kept, original, prior = None, None, ()
                entry = None
            request = ChatRequest(settings.model, messages, settings.temperature, seed, fmt)
            planned.append(
                Planned(
                    _example_id(mode, source_id, variant, request.body()), source_id, group, variant, mode, request,
                    system, kept, original, prior, entry,
                )
            )  # fmt: skip
    return planned


def build_example(item: Planned, content: str | None, generator: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """Return (example, "") from a model answer, or (None, reason) when the answer cannot be used."""
    if content is None:
        return None, "empty_response"
    try:
        data = json.loads(content)
    except json.JSONDecodeError:
        return None, "invalid_json"
    if not isinstance(data, dict) or any(not isinstance(data.get(f), str) for f in FIELDS[item.mode]):
        return None, "schema_mismatch"
    if any(not data[f].strip() for f in FIELDS[item.mode]):
        return None, "empty_field"
    if item.mode == "paraphrase":
        if data["text"].strip() == (item.original or "").strip():
            return None, "unchanged"
        turns = [*item.prior, ("user", data["text"].strip()), ("assistant", item.kept_answer or "")]
    elif item.mode == "documents":
        turns = [("user", data["question"].strip()), ("assistant", data["answer"].strip())]
    else:
        shown = [(r, c) for r, c in item.request.messages[1:]]
        turns = [*shown, ("assistant", data["answer"].strip())]
    messages = ([{"role": "system", "content": item.system}] if item.system else []) + [
        {"role": role, "content": text} for role, text in turns
    ]
    example = {
        "id": item.example_id,
        "group": item.group,
        "source_id": item.source_id,
        "messages": messages,
        "generator": {**generator, "mode": item.mode, "variant": item.variant, "seed": item.request.seed,
                      "temperature": item.request.temperature, "prompt_hash": prompt_hash(item.mode)},
    }  # fmt: skip
    return example, ""
