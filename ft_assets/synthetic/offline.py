"""The offline generator: deterministic, rule-based answers to the same planned requests. No model, no network.

It is labelled ``provider: offline`` everywhere and never pretends to be GPT. A paraphrase swaps
common phrasings (either way; lower-case table entries match a capitalized word too), or frames
the text with a short lead-in or close; variant n of a text is its n-th rewording, and every
rewording differs from the text and from the others in words (not only in case, spacing,
punctuation or markdown), so cleaning keeps it. A text has at least ``len(FRAMES)`` rewordings;
past them there is no answer. Document questions are templates over the entry, answered by its
definition as a sentence; distillation needs a teacher and is not offered.
"""

from __future__ import annotations

import itertools
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
    ("please", "kindly"),
    ("could you", "can you"),
    ("help me", "assist me"),
    ("I want", "I would like"),
    ("I need", "I require"),
    ("tell me", "let me know"),
    ("do not", "don't"),
    ("cannot", "can't"),
    ("is not", "isn't"),
    ("it is", "it's"),
    ("what is", "what's"),
)
FRAMES = (
    "Here is the message:\n{text}",
    "Please take a look at the following.\n{text}",
    "Input below.\n{text}",
    "{text}\n\nThat is the full message.",
    "The text reads:\n{text}",
    "{text}\n\nEnd of text.",
)
QUESTIONS = ("What is {term}?", "What does {term} cover?", "Can you describe {term}?", "Tell me about {term}.")
MAX_SWAPS = 6  # swaps combined at most (their subsets are candidate rewordings)


class OfflineUnsupported(ValueError):
    """The offline generator cannot do this mode; the message says what to configure instead."""


def _pattern(phrase: str) -> re.Pattern[str]:
    first = f"[{phrase[0]}{phrase[0].upper()}]" if phrase[0].islower() else re.escape(phrase[0])
    return re.compile(rf"(?<!\w){first}{re.escape(phrase[1:])}(?!\w)")


def _swap(text: str, before: str, after: str) -> str:
    def replace(match: re.Match[str]) -> str:
        return (after[0].upper() if match.group()[0].isupper() else after[0]) + after[1:]

    return _pattern(before).sub(replace, text)


def words(text: str) -> str:
    """Return the key two texts share when they differ only in case, spacing, punctuation or markdown."""
    return re.sub(r"[\W_]+", "", text.lower())


def _apply(text: str, swaps: tuple[tuple[str, str], ...]) -> str:
    for before, after in swaps:
        text = _swap(text, before, after)
    return text


def rewordings(text: str, seed: int) -> list[str]:
    """Return the distinct rewordings of ``text``, phrasing swaps first, in an order fixed by ``seed``."""
    found = []
    for before, after in SYNONYMS:  # a phrase already in its second form is swapped back
        if _pattern(after).search(text):
            found.append((after, before))
        elif _pattern(before).search(text):
            found.append((before, after))
    swaps = tuple(found[:MAX_SWAPS])
    subsets = [c for size in range(1, len(swaps) + 1) for c in itertools.combinations(swaps, size)]
    frames = list(FRAMES)
    rng = random.Random(f"{seed}:{text}")
    rng.shuffle(subsets)
    rng.shuffle(frames)
    swapped = _apply(text, swaps)
    candidates = [_apply(text, s) for s in subsets] + [f.format(text=t) for f in frames for t in (text, swapped)]
    seen, chosen = {words(text)}, []
    for candidate in candidates:
        if words(candidate) not in seen:
            seen.add(words(candidate))
            chosen.append(candidate)
    return chosen


def answer(item: Planned) -> str | None:
    """Return the JSON answer the offline generator gives to a planned request, or None when it has none."""
    if item.mode == "paraphrase":
        choices = rewordings(item.original or "", (item.request.seed or 0) - item.variant)
        return json.dumps({"text": choices[item.variant]}) if item.variant < len(choices) else None
    if item.mode == "documents" and item.entry is not None:
        if item.variant >= len(QUESTIONS):
            return None
        term, definition = item.entry
        ending = "" if definition.endswith((".", "!", "?")) else "."  # a whole answer, not a cut-off one
        return json.dumps({"question": QUESTIONS[item.variant].format(term=term), "answer": definition + ending})
    raise OfflineUnsupported(
        "distillation needs a teacher model: set Azure OpenAI / OpenAI credentials, or use mode paraphrase or documents"
    )
