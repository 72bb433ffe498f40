"""Run a local model over a test split: greedy answers with latency, and loss on the gold answers.

A test row's prompt is every message before its last assistant turn; the gold answer is that
turn (its ``weight`` plays no part here). Rows are read as the local trainer reads them
(``training.chat_rows.row_messages``): the ``id`` key is ignored, a ``name`` on a system/user turn
is folded into its text, a preference row is its input with the preferred answer as gold, and
rows the local model cannot use (tool calling, a named assistant turn) are skipped and counted.
A few-shot prompt puts ``k`` train examples as earlier user/assistant turns after the system
message. No dagster import here.

Answers are generated greedily in left-padded batches of similar-length prompts, and the gold
answers are scored in batches too. By default (``exact``) each example's numbers do not depend on
its batch-mates or its padding, so the answers and losses equal a one-example-at-a-time run bit
for bit on CPU: see ``_batch_invariant``.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from ft_assets.evaluation.metrics import percentile, perplexity, score_answers
from ft_assets.training.chat_rows import UnusableRow, row_messages
from ft_assets.training.lora import load_base

Log = Callable[[str], None]
Messages = list[dict[str, str]]
ROW_BLOCK = 8  # exact batching: Linear inputs are padded with zero rows to a multiple of this
ROWWISE = "ft_assets_rowwise"  # exact batching: the attention implementation (``_rowwise_attention``)
_LEFT_PADS: ContextVar[list[int] | None] = ContextVar("_LEFT_PADS", default=None)


@dataclass(frozen=True)
class EvalCase:
    """One test example: the prompt messages, the gold answer and the example id of its split row."""

    prompt: Messages
    gold: str
    example_id: str | None = None

    @property
    def question(self) -> str:
        """Return the last user turn: what the prediction tables show as the prompt."""
        return next((m["content"] for m in reversed(self.prompt) if m["role"] == "user"), "")


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
            example_id = row.get("id")
            cases.append(
                EvalCase(messages[:last], messages[last]["content"], None if example_id is None else str(example_id))
            )
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
    return EvalCase(system + turns + case.prompt[len(system) :], case.gold, case.example_id)


@dataclass(frozen=True)
class TokenizedCase:
    """A case tokenized once: prompt ids (with the generation prompt), full conversation ids, where the answer starts.

    Reuse it for every model that shares the tokenizer (base, adapter, merged).
    """

    prompt: list[int]
    full: list[int]
    answer_start: int
    gold: str


@dataclass(frozen=True)
class Prediction:
    """One generated answer.

    ``latency_s`` is the example's share of its batch's wall time (``batch_s`` / ``batch_rows``);
    ``truncated`` means it stopped at ``max_new_tokens`` without the end token.
    """

    text: str
    output_tokens: int
    truncated: bool
    latency_s: float
    prompt_tokens: int
    batch_s: float
    batch_rows: int


class TeacherForced(NamedTuple):
    """Loss and next-token accuracy on the gold answer tokens: per example, and means weighted by tokens."""

    losses: list[float]
    token_accuracies: list[float]
    loss: float
    token_accuracy: float


Cases = Sequence[EvalCase] | Sequence[TokenizedCase]


@dataclass
class LocalResult:
    """Answers and measurements of one local model on the test cases.

    Latencies are each example's share of its batch's time (the request latency when ``batch_size=1``).
    """

    answers: list[str]
    latencies_s: list[float]
    output_tokens: list[int]
    loss: float
    token_accuracy: float
    predictions: list[Prediction] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    token_accuracies: list[float] = field(default_factory=list)

    def row(self, golds: Sequence[str]) -> dict[str, Any]:
        """Return the metrics of an evaluations row."""
        scores = score_answers(self.answers, golds)
        return {
            "n": scores.n,
            "exact_match": scores.exact_match,
            "field_accuracy": scores.field_accuracy,
            "token_accuracy": self.token_accuracy,
            "loss": self.loss,
            "perplexity": perplexity(self.loss),
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


def tokenize_cases(tokenizer: Any, cases: Cases) -> list[TokenizedCase]:
    """Tokenize each case once (already tokenized ones pass through)."""
    tokenized = []
    for case in cases:
        if isinstance(case, TokenizedCase):
            tokenized.append(case)
            continue
        prompt = _prompt_ids(tokenizer, case.prompt)
        full = _full_ids(tokenizer, [*case.prompt, {"role": "assistant", "content": case.gold}])
        tokenized.append(TokenizedCase(prompt, full, _common_prefix(prompt, full), case.gold))
    return tokenized


def generation_budget(tokenizer: Any, golds: Sequence[str], *, margin: int = 8, cap: int = 512) -> int:
    """Return the longest gold answer in tokens, plus its end token and ``margin``, at most ``cap``."""
    longest = max((len(tokenizer(gold, add_special_tokens=False)["input_ids"]) for gold in golds), default=0)
    return max(1, min(longest + 1 + margin, cap))


def _pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Group indices into batches of similar length (sorted, shortest first) to limit padding."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def _left_padded(rows: Sequence[Sequence[int]], pad: int, model: Any) -> tuple[Any, Any]:
    """Return input ids and attention mask, left-padded to the longest row, on the model's device."""
    import torch

    device = next(model.parameters()).device
    width = max(len(row) for row in rows)
    ids = torch.tensor([[pad] * (width - len(row)) + list(row) for row in rows], device=device)
    mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows], device=device)
    return ids, mask


