"""Chat and preference (DPO) example schemas: the rules a row must pass to be trainable.

Pure Python, no dagster. Rejection reasons follow the OpenAI cookbook's format-error names
(``data_type``, ``missing_messages_list``, ``message_missing_key``, ``message_unrecognized_key``,
``unrecognized_role``, ``missing_content``, ``example_missing_assistant_message``) and add the
message-order rules of torchtune-style chat datasets.
"""

from __future__ import annotations

from typing import Any, Literal

Format = Literal["chat", "preference"]

ROLES = frozenset({"system", "user", "assistant", "tool", "function"})
MESSAGE_KEYS = frozenset({"role", "content", "name", "function_call", "tool_calls", "tool_call_id", "weight"})
CHAT_PASSTHROUGH_KEYS = ("tools", "parallel_tool_calls")
# Top-level keys that label a row: kept in the index (and ``id`` in the split files), not validated as content.
LABEL_KEYS = frozenset({"id", "group", "source_id", "split"})
# Top-level keys that record where a row came from (synthetic_examples writes them): not part of the
# training format, so not in the split files, but not a flaw of the data either (no fix is counted).
PROVENANCE_KEYS = frozenset({"generator"})

REASONS: dict[str, str] = {
    "blank_line": "the line is empty or whitespace",
    "invalid_utf8": "the line is not valid UTF-8",
    "invalid_json": "the line is not one JSON value",
    "data_type": "the row is not a JSON object",
    "format_mismatch": "the row is in another format than the dataset",
    "missing_messages_list": "no 'messages' list",
    "message_not_object": "a message is not a JSON object",
    "message_missing_key": "a message lacks 'role' or 'content'",
    "message_unrecognized_key": "a message has a key the API does not accept",
    "unrecognized_role": "a role other than system, user, assistant, tool, function",
    "missing_content": "a message's content is missing or not a string",
    "non_text_content": "a message's content has parts other than text (images, audio, files)",
    "empty_content": "a message's content is empty or whitespace",
    "invalid_weight": "a message's weight is not 0 or 1",
    "system_not_first": "a system message after the first position",
    "assistant_before_user": "an assistant turn before the first user turn",
    "consecutive_user": "two user turns in a row",
    "example_missing_assistant_message": "no assistant message to learn from",
    "missing_input_messages": "preference row without 'input': {'messages': [...]}",
    "input_ends_with_assistant": "preference input must end with a user turn",
    "missing_preferred_output": "no 'preferred_output' assistant message",
    "missing_non_preferred_output": "no 'non_preferred_output' assistant message",
    "identical_outputs": "preferred and non-preferred outputs are the same",
    "invalid_id": "'id' is not a non-empty string or an integer",
    "invalid_group": "'group' is not a non-empty string or an integer",
    "invalid_split": "'split' is not train, validation (valid, val, dev) or test, in any case",
    "leaked_followup": "the answer goes on with a new question (suspicious: reject)",
    "cut_off_answer": "a free-text answer stops mid-sentence (suspicious: reject)",
    "too_many_tokens": "more tokens than the configured limit",
    "exact_duplicate": "the same example appears earlier",
    "normalized_duplicate": "an example equal up to case, whitespace and markdown appears earlier",
}


def detect_format(row: Any) -> Format | None:
    """Return the format a row is written in, judged by its top-level keys."""
    if not isinstance(row, dict):
        return None
    if "input" in row or "preferred_output" in row:
        return "preference"
    return "chat"


def joined_text_parts(content: Any) -> str | None:
    """Return content written as OpenAI text parts (``[{"type": "text", "text": ...}, ...]``) as one string.

    The parts are joined by a newline. None when ``content`` is anything else, including parts of
    another type (an image, audio, a file), which training here cannot use.
    """
    if type(content) is not list or not content:
        return None
    texts = []
    for part in content:
        if type(part) is not dict or part.get("type") != "text" or type(part.get("text")) is not str:
            return None
        if len(part) != 2:
            return None
        texts.append(part["text"])
    return "\n".join(texts)


