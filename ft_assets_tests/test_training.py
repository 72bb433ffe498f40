"""The training core on a tiny model: tokenizer and base model, LoRA training, merging, evaluation runners."""

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from ft_assets.artifacts import ArtifactRef
from ft_assets.evaluation.runners import eval_cases, few_shot_examples, load_model, run_local, with_shots
from ft_assets.training.assets import model_card
from ft_assets.training.base_model import (
    BaseModelError,
    TinyModelSpec,
    build_tiny_model,
    model_location,
    reference_pretrained,
)
from ft_assets.training.chat_rows import chat_examples, row_messages
from ft_assets.training.lora import LoraSettings, TrainingError, load_base, read_rows, sft_trainer, train_lora
from ft_assets.training.merge import MergeError, logits_difference, merge_adapter
from ft_assets_tests.conftest import chat, write_jsonl

TINY = TinyModelSpec(vocab_size=320, hidden_size=32, intermediate_size=64, layers=1, heads=2, pretrain_epochs=1)
FAST = LoraSettings(r=4, alpha=8, epochs=1, learning_rate=1e-2, batch_size=8)
CATEGORIES = ["Travel", "Software", "Utilities"]


def _rows(n: int, offset: int = 0) -> list[dict]:
    return [
        chat(
            f"Invoice {i} from vendor {CATEGORIES[i % 3].lower()}co",
            f"Category: {CATEGORIES[i % 3]}\nVendor: V{i % 3}",
            id=f"example-{i}",  # split rows carry an example id: training and evaluation ignore it
        )
        for i in range(offset, offset + n)
    ]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("training")
    train = write_jsonl(root / "train.jsonl", _rows(24))
    validation = write_jsonl(root / "validation.jsonl", _rows(6, offset=100))
    build_tiny_model(read_rows(train), root / "base", TINY, log=lambda _: None)
    summary = train_lora(root / "base", train, validation, root / "adapter", FAST, log=lambda _: None)
    merge_adapter(root / "base", root / "adapter", root / "merged")
    return {"root": root, "train": train, "validation": validation, "summary": summary}  # type: ignore[dict-item]


def test_builtin_tokenizer_has_a_chat_template_with_generation_markers(trained):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(trained["root"] / "base")
    assert "{% generation %}" in tokenizer.chat_template
    messages = [{"role": "user", "content": "Invoice 7"}, {"role": "assistant", "content": "Category: Travel"}]
    encoded = tokenizer.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
    answer = [t for t, m in zip(encoded["input_ids"], encoded["assistant_masks"], strict=True) if m]
    assert tokenizer.decode(answer) == "Category: Travel<|end|>"


def test_builtin_model_is_deterministic_for_a_seed(tmp_path):
    rows = _rows(12)
    build_tiny_model(rows, tmp_path / "a", TINY, log=lambda _: None)
    build_tiny_model(rows, tmp_path / "b", TINY, log=lambda _: None)
    build_tiny_model(rows, tmp_path / "c", TinyModelSpec(**{**TINY.__dict__, "seed": 1}), log=lambda _: None)
    weights = [(tmp_path / name / "model.safetensors").read_bytes() for name in "abc"]
    assert weights[0] == weights[1]
    assert weights[0] != weights[2]


def test_builtin_model_refuses_an_empty_corpus(tmp_path):
    with pytest.raises(BaseModelError, match="no text"):
        build_tiny_model([], tmp_path / "empty", TINY)


def test_lora_training_saves_an_adapter_with_history_and_throughput(trained):
    adapter = trained["root"] / "adapter"
    assert (adapter / "adapter_model.safetensors").exists()
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == 4 and sorted(config["target_modules"]) == ["q_proj", "v_proj"]
    summary = trained["summary"]
    assert summary["device"] == "cpu" and summary["precision"] == "fp32"
    assert summary["tokens_per_second"] > 0 and summary["steps"] == 3
    assert 0 < summary["trainable_parameters"] < summary["total_parameters"]
    history = json.loads((adapter / "training_history.json").read_text())
    assert any("eval_loss" in entry for entry in history)


def test_qlora_and_gpu_precisions_fail_clearly_without_cuda(trained):
    for settings, message in (
        (LoraSettings(quantization="4bit"), "needs a CUDA GPU"),
        (LoraSettings(precision="bf16"), "no CUDA device"),
    ):
        with pytest.raises(TrainingError, match=message):
            train_lora(trained["root"] / "base", trained["train"], None, trained["root"] / "never", settings)