def _rowwise_attention(
    module: Any, query: Any, key: Any, value: Any, attention_mask: Any, scaling: float | None = None, **extra: Any
) -> tuple[Any, None]:
    """Attention one row at a time on that row's real tokens only (its left padding cut off).

    Each row makes the very SDPA call an unpadded, one-example run makes, so the result does not
    depend on the padding or the batch. The pad counts come from ``_LEFT_PADS``, not from a mask.
    """
    import torch
    from transformers.integrations.sdpa_attention import repeat_kv

    pads = _LEFT_PADS.get()
    batch, heads, queries, _ = query.shape
    if pads is None or len(pads) != batch:
        raise RuntimeError("row-wise attention runs only inside the evaluation runners")
    if any(extra.get(name) is not None for name in ("sliding_window", "softcap", "s_aux")):
        raise RuntimeError("row-wise attention handles plain causal attention only; evaluate with exact=False")
    key, value = repeat_kv(key, module.num_key_value_groups), repeat_kv(value, module.num_key_value_groups)
    keys = key.shape[2]
    output = query.new_zeros(batch, heads, queries, value.shape[-1])
    for row, pad in enumerate(pads):
        first = max(0, pad - (keys - queries))  # the first query that is a real token
        q = query[row : row + 1, :, first:].contiguous()
        k, v = key[row : row + 1, :, pad:].contiguous(), value[row : row + 1, :, pad:].contiguous()
        n_q, n_k = q.shape[2], k.shape[2]
        if n_q == 0:
            continue
        mask = None if n_q in (1, n_k) else torch.ones(n_q, n_k, dtype=torch.bool, device=q.device).tril(n_k - n_q)
        output[row, :, first:] = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=n_q > 1 and mask is None, scale=scaling
        )[0]
    return output.transpose(1, 2).contiguous(), None


def _set_attention(model: Any, implementation: str) -> str | None:
    """Set the model's attention implementation; return the previous one.

    None, and nothing set, when the model cannot switch or its attention is not plain causal attention
    (sliding windows, soft-capping): ``_rowwise_attention`` would not reproduce it.
    """
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(inner, "config", None)
    if not hasattr(inner, "set_attn_implementation") or config is None:
        return None
    plain = set(getattr(config, "layer_types", None) or ["full_attention"]) == {"full_attention"}
    if not plain or getattr(config, "attn_logit_softcapping", None) is not None:
        return None
    previous = inner.config._attn_implementation
    if previous != implementation:
        inner.set_attn_implementation(implementation)
    return previous


