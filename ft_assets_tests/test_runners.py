"""Batched evaluation runners on a tiny model: same answers and losses as one example at a time."""

from pathlib import Path

import pytest
import torch

from ft_assets.evaluation.runners import (
    EvalCase,
    TokenizedCase,
    eval_cases,
    generate,
    generation_budget,
    load_model,
    run_local,
    teacher_forced,
    tokenize_cases,
    with_shots,
)
from ft_assets.training.base_model import TinyModelSpec, build_tiny_model
from ft_assets.training.lora import LoraSettings, read_rows, train_lora
from ft_assets.training.merge import merge_adapter
from ft_assets_tests.conftest import chat, write_jsonl

# Big enough that CPU kernels round differently with the batch shape (with exact=False, losses differ by ~3e-7
# between batch sizes here), trained enough that answers end with the end token at different lengths.
TINY = TinyModelSpec(vocab_size=320, hidden_size=64, intermediate_size=128, layers=2, heads=2, pretrain_epochs=1)
LORA = LoraSettings(r=8, alpha=16, epochs=20, learning_rate=3e-2, batch_size=8)
CATEGORIES = ["Travel", "Software", "Utilities"]
MODELS = ["base", "adapter", "merged"]


def _rows(n: int, offset: int = 0) -> list[dict]:
    """Invoices of varied length, so batches mix lengths and need padding."""
    return [
        chat(
            f"Invoice {i} from vendor {CATEGORIES[i % 3].lower()}co" + " for services rendered" * (i % 4),
            f"Category: {CATEGORIES[i % 3]}\nVendor: V{i % 3}",
        )
        for i in range(offset, offset + n)
    ]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runners")
    train = write_jsonl(root / "train.jsonl", _rows(24))
    build_tiny_model(read_rows(train), root / "base", TINY, log=lambda _: None)
    train_lora(root / "base", train, None, root / "adapter", LORA, log=lambda _: None)
    merge_adapter(root / "base", root / "adapter", root / "merged")
    return root


def _load(root: Path, name: str) -> tuple:
    if name == "adapter":
        return load_model(root / "base", adapter_dir=root / "adapter")
    if name == "merged":
        return load_model(root / "base", merged_dir=root / "merged")
    return load_model(root / "base")


def _cases() -> list[EvalCase]:
    cases = eval_cases(_rows(13, offset=100))
    shots = eval_cases(_rows(2))
    return cases + [with_shots(case, shots) for case in cases[:5]]


