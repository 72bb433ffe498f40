"""The offline generator: deterministic, rule-based answers to the same planned requests. No model, no network.

It is labelled ``provider: offline`` everywhere and never pretends to be GPT. Paraphrases swap
a few common phrasings, reverse the order of list items and re-case header lines; document
questions are templates over the entry; distillation needs a teacher and is not offered.
"""

from __future__ import annotations

import json
import random
import re

from ft_assets.synthetic.generate import Planned

PROVIDER = "offline"
SYNONYMS = (
    ("Total due", "Amount payable"),
    ("Invoice no.", "Invoice number"),
    ("Items:", "Line items:"),
    ("Terms:", "Payment terms:"),
    ("Bill to", "Billed to"),
    ("Issued", "Dated"),
)
QUESTIONS = ("What is {term}?", "What does {term} cover?", "Can you describe {term}?", "Tell me about {term}.")
_ITEM = re.compile(r"^\s*[-*] ")


class OfflineUnsupported(ValueError):
    """The offline generator cannot do this mode; the message says what to configure instead."""


def paraphrase(text: str, variant: int, seed: int) -> str:
    """Return a deterministic rewording of ``text`` that keeps its names and numbers."""
    rng = random.Random(f"{seed}:{variant}:{text}")
    for before, after in SYNONYMS:
        if rng.random() < 0.8:
            text = text.replace(before, after)
    lines = text.split("\n")
    items = [i for i, line in enumerate(lines) if _ITEM.match(line)]
    for i, j in zip(items, reversed(items), strict=True):
        if i < j:
            lines[i], lines[j] = lines[j], lines[i]
    if lines and lines[0].isupper():
        lines[0] = lines[0].title()
    elif lines and rng.random() < 0.5:
        lines[0] = lines[0].upper()
    return "\n".join(lines)


def answer(item: Planned) -> str:
    """Return the JSON answer the offline generator gives to a planned request."""
    user = item.request.messages[-1][1]
    if item.mode == "paraphrase":
        original = item.original or user
        return json.dumps({"text": paraphrase(original, item.variant, item.request.seed or 0)})
    if item.mode == "documents":
        term = re.search(r"^Term: (.*)$", user, re.MULTILINE)
        definition = re.search(r"^Definition: (.*)$", user, re.MULTILINE)
        name = term.group(1) if term else "this entry"
        question = QUESTIONS[item.variant % len(QUESTIONS)].format(term=name)
        return json.dumps({"question": question, "answer": definition.group(1) if definition else ""})
    raise OfflineUnsupported(
        "distillation needs a teacher model: set Azure OpenAI / OpenAI credentials, or use mode paraphrase or documents"
    )
