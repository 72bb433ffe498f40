"""Benchmark: the evaluation of the four local models, one example at a time vs in batches (target ratio <= 0.35).

Usage: ``python benchmarks/eval_speed.py [--work DIR] [--batch-size 16] [--epochs 12] [--threads N]``.
It splits the shipped data (``data/raw``) with ``prep``, builds the default built-in base model,
trains a LoRA adapter and merges it, with the project's own functions (kept in ``--work`` and
reused by the next run that names it; a temporary folder otherwise). Then, in one process, it
evaluates the models of ``evaluation_table`` (base zero-shot, base few-shot k=3, adapter,
merged) on the test split with ``run_local`` twice per model: ``batch_size=1`` (one request at a
time, the old way) and ``--batch-size``. Cases are tokenized once per prompt style and shared by
the models; both runs use the same generation budget and include the teacher-forced loss. It
checks that answers, token counts and per-example losses are identical, then prints both times
and their ratio. Model loading and a short warm-up are not timed.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def prepare(work: Path, epochs: float) -> dict[str, Path]:
    """Split the shipped data, build the base model, train and merge the adapter (reusing what ``work`` holds)."""
    from ft_assets.dataset.prep import prep
    from ft_assets.training.base_model import TinyModelSpec, build_tiny_model
    from ft_assets.training.lora import LoraSettings, read_rows, train_lora
    from ft_assets.training.merge import merge_adapter

    paths = {name: work / name for name in ("splits", "base", "adapter", "merged")}
    train, validation = paths["splits"] / "train.jsonl", paths["splits"] / "validation.jsonl"
    steps = [
        ("splits", lambda: prep([ROOT / "data" / "raw"], paths["splits"])),
        ("base", lambda: build_tiny_model(read_rows(train), paths["base"], TinyModelSpec(), log=lambda _: None)),
        ("adapter", lambda: train_lora(paths["base"], train, validation, paths["adapter"], LoraSettings(epochs=epochs),
                                       log=lambda _: None)),
        ("merged", lambda: merge_adapter(paths["base"], paths["adapter"], paths["merged"])),
    ]  # fmt: skip
    for name, build in steps:
        done = paths[name] / ".done"
        if not done.exists():
            start = time.perf_counter()
            build()
            done.write_text("")
            print(f"built {name} in {time.perf_counter() - start:.1f} s")
    return paths


def evaluate(paths: dict[str, Path], batch_size: int) -> tuple[float, float, list[str]]:
    """Evaluate the four models one at a time and batched; return both times and the mismatches found."""
    from ft_assets.evaluation.runners import (
        eval_cases,
        few_shot_examples,
        generation_budget,
        load_model,
        run_local,
        tokenize_cases,
        with_shots,
    )
    from ft_assets.training.lora import read_rows

    cases = eval_cases(read_rows(paths["splits"] / "test.jsonl"))
    shots = few_shot_examples(read_rows(paths["splits"] / "train.jsonl"), 3, 0)
    specs: list[tuple[str, dict[str, Any], bool]] = [
        ("base_model (zero-shot)", {}, False),
        ("base_model (few-shot k=3)", {}, True),
        ("lora_adapter", {"adapter_dir": paths["adapter"]}, False),
        ("merged_model", {"merged_dir": paths["merged"]}, False),
    ]
    tokenizer = load_model(paths["base"])[1]
    tokenized = {
        False: tokenize_cases(tokenizer, cases),
        True: tokenize_cases(tokenizer, [with_shots(case, shots) for case in cases]),
    }
    budget = generation_budget(tokenizer, [case.gold for case in cases])
    print(f"{len(cases)} test cases, max_new_tokens {budget}, batch size {batch_size}")
    times, mismatches = {1: 0.0, batch_size: 0.0}, []
    for name, load, few_shot in specs:
        model, tokenizer = load_model(paths["base"], **load)
        prompts = tokenized[few_shot]
        run_local(model, tokenizer, prompts[:2], max_new_tokens=4, batch_size=1, log=lambda _: None)  # warm-up
        results = {}
        for size in times:
            start = time.perf_counter()
            results[size] = run_local(model, tokenizer, prompts, max_new_tokens=budget, batch_size=size,
                                      log=lambda _: None, label=name)  # fmt: skip
            elapsed = time.perf_counter() - start
            times[size] += elapsed
            print(f"{name}: batch_size={size}: {elapsed:.2f} s")
        one, batched = results[1], results[batch_size]
        same = [(p.text, p.output_tokens, p.truncated) for p in one.predictions] == [
            (p.text, p.output_tokens, p.truncated) for p in batched.predictions
        ]
        if not same or one.losses != batched.losses or one.token_accuracies != batched.token_accuracies:
            mismatches.append(name)
        truncated = sum(p.truncated for p in batched.predictions)
        print(f"{name}: identical {name not in mismatches}, loss {batched.loss:.4f}, truncated {truncated}")
    return times[1], times[batch_size], mismatches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", type=Path, help="folder to keep the splits and models in and reuse")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=float, default=12.0, help="LoRA epochs when the adapter is trained")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        one, batched, mismatches = evaluate(prepare(work, args.epochs), args.batch_size)
    print(f"one at a time (batch_size=1): {one:.2f} s")
    print(f"batched (batch_size={args.batch_size}): {batched:.2f} s")
    print(f"ratio batched/one-at-a-time: {batched / one:.3f} (target <= 0.35)")
    print("predictions and losses identical" if not mismatches else f"MISMATCH in {', '.join(mismatches)}")
    if mismatches:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