def _plain_generate(model, tokenizer, prompt: list[int], max_new_tokens: int) -> list[int]:
    """The old runner: one unpadded prompt, the model's own attention kernel."""
    with torch.no_grad():
        inputs = torch.tensor([prompt])
        output = model.generate(
            input_ids=inputs,
            attention_mask=torch.ones_like(inputs),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    new = output[0, len(prompt) :].tolist()
    return new[: new.index(tokenizer.eos_token_id) + 1] if tokenizer.eos_token_id in new else new


@pytest.mark.parametrize("name", MODELS)
def test_batched_greedy_answers_equal_one_at_a_time(models, name):
    model, tokenizer = _load(models, name)
    cases = tokenize_cases(tokenizer, _cases())
    assert len({len(case.prompt) for case in cases}) > 5, "prompts of many lengths: batches are padded"
    budget = generation_budget(tokenizer, [case.gold for case in cases])
    one = generate(model, tokenizer, cases, max_new_tokens=budget, batch_size=1, log=lambda _: None)
    batched = generate(model, tokenizer, cases, max_new_tokens=budget, batch_size=8, log=lambda _: None)
    assert [(p.text, p.output_tokens, p.truncated) for p in one] == [
        (p.text, p.output_tokens, p.truncated) for p in batched
    ]
    assert max(p.batch_rows for p in batched) > 1 and {p.batch_rows for p in one} == {1}
    plain = [_plain_generate(model, tokenizer, case.prompt, budget) for case in cases]
    assert [p.output_tokens for p in batched] == [len(ids) for ids in plain]
    assert [p.text for p in batched] == [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in plain]


def test_predictions_keep_prompt_order_and_record_tokens_truncation_and_time(models):
    model, tokenizer = _load(models, "adapter")
    cases = _cases()
    tokenized = tokenize_cases(tokenizer, cases)
    predictions = generate(model, tokenizer, cases, max_new_tokens=2, batch_size=4, log=lambda _: None)
    assert [p.prompt_tokens for p in predictions] == [len(case.prompt) for case in tokenized]
    for prediction in predictions:
        assert 1 <= prediction.output_tokens <= 2
        assert prediction.latency_s == pytest.approx(prediction.batch_s / prediction.batch_rows)
        assert 1 <= prediction.batch_rows <= 4
    as_ids = generate(model, tokenizer, [c.prompt for c in tokenized], max_new_tokens=2, log=lambda _: None)
    assert [p.text for p in as_ids] == [p.text for p in predictions]
    lines: list[str] = []
    generate(model, tokenizer, tokenized, max_new_tokens=2, batch_size=4, log=lines.append, label="adapter")
    assert lines[-1] == f"adapter: {len(cases)}/{len(cases)} answered"


def test_truncated_means_the_budget_ran_out_before_the_end_token(models):
    model, tokenizer = _load(models, "adapter")
    cases = tokenize_cases(tokenizer, _cases())
    for budget in (2, 30):
        predictions = generate(model, tokenizer, cases, max_new_tokens=budget, batch_size=8, log=lambda _: None)
        for case, prediction in zip(cases, predictions, strict=True):
            plain = _plain_generate(model, tokenizer, case.prompt, budget)
            assert prediction.truncated == (tokenizer.eos_token_id not in plain)
            assert prediction.output_tokens == len(plain)


def _per_example(model, case: TokenizedCase) -> tuple[float, int, int]:
    """The old runner's loss: one unpadded forward pass per example."""
    with torch.no_grad():
        ids = torch.tensor([case.full])
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, case.answer_start - 1 : -1]
    targets = ids[0, case.answer_start :]
    loss = float(torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum"))
    return loss, int((logits.argmax(-1) == targets).sum()), len(targets)


@pytest.mark.parametrize("name", MODELS)
def test_teacher_forced_batches_match_the_per_example_computation(models, name):
    model, tokenizer = _load(models, name)
    cases = tokenize_cases(tokenizer, _cases())
    one = teacher_forced(model, tokenizer, cases, batch_size=1)
    batched = teacher_forced(model, tokenizer, cases, batch_size=8)
    assert one == batched, "bit for bit, whatever the batch"
    reference = [_per_example(model, case) for case in cases]
    assert batched.losses == pytest.approx([loss / n for loss, _, n in reference], rel=1e-5)
    assert batched.token_accuracies == [hits / n for _, hits, n in reference]
    tokens = sum(n for *_, n in reference)
    assert batched.loss == pytest.approx(sum(loss for loss, *_ in reference) / tokens, rel=1e-5)
    assert batched.token_accuracy == sum(hits for _, hits, _ in reference) / tokens
    losses, accuracies, mean_loss, mean_accuracy = batched
    assert len(losses) == len(accuracies) == len(cases) and (mean_loss, mean_accuracy) == batched[2:]


def test_without_exact_numerics_answers_agree_and_losses_are_close(models):
    model, tokenizer = _load(models, "adapter")
    cases = tokenize_cases(tokenizer, _cases())
    exact = run_local(model, tokenizer, cases, batch_size=8, log=lambda _: None)
    loose = run_local(model, tokenizer, cases, batch_size=8, log=lambda _: None, exact=False)
    assert loose.answers == exact.answers and loose.output_tokens == exact.output_tokens
    assert loose.losses == pytest.approx(exact.losses, rel=1e-5)
    with pytest.raises(ValueError, match="batch_size"):
        generate(model, tokenizer, cases, max_new_tokens=2, batch_size=0)


def test_generation_budget_is_the_longest_gold_plus_end_token_and_margin_capped(models):
    _, tokenizer = _load(models, "base")
    golds = ["Category: Travel", "Category: Software\nVendor: V1"]
    longest = max(len(tokenizer(gold, add_special_tokens=False)["input_ids"]) for gold in golds)
    assert generation_budget(tokenizer, golds) == longest + 1 + 8
    assert generation_budget(tokenizer, golds, margin=0) == longest + 1
    assert generation_budget(tokenizer, golds, cap=5) == 5
    assert generation_budget(tokenizer, []) == 9


def test_run_local_reuses_tokenized_cases_and_exposes_predictions_and_losses(models):
    cases = _cases()
    _, tokenizer = _load(models, "base")
    tokenized = tokenize_cases(tokenizer, cases)
    assert tokenize_cases(tokenizer, tokenized) == tokenized
    for name in ("adapter", "merged"):
        model, tokenizer = _load(models, name)
        result = run_local(model, tokenizer, tokenized, batch_size=4, log=lambda _: None)
        assert result.answers == [p.text for p in result.predictions]
        assert result.output_tokens == [p.output_tokens for p in result.predictions]
        assert result.latencies_s == [p.latency_s for p in result.predictions]
        assert len(result.losses) == len(result.token_accuracies) == len(cases)
        assert result.row([c.gold for c in cases])["n"] == len(cases)
        from_cases = run_local(model, tokenizer, cases, batch_size=4, log=lambda _: None)
        assert from_cases.answers == result.answers and from_cases.losses == result.losses


def test_models_are_left_as_found_and_merged_tokenizer_pads_left(models):
    model, tokenizer = _load(models, "merged")
    assert tokenizer.pad_token_id is not None and tokenizer.padding_side == "left"
    before = model.config._attn_implementation
    generate(model, tokenizer, tokenize_cases(tokenizer, _cases()[:3]), max_new_tokens=2, log=lambda _: None)
    assert model.config._attn_implementation == before
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and not any(m._forward_hooks or m._forward_pre_hooks for m in linears)
