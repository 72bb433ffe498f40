import pytest

from ft_assets.dataset.formats import check_chat, check_preference, detect_format

SYSTEM = {"role": "system", "content": "s"}
USER = {"role": "user", "content": "u"}
ASSISTANT = {"role": "assistant", "content": "a"}


def test_valid_chat_has_no_errors():
    assert check_chat({"messages": [SYSTEM, USER, ASSISTANT, USER, ASSISTANT]}) == set()


@pytest.mark.parametrize(
    ("messages", "reason"),
    [
        (None, "missing_messages_list"),
        ([], "missing_messages_list"),
        ("hello", "missing_messages_list"),
        ([USER, {"role": "assistant"}], "message_missing_key"),
        ([USER, {"content": "a"}], "message_missing_key"),
        ([USER, {**ASSISTANT, "mood": "happy"}], "message_unrecognized_key"),
        ([USER, {"role": "robot", "content": "a"}], "unrecognized_role"),
        ([USER, {"role": ["assistant"], "content": "a"}], "unrecognized_role"),
        ([USER, {"role": "assistant", "content": 42}], "missing_content"),
        ([USER, {"role": "assistant", "content": None}], "missing_content"),
        ([USER, {"role": "assistant", "content": [{"type": "text"}]}], "missing_content"),
        ([USER, {"role": "assistant", "content": [{"type": "image_url", "image_url": {}}]}], "non_text_content"),
        ([USER, {"role": "assistant", "content": " \n\t"}], "empty_content"),
        ([USER, {"role": "assistant", "content": ""}], "empty_content"),
        ([SYSTEM, USER], "example_missing_assistant_message"),
        ([USER, SYSTEM, ASSISTANT], "system_not_first"),
        ([SYSTEM, ASSISTANT, USER, ASSISTANT], "assistant_before_user"),
        ([USER, USER, ASSISTANT], "consecutive_user"),
        ([USER, {**ASSISTANT, "weight": 2}], "invalid_weight"),
        ([USER, 7, ASSISTANT], "message_not_object"),
    ],
)
def test_chat_errors(messages, reason):
    assert reason in check_chat({"messages": messages})


def test_tool_call_without_content_is_valid():
    call = {"role": "assistant", "tool_calls": [{"id": "1", "type": "function"}], "content": None}
    assert (
        check_chat({"messages": [USER, call, {"role": "tool", "content": "42", "tool_call_id": "1"}, ASSISTANT]})
        == set()
    )


def test_weight_zero_and_one_are_valid():
    assert check_chat({"messages": [USER, {**ASSISTANT, "weight": 0}, USER, {**ASSISTANT, "weight": 1}]}) == set()


def _preference(**overrides):
    row = {
        "input": {"messages": [SYSTEM, USER]},
        "preferred_output": [{"role": "assistant", "content": "good"}],
        "non_preferred_output": [{"role": "assistant", "content": "bad"}],
    }
    row.update(overrides)
    return row


def test_valid_preference_row():
    assert check_preference(_preference()) == set()
    assert detect_format(_preference()) == "preference"
    assert detect_format({"messages": []}) == "chat"
    assert detect_format([1]) is None


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"input": {}}, "missing_input_messages"),
        ({"input": {"messages": [USER, ASSISTANT]}}, "input_ends_with_assistant"),
        ({"preferred_output": []}, "missing_preferred_output"),
        ({"preferred_output": [{"role": "user", "content": "x"}]}, "missing_preferred_output"),
        ({"non_preferred_output": "bad"}, "missing_non_preferred_output"),
        ({"non_preferred_output": [{"role": "assistant", "content": "good"}]}, "identical_outputs"),
        ({"preferred_output": [{"role": "assistant", "content": "  "}]}, "empty_content"),
    ],
)
def test_preference_errors(overrides, reason):
    assert reason in check_preference(_preference(**overrides))