def _preference(i: int) -> dict:
    return {
        "id": f"pref-{i}",
        "input": {"messages": [{"role": "user", "content": f"Invoice {i} from vendor travelco"}]},
        "preferred_output": [{"role": "assistant", "content": "Category: Travel\nVendor: V0"}],
        "non_preferred_output": [{"role": "assistant", "content": "Category: Software\nVendor: V1"}],
    }


def test_preference_rows_train_as_input_plus_preferred_output_and_are_counted(trained, tmp_path):
    path = write_jsonl(tmp_path / "mixed.jsonl", [*_rows(6), _preference(1), _preference(2)])
    summary = train_lora(trained["root"] / "base", path, None, tmp_path / "out", FAST, log=lambda _: None)
    assert summary["train_examples"] == 8
    assert summary["data"]["train"]["preference_rows_as_chat"] == 2
    card = model_card(*(ArtifactRef(name, "v1", str(tmp_path)) for name in ("b", "t", "v")), summary)
    assert "Of 8 train rows: 2 preference rows trained as input + preferred answer" in card
    assert row_messages(_preference(1)) == [
        {"role": "user", "content": "Invoice 1 from vendor travelco"},
        {"role": "assistant", "content": "Category: Travel\nVendor: V0", "weight": 1},
    ]


def _weighted_row() -> dict:
    return {
        "id": "weighted",
        "messages": [
            {"role": "system", "content": "Label the invoice."},
            {"role": "user", "content": "Invoice 1 from vendor travelco"},
            {"role": "assistant", "content": "Category: Software", "weight": 0},
            {"role": "user", "content": "Invoice 2 from vendor utilitiesco"},
            {"role": "assistant", "content": "Category: Utilities", "weight": 1},
            {"role": "user", "content": "Invoice 3 from vendor travelco"},
            {"role": "assistant", "content": "Category: Travel"},
        ],
    }


def test_weight_zero_turns_get_no_loss_in_the_sft_trainer(trained, tmp_path):
    model, tokenizer = load_base(trained["root"] / "base")
    examples = chat_examples([_weighted_row()])
    assert examples.weight_zero_turns == 1
    trainer = sft_trainer(model, tokenizer, examples.conversations, [], FAST, tmp_path, "fp32")
    ids, labels = trainer.train_dataset[0]["input_ids"], trainer.train_dataset[0]["labels"]
    learned = tokenizer.decode([t for t, label in zip(ids, labels, strict=True) if label != -100])
    assert learned == "Category: Utilities<|end|>Category: Travel<|end|>"
    assert "Category: Software" in tokenizer.decode(ids), "a weight-0 turn stays in the context"
    assert all(label in (-100, t) for t, label in zip(ids, labels, strict=True))
    batch = trainer.data_collator([trainer.train_dataset[0]])
    assert batch["labels"][0].tolist() == labels, "the collator passes these labels to the loss as they are"


def test_rows_whose_turns_all_have_weight_zero_are_skipped_and_counted():
    row = _weighted_row()
    for message in row["messages"]:
        if message["role"] == "assistant":
            message["weight"] = 0
    examples = chat_examples([row, *_rows(2)])
    assert len(examples.conversations) == 2
    assert examples.summary()["rows_without_trained_turn"] == 1 and examples.weight_zero_turns == 3


def test_a_name_is_folded_into_user_turns_and_refused_on_assistant_turns():
    row = chat("Invoice 9", "Category: Travel")
    row["messages"][1]["name"] = "ap_clerk"
    assert row_messages(row)[1] == {"role": "user", "content": "ap_clerk: Invoice 9"}
    row["messages"][2]["name"] = "labeller"
    examples = chat_examples([row, {**row, "id": "inv-9"}])
    assert examples.refused == {"assistant_name": [1, 2]}
    refusal = examples.refusal("train.jsonl")
    assert "would become part of the answer" in refusal and "(rows 1, 2 (id inv-9))" in refusal
    assert "ft-assets lineage example ID" in refusal