def join_content_parts(messages: Any) -> tuple[Any, bool]:
    """Return a message list with text-part contents joined into strings, and whether any were."""
    if type(messages) is not list:
        return messages, False
    joined = False
    out = []
    for message in messages:
        text = joined_text_parts(message.get("content")) if type(message) is dict else None
        if text is None:
            out.append(message)
        else:
            out.append({**message, "content": text})
            joined = True
    return out, joined


def check_message(message: Any, errors: set[str]) -> None:
    """Add the reasons why one message is malformed to ``errors``."""
    if not isinstance(message, dict):
        errors.add("message_not_object")
        return
    has_call = bool(message.get("function_call") or message.get("tool_calls"))
    if "role" not in message or ("content" not in message and not has_call):
        errors.add("message_missing_key")
    if any(key not in MESSAGE_KEYS for key in message):
        errors.add("message_unrecognized_key")
    role = message.get("role")
    if not isinstance(role, str) or role not in ROLES:
        errors.add("unrecognized_role")
    content = message.get("content")
    if isinstance(content, str):
        if not content.strip():
            errors.add("empty_content")
    elif type(content) is list and any(type(p) is dict and p.get("type") != "text" for p in content):
        errors.add("non_text_content")  # well-formed text-only parts were joined before the check
    elif not has_call:
        errors.add("missing_content")
    weight = message.get("weight")
    if weight is not None and (type(weight) is not int or weight not in (0, 1)):
        errors.add("invalid_weight")


def check_messages(messages: list[Any], errors: set[str]) -> bool:
    """Add format and order violations of a message list to ``errors``; say if it has an assistant turn.

    Order rules: a system message only first, no assistant turn before the first user turn,
    never two user turns in a row. Plain ``{"role", "content"}`` messages take a fast path.
    """
    seen_user = False
    has_assistant = False
    previous = None
    for position, message in enumerate(messages):
        if type(message) is dict:
            role = message.get("role")
            content = message.get("content")
            if len(message) == 2 and type(role) is str and type(content) is str and role in ROLES:
                if not content or content.isspace():
                    errors.add("empty_content")
            else:
                check_message(message, errors)
        else:
            role = None
            check_message(message, errors)
        if role == "user":
            if previous == "user":
                errors.add("consecutive_user")
            seen_user = True
        elif role == "assistant":
            has_assistant = True
            if not seen_user:
                errors.add("assistant_before_user")
        elif role == "system" and position:
            errors.add("system_not_first")
        previous = role
    return has_assistant


def check_chat(row: dict[str, Any]) -> set[str]:
    """Return every reason a chat-format row cannot be trained on (empty when it is valid)."""
    errors: set[str] = set()
    messages = row.get("messages")
    if type(messages) is not list or not messages:
        errors.add("missing_messages_list")
    elif not check_messages(messages, errors):
        errors.add("example_missing_assistant_message")
    return errors


def _check_output(output: Any, missing: str, errors: set[str]) -> None:
    if not isinstance(output, list) or len(output) != 1:
        errors.add(missing)
        return
    message = output[0]
    check_message(message, errors)
    if isinstance(message, dict) and message.get("role") != "assistant":
        errors.add(missing)


def check_preference(row: dict[str, Any]) -> set[str]:
    """Return every reason a preference (DPO) row cannot be trained on."""
    errors: set[str] = set()
    source = row.get("input")
    messages = source.get("messages") if isinstance(source, dict) else None
    if not isinstance(messages, list) or not messages:
        errors.add("missing_input_messages")
    else:
        check_messages(messages, errors)
        last = messages[-1]
        if isinstance(last, dict) and last.get("role") == "assistant":
            errors.add("input_ends_with_assistant")
    preferred = row.get("preferred_output")
    rejected = row.get("non_preferred_output")
    _check_output(preferred, "missing_preferred_output", errors)
    _check_output(rejected, "missing_non_preferred_output", errors)
    if not errors and preferred == rejected:
        errors.add("identical_outputs")
    return errors


def label_of(value: Any) -> str | None:
    """Return an id/group value as a string, or None when it is not a usable label."""
    if isinstance(value, str) and value.strip():
        return value
    if type(value) is int:
        return str(value)
    return None
