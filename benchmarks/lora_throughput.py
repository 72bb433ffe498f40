"""Benchmark: training throughput of the ``lora_adapter`` step against a plain SFTTrainer script (target >= 0.9x).

Usage: ``python benchmarks/lora_throughput.py [--epochs 3] [--rounds 2]``. It prepares the
shipped data and builds the default base model once, then alternates, ``--rounds`` times each:
- ft-assets: the process the asset launches through Pipes (``python -m
  ft_assets.training.lora_pipes JOB.json``), its ``tokens_per_second`` read from the
  adapter's training summary (the figure shown in the asset's metadata);
- plain: a standalone script (below) that builds its own ``LoraConfig``/``SFTConfig`` with the
  same settings and calls ``SFTTrainer.train()``.
Both count tokens the same way (tokenized training examples x epochs / ``train_runtime``) and
run in fresh processes; medians are compared.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PLAIN_SCRIPT = """
import json, sys
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

base, train_path, val_path, out, s = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], json.loads(sys.argv[5])
def rows(path):
    return [{"messages": [{"role": m["role"], "content": m["content"]} for m in json.loads(l)["messages"]]}
            for l in open(path) if l.strip()]
tokenizer = AutoTokenizer.from_pretrained(base)
model = AutoModelForCausalLM.from_pretrained(base)
args = SFTConfig(output_dir=out, num_train_epochs=s["epochs"], learning_rate=s["learning_rate"],
                 per_device_train_batch_size=s["batch_size"], per_device_eval_batch_size=s["batch_size"],
                 gradient_accumulation_steps=s["gradient_accumulation"], max_length=s["max_length"],
                 warmup_steps=s["warmup"], seed=s["seed"], data_seed=s["seed"], assistant_only_loss=True,
                 bf16=False, fp16=False, eval_strategy="epoch", save_strategy="no", logging_steps=5,
                 report_to="none", disable_tqdm=True, use_cpu=True)
peft = LoraConfig(r=s["r"], lora_alpha=s["alpha"], lora_dropout=s["dropout"],
                  target_modules=list(s["target_modules"]), bias="none", task_type="CAUSAL_LM")
trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows(train_path)),
                     eval_dataset=Dataset.from_list(rows(val_path)), processing_class=tokenizer, peft_config=peft)
tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"])
result = trainer.train()
print(json.dumps({"tokens_per_second": tokens * result.metrics["epoch"] / result.metrics["train_runtime"]}))
"""


def prepare(work: Path) -> tuple[Path, Path, Path]:
    """Split the shipped data and build the default base model; return (base, train, validation)."""
    from ft_assets.dataset.prep import prep
    from ft_assets.training.base_model import TinyModelSpec, build_tiny_model
    from ft_assets.training.lora import read_rows

    prep([ROOT / "data" / "raw"], work / "splits")
    train, validation = work / "splits" / "train.jsonl", work / "splits" / "validation.jsonl"
    build_tiny_model(read_rows(train), work / "base", TinyModelSpec(), log=lambda _: None)
    return work / "base", train, validation


def run_ft_assets(work: Path, base: Path, train: Path, validation: Path, settings: dict, n: int) -> float:
    """Run the asset's training process; return its reported tokens per second."""
    out = work / f"adapter-{n}"
    job = {"base_dir": str(base), "train_path": str(train), "validation_path": str(validation), "out_dir": str(out),
           "settings": settings, "error_file": str(work / "error.txt")}  # fmt: skip
    job_file = work / f"job-{n}.json"
    job_file.write_text(json.dumps(job))
    subprocess.run(
        [sys.executable, "-m", "ft_assets.training.lora_pipes", str(job_file)], check=True, capture_output=True
    )
    return json.loads((out / "training_summary.json").read_text())["tokens_per_second"]


def run_plain(work: Path, base: Path, train: Path, validation: Path, settings: dict, n: int) -> float:
    """Run the plain SFTTrainer script; return its tokens per second."""
    command = [sys.executable, "-c", PLAIN_SCRIPT, str(base), str(train), str(validation), str(work / f"plain-{n}"),
               json.dumps(settings)]  # fmt: skip
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])["tokens_per_second"]


def main() -> None:
    from ft_assets.training.lora import LoraSettings

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    settings = asdict(LoraSettings(epochs=args.epochs))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base, train, validation = prepare(work)
        results: dict[str, list[float]] = {"ft-assets lora_adapter step": [], "plain SFTTrainer script": []}
        for n in range(args.rounds):
            for name, run in zip(results, (run_ft_assets, run_plain), strict=True):
                start = time.perf_counter()
                results[name].append(run(work, base, train, validation, settings, n))
                print(
                    f"round {n + 1} {name}: {results[name][-1]:.0f} tokens/s ({time.perf_counter() - start:.1f} s wall)"
                )
    medians = {name: statistics.median(values) for name, values in results.items()}
    for name, median in medians.items():
        print(f"{name}: median {median:.0f} tokens/s")
    ratio = medians["ft-assets lora_adapter step"] / medians["plain SFTTrainer script"]
    print(f"ratio ft-assets/plain: {ratio:.3f} (target >= 0.90)")


if __name__ == "__main__":
    main()