def test_tool_calling_rows_are_refused_with_a_count(trained, tmp_path):
    call = {"role": "assistant", "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}  # fmt: skip
    with_call = {"messages": [{"role": "user", "content": "Invoice 1"}, call,
                              {"role": "tool", "tool_call_id": "c1", "content": "{}"},
                              {"role": "assistant", "content": "Category: Travel"}]}  # fmt: skip
    with_tools = {**chat("Invoice 2", "Category: Travel"), "tools": [{"type": "function", "function": {"name": "f"}}]}
    path = write_jsonl(tmp_path / "tools.jsonl", [*_rows(3), with_call, with_tools])
    with pytest.raises(TrainingError, match=r"2 of 5 rows .*: 2 use tool calling .*\(rows 4, 5\)"):
        train_lora(trained["root"] / "base", path, None, tmp_path / "out", FAST)


def test_eval_cases_ignore_ids_read_preference_rows_and_count_skipped_rows():
    tool_row = {**chat("Invoice 2", "Category: Travel"), "tools": []}
    skipped = Counter()
    no_answer = {"id": "x", "messages": [{"role": "user", "content": "q"}]}
    cases = eval_cases([*_rows(2), _preference(5), tool_row, no_answer], skipped)
    assert len(cases) == 3
    assert cases[2].prompt == [{"role": "user", "content": "Invoice 5 from vendor travelco"}]
    assert cases[2].gold == "Category: Travel\nVendor: V0"
    assert skipped == {"tool_calling": 1, "no_assistant_turn": 1}


def test_merged_logits_match_base_plus_adapter_and_it_reloads(trained):
    root = trained["root"]
    assert (root / "merged" / "model.safetensors").exists()
    prompts = ["<|user|>Invoice 3 from vendor travelco<|end|><|assistant|>", "<|user|>Invoice 4<|end|><|assistant|>"]
    assert logits_difference(root / "base", root / "adapter", root / "merged", prompts) <= 1e-4
    model, tokenizer = load_model(root / "base", merged_dir=root / "merged")
    result = run_local(model, tokenizer, eval_cases(_rows(2)), max_new_tokens=8, log=lambda _: None)
    assert len(result.answers) == 2 and all(t > 0 for t in result.output_tokens)


def test_merge_refuses_a_quantized_base(trained, tmp_path):
    base = tmp_path / "quantized"
    base.mkdir()
    config = json.loads((trained["root"] / "base" / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (base / "config.json").write_text(json.dumps(config))
    with pytest.raises(MergeError, match="quantized"):
        merge_adapter(base, trained["root"] / "adapter", tmp_path / "merged")


def test_a_local_pretrained_model_is_referenced_not_copied(trained, tmp_path):
    summary = reference_pretrained(
        str(trained["root"] / "merged"), tmp_path / "ref", allow_download=False, log=lambda _: None
    )
    assert summary["model_type"] == "llama"
    location, kwargs = model_location(tmp_path / "ref")
    assert location == str((trained["root"] / "merged").resolve()) and kwargs == {}
    assert not (tmp_path / "ref" / "model.safetensors").exists()


def test_an_unknown_hub_id_fails_without_downloading(tmp_path):
    with pytest.raises(BaseModelError, match="downloads are off"):
        reference_pretrained("nobody/no-such-model", tmp_path / "ref", allow_download=False, log=lambda _: None)


def test_few_shot_prompt_puts_shots_after_the_system_message():
    case = eval_cases([chat("Invoice X", "Category: Travel")])[0]
    shots = few_shot_examples(_rows(10), 2, seed=0)
    prompt = with_shots(case, shots).prompt
    assert [m["role"] for m in prompt] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert prompt[-1]["content"] == "Invoice X"
    assert few_shot_examples(_rows(10), 2, seed=0) == shots


def test_runner_measures_loss_lower_for_the_adapter_than_for_the_base(trained):
    root = trained["root"]
    cases = eval_cases(read_rows(trained["train"]))[:6]
    golds = [c.gold for c in cases]
    torch.manual_seed(0)
    base = run_local(*load_model(root / "base"), cases, max_new_tokens=6, log=lambda _: None).row(golds)
    adapted = run_local(
        *load_model(root / "base", adapter_dir=root / "adapter"), cases, max_new_tokens=6, log=lambda _: None
    )
    row = adapted.row(golds)
    assert row["loss"] < base["loss"]
    assert row["n"] == 6 and 0 <= row["token_accuracy"] <= 1 and row["latency_p95_ms"] >= row["latency_p50_ms"] > 0


def test_early_stopping_keeps_the_best_checkpoint(trained, tmp_path):
    settings = LoraSettings(r=4, alpha=8, epochs=3, learning_rate=1e-2, batch_size=8, early_stopping_patience=1)
    summary = train_lora(trained["root"] / "base", trained["train"], trained["validation"], tmp_path / "a", settings)
    assert summary["best_eval_loss"] is not None and summary["steps"] <= 9
    assert (tmp_path / "a" / "adapter_model.safetensors").exists()
    assert not list(tmp_path.glob("a/checkpoint-*")), "checkpoints stay in scratch, out of the artifact"
