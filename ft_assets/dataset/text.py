"""Text rules of cleaning: markdown debris, leaked follow-up questions, cut-off answers, token estimates.

This module is the one source of truth for these rules: the per-line reference path applies
them, and the columnar fast path only sends every text they might touch to that path.

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
# An answer of at least this many words should end like a sentence (else it may be cut off).
CUT_OFF_MIN_WORDS = 8
# How a finished sentence (or a list, code or a quotation) may end.
SENTENCE_ENDS = frozenset(".!?)]}\"'`:;>*|\u2026\u201d\u2019\u00bb\u3002\uff01\uff1f")

_FENCE = re.compile(r"^[ \t]*(?:```|~~~)[^\n`]*$\n?", re.MULTILINE)
_CLOSING_FENCE = re.compile(r"\n[ \t]*(?:```|~~~)[ \t]*\s*\Z")
_FENCED_BLOCK = re.compile(r"^[ \t]*(```|~~~)[^\n`]*\n(.*?\n?)^[ \t]*\1[ \t]*$\n?", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"`([^`\n]+)`")
_RULE = re.compile(r"^[ \t]*([-*_])(?:[ \t]*\1){2,}[ \t]*$\n?", re.MULTILINE)
_HEADING_LINE = re.compile(r"^[ \t]{0,3}#{1,6}(?:[ \t][^\n]*)?$\n?", re.MULTILINE)
_HEADING = re.compile(r"^([ \t]{0,3})#{1,6}(?:[ \t]+|$)", re.MULTILINE)
_STRONG = re.compile(r"\*\*|__|`")
_EMPHASIS = re.compile(r"(?<!\S)\*(?=\w)([^*\n]*?[\w.!?])\*(?!\w)")
_FOLLOWUP = re.compile(r"^[ \t]*(?:q|question)[ \t]*\d*[ \t]*[:.)]", re.IGNORECASE | re.MULTILINE)
_BLANK_RUNS = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)+")
_WORD = re.compile(r"[^ \t\n]+")


def estimate_tokens(characters: int, messages: int) -> int:
    """Return the estimated tokens of ``messages`` messages holding ``characters`` characters."""
    return -(-characters // CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE * messages + TOKENS_PER_REPLY


def has_markdown(text: str) -> bool:
    """Return whether ``text`` holds markdown debris that ``strip_markdown`` removes."""
    return bool(_FENCE.search(text) or _RULE.search(text) or _HEADING.search(text) or _STRONG.search(text)) or bool(
        _EMPHASIS.search(text)
    )


def strip_markdown(text: str) -> str:
    """Remove fences, horizontal rules, headings, bold/underline marks, code-span marks and *emphasis*.

    Code is kept as written: a fenced block loses its fence lines only, a code span its
    backticks only. A heading line goes with its words when other text follows (a title the
    generator added), else only its marks. Prose is stripped until nothing is left to remove.
    """
    parts, position = [], 0
    for block in _FENCED_BLOCK.finditer(text):
        parts += [_strip_prose(text[position : block.start()]), block.group(2)]
        position = block.end()
    parts.append(_strip_prose(text[position:]))
    return _BLANK_RUNS.sub("\n\n", "".join(parts)).strip()


def _strip_prose(text: str) -> str:
    """Strip markdown debris from text outside fenced blocks, keeping code spans' contents as written."""
    pieces = _CODE_SPAN.split(text)  # prose, code, prose, code, ...
    for index in range(0, len(pieces), 2):
        piece = pieces[index]
        for _ in range(8):
            stripped = _FENCE.sub("", piece)
            stripped = _RULE.sub("", stripped)
            without_headings = _HEADING_LINE.sub("", stripped)
            stripped = without_headings if without_headings.strip() else _HEADING.sub(r"\1", stripped)
            stripped = _STRONG.sub("", stripped)
            stripped = _EMPHASIS.sub(r"\1", stripped)
            if stripped == piece:
                break
            piece = stripped
        pieces[index] = piece
    return "".join(pieces)


def cut_followup(text: str) -> tuple[str, bool]:
    """Cut a leaked follow-up question (a later line starting ``Q:``/``Question:``) and what follows it.

    A horizontal rule just before it goes too. Returns (text, whether one was found).
    """
    for match in _FOLLOWUP.finditer(text):
        if match.start() == 0:
            continue
        head = text[: match.start()].rstrip()
        head = _RULE.sub("", head + "\n").rstrip()
        return head, True
    return text, False


def word_count(text: str) -> int:
    """Return the number of words, separated by ASCII spaces, tabs and newlines."""
    return len(_WORD.findall(text))


def looks_cut_off(answer: str, written: str) -> bool:
    """Return whether a free-text answer (``CUT_OFF_MIN_WORDS`` or more) stops mid-sentence.

    ``answer`` is the cleaned answer, ``written`` the answer as written: one that ends with a
    fenced code block ends in code, not mid-sentence, even once its fence is stripped.
    """
    if _CLOSING_FENCE.search(written):
        return False
    return bool(answer) and answer[-1] not in SENTENCE_ENDS and word_count(answer) >= CUT_OFF_MIN_WORDS
