"""Run a local model over a test split: greedy answers with latency, and loss on the gold answers.

A test row's prompt is every message before its last assistant turn; the gold answer is that
turn (its ``weight`` plays no part here). Rows are read as the local trainer reads them
(``training.chat_rows.row_messages``): the ``id`` key is ignored, a ``name`` on a system/user turn
is folded into its text, a preference row is its input with the preferred answer as gold, and
rows the local model cannot use (tool calling, a named assistant turn) are skipped and counted.
A few-shot prompt puts ``k`` train examples as earlier user/assistant turns after the system
message. No dagster import here.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ft_assets.evaluation.metrics import percentile, score_answers
from ft_assets.training.chat_rows import UnusableRow, row_messages
from ft_assets.training.lora import load_base

Log = Callable[[str], None]
Messages = list[dict[str, str]]


@dataclass(frozen=True)
class EvalCase:
    """One test example: the prompt messages and the gold answer."""

    prompt: Messages
    gold: str


def eval_cases(rows: Sequence[dict[str, Any]], skipped: Counter[str] | None = None) -> list[EvalCase]:
    """Return the test cases of chat and preference rows; count the rows skipped, by reason, into ``skipped``."""
    cases = []
    for row in rows:
        try:
            messages = [{"role": m["role"], "content": m["content"]} for m in row_messages(row)]
        except UnusableRow as unusable:
            if skipped is not None:
                skipped[unusable.reason] += 1
            continue
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
        if last is not None:
            cases.append(EvalCase(messages[:last], messages[last]["content"]))
        elif skipped is not None:
            skipped["no_assistant_turn"] += 1
    return cases


def few_shot_examples(train_rows: Sequence[dict[str, Any]], k: int, seed: int) -> list[EvalCase]:
    """Pick ``k`` train examples (seeded) to show in a few-shot prompt."""
    cases = eval_cases(train_rows)
    return random.Random(seed).sample(cases, min(k, len(cases)))


def with_shots(case: EvalCase, shots: Sequence[EvalCase]) -> EvalCase:
    """Return ``case`` with the shots as earlier turns, after its system message if it has one."""
    system = [m for m in case.prompt[:1] if m["role"] == "system"]
    turns: Messages = []
    for shot in shots:
        turns += [m for m in shot.prompt if m["role"] != "system"] + [{"role": "assistant", "content": shot.gold}]
    return EvalCase(system + turns + case.prompt[len(system) :], case.gold)


@dataclass
class LocalResult:
    """Answers and measurements of one local model on the test cases."""

    answers: list[str]
    latencies_s: list[float]
    output_tokens: list[int]
    loss: float
    token_accuracy: float

    def row(self, golds: Sequence[str]) -> dict[str, Any]:
        """Return the metrics of an evaluations row."""
        scores = score_answers(self.answers, golds)
        return {
            "n": scores.n,
            "exact_match": scores.exact_match,
            "field_accuracy": scores.field_accuracy,
            "token_accuracy": self.token_accuracy,
            "loss": self.loss,
            "perplexity": math.exp(self.loss) if math.isfinite(self.loss) and self.loss < 700 else math.inf,
            "latency_p50_ms": percentile(self.latencies_s, 50) * 1000,
            "latency_p95_ms": percentile(self.latencies_s, 95) * 1000,
            "output_tokens_mean": sum(self.output_tokens) / len(self.output_tokens) if self.output_tokens else math.nan,
            "cost_per_1k_requests_usd": None,
        }


def _prompt_ids(tokenizer: Any, messages: Messages) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _full_ids(tokenizer: Any, messages: Messages) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def run_local(
    model: Any,
    tokenizer: Any,
    cases: Sequence[EvalCase],
    *,
    max_new_tokens: int = 48,
    log: Log = print,
    label: str = "model",
) -> LocalResult:
    """Answer each case greedily (one request at a time, so latency is per example) and score the gold answers."""
    import torch

    model.eval()
    stop = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop
    answers, latencies, produced = [], [], []
    total_loss, scored, correct = 0.0, 0, 0
    with torch.no_grad():
        for number, case in enumerate(cases, start=1):
            prompt = _prompt_ids(tokenizer, case.prompt)
            inputs = torch.tensor([prompt])
            started = time.perf_counter()
            output = model.generate(
                input_ids=inputs,
                attention_mask=torch.ones_like(inputs),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=stop,
                pad_token_id=pad,
            )
            latencies.append(time.perf_counter() - started)
            new = output[0, len(prompt) :].tolist()
            if stop in new:
                new = new[: new.index(stop) + 1]
            produced.append(len(new))
            answers.append(tokenizer.decode(new, skip_special_tokens=True).strip())
            full = _full_ids(tokenizer, [*case.prompt, {"role": "assistant", "content": case.gold}])
            start = _common_prefix(prompt, full)
            ids = torch.tensor([full])
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, start - 1 : -1]
            targets = ids[0, start:]
            if len(targets):
                total_loss += float(torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum"))
                correct += int((logits.argmax(-1) == targets).sum())
                scored += len(targets)
            if number % 10 == 0 or number == len(cases):
                log(f"{label}: {number}/{len(cases)} answered")
    loss = total_loss / scored if scored else math.nan
    return LocalResult(answers, latencies, produced, loss, correct / scored if scored else math.nan)


def _common_prefix(prompt: Sequence[int], full: Sequence[int]) -> int:
    """Length of the shared prefix: where the gold answer's tokens start in the full conversation."""
    length = 0
    for a, b in zip(prompt, full, strict=False):
        if a != b:
            break
        length += 1
    return max(length, 1)


def load_model(
    base_dir: str | Path, *, adapter_dir: str | Path | None = None, merged_dir: str | Path | None = None
) -> tuple[Any, Any]:
    """Load the base model, the base with an adapter on top, or a merged model folder, with its tokenizer."""
    if merged_dir is not None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        return AutoModelForCausalLM.from_pretrained(str(merged_dir)).eval(), AutoTokenizer.from_pretrained(
            str(merged_dir)
        )
    model, tokenizer = load_base(base_dir)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir))
    return model.eval(), tokenizer