@contextmanager
def _batch_invariant(model: Any, exact: bool) -> Iterator[None]:
    """Make each row's numbers those of the same example run alone and unpadded (for ``exact``).

    CPU kernels pick their reduction order from the shapes: MKL's sgemm rounds differently for row
    counts that are not a multiple of 4 or 8 (gemv for a single row), and SDPA differs with the key
    length (padding) and the batch. So, for the duration of the block, every ``Linear`` input is
    padded with zero rows to a multiple of ``ROW_BLOCK``, and attention runs row by row on the real
    tokens (``_rowwise_attention``; set ``_LEFT_PADS`` for each batch).
    """
    if not exact:
        yield
        return
    import torch
    from transformers import AttentionInterface

    AttentionInterface.register(ROWWISE, _rowwise_attention)
    shapes: dict[int, Any] = {}

    def pad_rows(module: Any, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        x = args[0]
        rows = x.numel() // max(x.shape[-1], 1)
        if rows % ROW_BLOCK == 0:
            return None
        shapes[id(module)] = x.shape[:-1]
        return (torch.nn.functional.pad(x.reshape(rows, x.shape[-1]), (0, 0, 0, -rows % ROW_BLOCK)), *args[1:])

    def unpad_rows(module: Any, args: tuple[Any, ...], output: Any) -> Any:
        shape = shapes.pop(id(module), None)
        return None if shape is None else output[: math.prod(shape)].reshape(*shape, output.shape[-1])

    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    handles = [m.register_forward_pre_hook(pad_rows) for m in linears]
    handles += [m.register_forward_hook(unpad_rows) for m in linears]
    previous = _set_attention(model, ROWWISE)
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        if previous is not None:
            _set_attention(model, previous)


@contextmanager
def _left_pads(mask: Any) -> Iterator[None]:
    """Tell ``_rowwise_attention`` how many pad tokens each row of the batch starts with."""
    token = _LEFT_PADS.set([int(n) for n in (mask == 0).sum(-1)])
    try:
        yield
    finally:
        _LEFT_PADS.reset(token)


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[int]] | Cases,
    *,
    max_new_tokens: int,
    batch_size: int = 16,
    log: Log = print,
    label: str = "model",
    exact: bool = True,
) -> list[Prediction]:
    """Answer the prompts (token ids or cases) greedily in left-padded batches; predictions in prompt order.

    Prompts are sorted by length into batches (less padding); each row stops at the end token. With
    ``exact`` (the default) each row computes exactly what the example alone and unpadded computes,
    so the answers are the same for any ``batch_size`` (bit for bit on CPU; see ``_batch_invariant``).
    ``exact=False`` keeps the model's own attention with a padding mask (may differ in near-ties).
    """
    import torch

    ids = [p if isinstance(p, list) else p.prompt for p in _as_prompts(tokenizer, prompts)]
    stop, pad = tokenizer.eos_token_id, _pad_id(tokenizer)
    slots: dict[int, Prediction] = {}
    model.eval()
    with torch.no_grad(), _batch_invariant(model, exact):
        for batch in _batches([len(row) for row in ids], batch_size):
            inputs, mask = _left_padded([ids[i] for i in batch], pad, model)
            width = inputs.shape[1]
            started = time.perf_counter()
            with _left_pads(mask):
                output = model.generate(
                    input_ids=inputs,
                    attention_mask=mask,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    eos_token_id=stop,
                    pad_token_id=pad,
                )
            elapsed = time.perf_counter() - started
            for row, i in enumerate(batch):
                new = output[row, width:].tolist()
                ended = stop in new
                new = new[: new.index(stop) + 1] if ended else new
                text = tokenizer.decode(new, skip_special_tokens=True).strip()
                slots[i] = Prediction(text, len(new), not ended, elapsed / len(batch), len(ids[i]), elapsed, len(batch))
            if len(slots) // 10 > (len(slots) - len(batch)) // 10 or len(slots) == len(ids):
                log(f"{label}: {len(slots)}/{len(ids)} answered")
    return [slots[i] for i in range(len(ids))]


