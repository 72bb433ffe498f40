"""What local training and evaluation take from a split row, and what they refuse. No dagster import here.

A split row is a chat row ``{"messages": [...]}`` or a preference (DPO) row ``{"input": {"messages":
[...]}, "preferred_output": [msg], "non_preferred_output": [msg]}``; either may carry a top-level
``id`` (an example id: ignored here). The data step accepts what OpenAI fine-tuning accepts; the
local trainer uses it like this, never silently:

- ``weight`` on an assistant turn: kept. A weight-0 turn stays in the context but gets no loss
  (``tokenize_chat`` zeroes its assistant mask); weight 1 or no weight is trained.
- ``name`` on a system or user turn: folded into the turn's text as ``"{name}: {content}"``, the
  same way in training and evaluation. On an assistant turn: refused (``assistant_name``), since
  the name would become part of the answer the model learns.
- tool calling (``tool_calls``, ``function_call`` or ``tool_call_id`` on a message, a ``tool`` or
  ``function`` message, a row-level ``tools`` or ``parallel_tool_calls``): refused
  (``tool_calling``); the built-in model cannot call tools. Training fails and names how many
  rows, which ones and why: remove them, or fine-tune on Azure OpenAI, which trains them.
- a preference row: trained as a chat example, its ``input`` messages followed by its
  ``preferred_output``; the non-preferred answer is not used (SFT has no negative examples).
  Counted as ``preference_rows_as_chat`` in the training summary.
- a row whose assistant turns all have weight 0 carries no loss: skipped, counted as
  ``rows_without_trained_turn``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

TOOL_MESSAGE_KEYS = ("tool_calls", "function_call", "tool_call_id")
TOOL_ROLES = ("tool", "function")
TOOL_ROW_KEYS = ("tools", "parallel_tool_calls")
REFUSALS: dict[str, str] = {
    "tool_calling": "use tool calling (tool_calls/function_call, tool or function messages, or row-level "
    "tools/parallel_tool_calls), which the local model cannot learn",
    "assistant_name": "give an assistant turn a 'name', which would become part of the answer the model learns",
    "no_messages": "hold no chat messages",
}
SHOWN_ROWS = 5
Message = dict[str, Any]


class UnusableRow(ValueError):
    """A row local training cannot use; ``reason`` is a key of ``REFUSALS``."""

    def __init__(self, reason: str) -> None:
        super().__init__(REFUSALS[reason])
        self.reason = reason


def is_preference(row: dict[str, Any]) -> bool:
    """Say whether a row is a preference (DPO) row rather than a chat row (the data step's rule)."""
    return "input" in row or "preferred_output" in row


def row_messages(row: dict[str, Any]) -> list[Message]:
    """Return a row's conversation as local models see it: role, content and, on assistant turns, weight.

    Chat rows give their messages; preference rows their input messages then the preferred answer.
    The top-level ``id`` and a ``name`` on system/user turns are handled as the module says; a row
    the local model cannot use raises ``UnusableRow``.
    """
    if is_preference(row):
        source = [*(row.get("input") or {}).get("messages", []), *(row.get("preferred_output") or [])[:1]]
    else:
        source = row.get("messages") or []
    if any(key in row for key in TOOL_ROW_KEYS):
        raise UnusableRow("tool_calling")
    if not source:
        raise UnusableRow("no_messages")
    messages = []
    for message in source:
        if message.get("role") in TOOL_ROLES or any(message.get(key) is not None for key in TOOL_MESSAGE_KEYS):
            raise UnusableRow("tool_calling")
        role, content, name = message["role"], message["content"], message.get("name")
        if role == "assistant":
            if name is not None:
                raise UnusableRow("assistant_name")
            weight = message.get("weight")
            messages.append({"role": role, "content": content, "weight": 1 if weight is None else weight})
        else:
            messages.append({"role": role, "content": f"{name}: {content}" if name else content})
    return messages


@dataclass
class ChatExamples:
    """The conversations a split gives the local trainer, and what was done with its other rows."""

    conversations: list[list[Message]] = field(default_factory=list)
    rows: int = 0
    preference_rows_as_chat: int = 0
    rows_without_trained_turn: int = 0
    weight_zero_turns: int = 0
    refused: dict[str, list[int]] = field(default_factory=dict)
    refused_ids: dict[int, str] = field(default_factory=dict)  # row number -> example id, for refused rows with one

    def summary(self) -> dict[str, Any]:
        """Return the counts for the training summary and the asset's metadata."""
        return {
            "rows": self.rows,
            "trained_examples": len(self.conversations),
            "preference_rows_as_chat": self.preference_rows_as_chat,
            "rows_without_trained_turn": self.rows_without_trained_turn,
            "weight_zero_turns": self.weight_zero_turns,
            "refused_rows": sum(len(numbers) for numbers in self.refused.values()),
        }

    def refusal(self, source: str) -> str | None:
        """Return why rows of ``source`` are refused (how many, which, why, what to do), or None."""
        if not self.refused:
            return None
        total = sum(len(numbers) for numbers in self.refused.values())
        parts = []
        for reason, numbers in sorted(self.refused.items()):
            rows = [
                f"{n} (id {self.refused_ids[n]})" if n in self.refused_ids else str(n) for n in numbers[:SHOWN_ROWS]
            ]
            more = ", ..." if len(numbers) > SHOWN_ROWS else ""
            parts.append(f"{len(numbers)} {REFUSALS[reason]} (rows {', '.join(rows)}{more})")
        where = " (ft-assets lineage example ID gives the file and line each came from)" if self.refused_ids else ""
        return (
            f"{total} of {self.rows} rows of {source} cannot be trained by the local LoRA trainer: "
            + "; ".join(parts)
            + f". Remove them from the data{where}, or fine-tune them on Azure OpenAI (the azure assets), which "
            "trains them."
        )


def chat_examples(rows: Sequence[dict[str, Any]]) -> ChatExamples:
    """Sort a split's rows into the conversations to train on, counted skips and refusals (row numbers from 1)."""
    examples = ChatExamples(rows=len(rows))
    for number, row in enumerate(rows, start=1):
        try:
            messages = row_messages(row)
        except UnusableRow as unusable:
            examples.refused.setdefault(unusable.reason, []).append(number)
            if row.get("id") is not None:
                examples.refused_ids[number] = str(row["id"])
            continue
        weights = [m["weight"] for m in messages if m["role"] == "assistant"]
        examples.weight_zero_turns += weights.count(0)
        if 1 not in weights:
            examples.rows_without_trained_turn += 1
            continue
        examples.preference_rows_as_chat += is_preference(row)
        examples.conversations.append(messages)
    return examples


def tokenize_chat(tokenizer: Any, messages: Sequence[Message], chat_template: str | None = None) -> dict[str, list]:
    """Tokenize one conversation with the chat template: ``input_ids`` and ``assistant_masks``.

    The mask is 1 on the tokens the template marks with ``{% generation %}`` (the assistant turns),
    except those of weight-0 turns. Each assistant turn must be one marked span, so that tokens can
    be told apart by turn; a template that marks them otherwise is refused with ``ValueError``.
    """
    plain = [{"role": m["role"], "content": m["content"]} for m in messages]
    encoded = tokenizer.apply_chat_template(
        plain, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, chat_template=chat_template
    )
    ids, mask = list(encoded["input_ids"]), list(encoded["assistant_masks"])
    weights = [m.get("weight", 1) for m in messages if m["role"] == "assistant"]
    spans = marked_spans(mask)
    if len(spans) != len(weights):
        raise ValueError(
            f"the chat template marks {len(spans)} assistant spans with {{% generation %}} for {len(weights)} "
            "assistant turns, so tokens cannot be attributed to turns (weights, assistant-only loss); give every "
            "assistant turn its own {% generation %} block"
        )
    for (start, end), weight in zip(spans, weights, strict=True):
        if weight == 0:
            mask[start:end] = [0] * (end - start)
    return {"input_ids": ids, "assistant_masks": mask}


def marked_spans(mask: Sequence[int]) -> list[tuple[int, int]]:
    """Return the [start, end) runs of 1s in a token mask."""
    spans, start = [], None
    for position, bit in enumerate([*mask, 0]):
        if bit and start is None:
            start = position
        elif not bit and start is not None:
            spans.append((start, position))
            start = None
    return spans
