"""Text helpers for cleaning: markdown stripping, duplicate keys, token estimates.

Token counts are estimates, since no tokenizer can be downloaded offline: a quarter of the
characters of each message (the usual rule of thumb for English BPE tokenizers) plus the
cookbook's chat overhead of 3 tokens per message and 3 per reply. They serve limits,
statistics and cost estimates; training (a later step) counts real tokens.
"""

from __future__ import annotations

import re

TOKENS_PER_MESSAGE = 3
TOKENS_PER_REPLY = 3
CHARS_PER_TOKEN = 4

# Bytes dropped from lower-cased canonical JSON to make the duplicate key (with the JSON escapes
# of newline, tab and CR): whitespace is dropped, not collapsed, so "a b" and "ab" share a key.
NORMALIZED_AWAY = b"*_`#>~ \t\n\r\x0b\x0c"
_CODE_FENCE = re.compile(r"^\s*```[\w-]*\s*$", re.MULTILINE)
_EMPHASIS = re.compile(r"(\*\*|__|`)")
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+", re.MULTILINE)


def estimate_tokens(characters: int, messages: int) -> int:
    """Return the estimated tokens of ``messages`` messages holding ``characters`` characters."""
    return -(-characters // CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE * messages + TOKENS_PER_REPLY


def has_markdown(text: bytes | str) -> bool:
    """Return whether ``text`` may hold markdown marks that ``strip_markdown`` removes."""
    if isinstance(text, str):
        return "**" in text or "__" in text or "`" in text or "#" in text
    return b"**" in text or b"__" in text or b"`" in text or b"#" in text


def strip_markdown(text: str) -> str:
    """Remove code fences, headings, bold/underline marks and code spans; keep the words."""
    text = _CODE_FENCE.sub("", text)
    text = _HEADING.sub("", text)
    return _EMPHASIS.sub("", text).strip()