def _as_prompts(tokenizer: Any, prompts: Sequence[list[int]] | Cases) -> list[list[int] | TokenizedCase]:
    """Return token-id prompts as they are and cases tokenized."""
    return [p if isinstance(p, list | TokenizedCase) else tokenize_cases(tokenizer, [p])[0] for p in prompts]


def teacher_forced(
    model: Any, tokenizer: Any, cases: Cases, *, batch_size: int = 16, exact: bool = True
) -> TeacherForced:
    """Score the gold answer tokens given the prompt (cross-entropy and next-token accuracy), in left-padded batches.

    Matches a one-example-at-a-time forward pass; with ``exact`` the figures do not depend on ``batch_size``.
    A case without answer tokens gets NaN and counts in no mean.
    """
    import torch

    tokenized = tokenize_cases(tokenizer, cases)
    sums: list[tuple[float, int, int]] = [(0.0, 0, 0)] * len(tokenized)
    model.eval()
    with torch.no_grad(), _batch_invariant(model, exact):
        for batch in _batches([len(c.full) for c in tokenized], batch_size):
            inputs, mask = _left_padded([tokenized[i].full for i in batch], _pad_id(tokenizer), model)
            width = inputs.shape[1]
            answers = [len(tokenized[i].full) - tokenized[i].answer_start for i in batch]
            keep = max(answers) + 1
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            with _left_pads(mask):
                logits = model(input_ids=inputs, attention_mask=mask, position_ids=positions, logits_to_keep=keep)
            logits = logits.logits
            for row, (i, n) in enumerate(zip(batch, answers, strict=True)):
                if n > 0:
                    predicted, targets = logits[row, keep - n - 1 : keep - 1].float(), inputs[row, width - n :]
                    loss = float(torch.nn.functional.cross_entropy(predicted, targets, reduction="sum"))
                    sums[i] = (loss, int((predicted.argmax(-1) == targets).sum()), n)
    losses = [loss / n if n else math.nan for loss, _, n in sums]
    accuracies = [hits / n if n else math.nan for _, hits, n in sums]
    scored = sum(n for *_, n in sums)
    if not scored:
        return TeacherForced(losses, accuracies, math.nan, math.nan)
    return TeacherForced(
        losses, accuracies, sum(loss for loss, *_ in sums) / scored, sum(hits for _, hits, _ in sums) / scored
    )


def run_local(
    model: Any,
    tokenizer: Any,
    cases: Cases,
    *,
    max_new_tokens: int | None = None,
    batch_size: int = 16,
    log: Log = print,
    label: str = "model",
    exact: bool = True,
) -> LocalResult:
    """Answer every case greedily in batches and score the gold answers (loss and token accuracy).

    ``cases`` may be pre-tokenized (``tokenize_cases``) to share the work between models with one
    tokenizer. ``max_new_tokens`` defaults to ``generation_budget`` of the gold answers.
    """
    tokenized = tokenize_cases(tokenizer, cases)
    if max_new_tokens is None:
        max_new_tokens = generation_budget(tokenizer, [case.gold for case in tokenized])
    predictions = generate(
        model,
        tokenizer,
        tokenized,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        log=log,
        label=label,
        exact=exact,
    )
    scored = teacher_forced(model, tokenizer, tokenized, batch_size=batch_size, exact=exact)
    return LocalResult(
        answers=[p.text for p in predictions],
        latencies_s=[p.latency_s for p in predictions],
        output_tokens=[p.output_tokens for p in predictions],
        loss=scored.loss,
        token_accuracy=scored.token_accuracy,
        predictions=predictions,
        losses=scored.losses,
        token_accuracies=scored.token_accuracies,
    )


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
    """Load the base model, the base with an adapter on top, or a merged model folder, with its tokenizer.

    The tokenizer pads on the left, with the end token when it has no pad token.
    """
    if merged_dir is not None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(merged_dir))
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"
        return AutoModelForCausalLM.from_pretrained(str(merged_dir)).eval(), tokenizer
    model, tokenizer = load_base(base_dir)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir))
    return model.eval(), tokenizer
