"""LoRA fine-tuning with peft + trl: chat examples in, an adapter folder out. No dagster import here.

``train_lora`` is the whole recipe; the configuration objects carry the detail. Precision
follows the device (fp32 on CPU, bf16 on a GPU that has it, else fp16); QLoRA loads the base
in 4 bits through bitsandbytes and needs CUDA. The loss is on assistant tokens only, and only on
assistant turns whose ``weight`` is not 0: each row is tokenized here (``chat_rows.tokenize_chat``:
the chat template's ``{% generation %}`` markers, with trl's marked template when a model's own
lacks them) into ``input_ids`` + ``assistant_masks``, and trl builds the labels from that mask.
What happens to ``name``, tool calling, preference rows and the ``id`` key is in ``chat_rows``:
tool-calling rows make training fail with a count; skipped rows are counted in the summary.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from ft_assets.training.base_model import model_location, tokenizer_location
from ft_assets.training.chat_rows import ChatExamples, chat_examples, tokenize_chat

Log = Callable[[str], None]
HISTORY_FILE = "training_history.json"
SUMMARY_FILE = "training_summary.json"


class TrainingError(Exception):
    """Training cannot start or finish; the message says why and what to do."""


@dataclass(frozen=True)
class LoraSettings:
    """LoRA and trainer hyperparameters (defaults suit the built-in model on a CPU)."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    epochs: float = 12.0
    learning_rate: float = 2e-2
    batch_size: int = 8
    gradient_accumulation: int = 1
    max_length: int = 512
    warmup: float = 0.05
    weight_decay: float = 0.0
    seed: int = 0
    early_stopping_patience: int | None = None
    quantization: Literal["none", "4bit"] = "none"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    extra: dict[str, Any] = field(default_factory=dict)


def device_precision(requested: str) -> tuple[str, str]:
    """Return (device, precision) for ``requested`` precision: fp32 on CPU, bf16 where a GPU supports it."""
    import torch

    if not torch.cuda.is_available():
        if requested in ("bf16", "fp16"):
            raise TrainingError(f"precision {requested} was asked for, but no CUDA device is present; use fp32 or auto")
        return "cpu", "fp32"
    if requested != "auto":
        return "cuda", requested
    return "cuda", "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def _quantization_config(settings: LoraSettings, device: str) -> Any:
    if settings.quantization == "none":
        return None
    if device != "cuda":
        raise TrainingError("QLoRA (quantization 4bit) needs a CUDA GPU and bitsandbytes; none is present here")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as error:
        raise TrainingError("QLoRA (quantization 4bit) needs bitsandbytes: pip install bitsandbytes") from error
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.bfloat16,
        bnb_4bit_use_double_quant=True,
    )


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSONL split."""
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def training_examples(path: str | Path, split: str) -> ChatExamples:
    """Read a split's rows into the conversations to train on; refuse the split if rows cannot be trained."""
    examples = chat_examples(read_rows(path))
    refusal = examples.refusal(f"the {split} split ({path})")
    if refusal:
        raise TrainingError(refusal)
    return examples


def training_template(tokenizer: Any) -> str | None:
    """Return the chat template to tokenize with: None for the tokenizer's own when it has generation markers."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    if not tokenizer.chat_template:
        raise TrainingError("the base model's tokenizer has no chat template to render chat examples with")
    if has_generation_markers(tokenizer.chat_template):
        return None
    try:
        return get_training_chat_template(tokenizer)
    except ValueError as error:
        raise TrainingError(
            f"the base model's chat template has no {{% generation %}} markers and trl cannot patch it ({error}); "
            "add the markers around assistant turns"
        ) from error


def tokenized_dataset(tokenizer: Any, conversations: Sequence[Sequence[dict[str, Any]]]) -> Any:
    """Return a ``datasets.Dataset`` of ``input_ids`` + ``assistant_masks`` (weight-0 turns masked out)."""
    from datasets import Dataset

    template = training_template(tokenizer)
    rows = []
    for number, messages in enumerate(conversations, start=1):
        try:
            rows.append(tokenize_chat(tokenizer, messages, template))
        except ValueError as error:
            raise TrainingError(f"example {number}: {error}") from error
    return Dataset.from_list(rows)


def _progress_callback(log: Log, history: list[dict[str, Any]]) -> Any:
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        """Sends each logged step (loss, learning rate, eval loss) to ``log`` and keeps it in ``history``."""

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **_: Any) -> None:
            if not logs or "train_runtime" in logs:
                return
            entry = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 3), **logs}
            history.append(entry)
            parts = [f"step {state.global_step}/{state.max_steps}", f"epoch {entry['epoch']:.2f}"]
            for key in ("loss", "eval_loss", "learning_rate", "mean_token_accuracy", "eval_mean_token_accuracy"):
                if key in logs:
                    parts.append(f"{key} {logs[key]:.4g}")
            log(", ".join(parts))

    return Progress()


def sft_config(settings: LoraSettings, output_dir: Path, precision: str, has_validation: bool) -> Any:
    """Return the ``SFTConfig`` for ``settings`` (also used by the benchmark's plain script)."""
    from trl import SFTConfig

    early = settings.early_stopping_patience is not None and has_validation
    return SFTConfig(
        output_dir=str(output_dir),
        num_train_epochs=settings.epochs,
        learning_rate=settings.learning_rate,
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation,
        max_length=settings.max_length,
        warmup_steps=settings.warmup,
        weight_decay=settings.weight_decay,
        seed=settings.seed,
        data_seed=settings.seed,
        # The datasets come tokenized with ``assistant_masks`` (weight-0 turns zeroed), from which trl builds
        # the labels; trl's own ``assistant_only_loss`` only applies to untokenized "messages" rows.
        assistant_only_loss=False,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        eval_strategy="epoch" if has_validation else "no",
        save_strategy="epoch" if early else "no",
        load_best_model_at_end=early,
        metric_for_best_model="eval_loss" if early else None,
        save_total_limit=2 if early else None,
        logging_strategy="steps",
        logging_steps=5,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        use_cpu=precision == "fp32" and not _cuda(),
        **settings.extra,
    )


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def lora_config(settings: LoraSettings) -> Any:
    """Return the peft ``LoraConfig`` for ``settings``."""
    from peft import LoraConfig

    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )


def load_base(base_dir: str | Path, quantization: Any = None) -> tuple[Any, Any]:
    """Load the base model and its tokenizer (left padding, pad token set) from a base model artifact."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    location, kwargs = model_location(base_dir)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_location(base_dir))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if quantization is not None:
        kwargs = {**kwargs, "quantization_config": quantization}
    model = AutoModelForCausalLM.from_pretrained(location, **kwargs)
    return model, tokenizer


def sft_trainer(
    model: Any,
    tokenizer: Any,
    train: Sequence[Sequence[dict[str, Any]]],
    validation: Sequence[Sequence[dict[str, Any]]],
    settings: LoraSettings,
    work: Path,
    precision: str,
    callbacks: Sequence[Any] = (),
) -> Any:
    """Return the trl ``SFTTrainer`` for the conversations (tokenized here; labels -100 outside trained turns).

    A ``model`` that already carries a trainable adapter (continued fine-tuning) is trained as it
    is; otherwise a fresh LoRA adapter from ``settings`` is added.
    """
    from peft import PeftModel
    from trl import SFTTrainer

    return SFTTrainer(
        model=model,
        args=sft_config(settings, work, precision, bool(validation)),
        train_dataset=tokenized_dataset(tokenizer, train),
        eval_dataset=tokenized_dataset(tokenizer, validation) if validation else None,
        processing_class=tokenizer,
        peft_config=None if isinstance(model, PeftModel) else lora_config(settings),
        callbacks=list(callbacks),
    )


def continue_from(model: Any, adapter_dir: Path, log: Log) -> Any:
    """Put the trained adapter in ``adapter_dir`` on ``model``, trainable: training goes on from its weights.

    The adapter keeps its own shape (rank, alpha, target modules); those settings of this run
    do not apply, and the log says so.
    """
    from peft import PeftModel

    shape = json.loads((adapter_dir / "adapter_config.json").read_text())
    log(
        f"continuing from the adapter in {adapter_dir.name}: r={shape.get('r')}, alpha={shape.get('lora_alpha')}, "
        f"target modules {', '.join(shape.get('target_modules') or [])} (this run's r, alpha and modules do not apply)"
    )
    return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True)


def portable_adapter_config(config_file: Path, base_dir: Path) -> None:
    """Make the saved adapter config the same on every machine and run.

    peft records the base model's absolute path and writes ``target_modules`` from a set (its
    order changes with the interpreter's hash seed); both would change the adapter's version.
    The base model becomes ``<asset>/<version>`` of its artifact, and the modules are sorted.
    """
    config = json.loads(config_file.read_text())
    config["base_model_name_or_path"] = f"{base_dir.parent.name}/{base_dir.name}"
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True))


def train_lora(
    base_dir: str | Path,
    train_path: str | Path,
    validation_path: str | Path | None,
    out_dir: Path,
    settings: LoraSettings,
    *,
    log: Log = print,
    scratch: Path | None = None,
    init_adapter: Path | None = None,
) -> dict[str, Any]:
    """Train a LoRA adapter on the train split and save it (adapter + tokenizer) to ``out_dir``.

    With ``init_adapter`` (an adapter trained on the same base model), training starts from its
    weights instead of a fresh adapter.

    Returns a summary: hyperparameters, device, losses, trainable parameters, tokens per second.
    """
    import tempfile

    from peft import prepare_model_for_kbit_training
    from transformers import EarlyStoppingCallback

    device, precision = device_precision(settings.precision)
    quantization = _quantization_config(settings, device)
    train_data = training_examples(train_path, "train")
    train = train_data.conversations
    if not train:
        raise TrainingError(f"{train_path} holds no example to train on ({train_data.summary()})")
    validation_data = training_examples(validation_path, "validation") if validation_path else ChatExamples()
    validation = validation_data.conversations
    for split, data in (("train", train_data), ("validation", validation_data)):
        if data.preference_rows_as_chat or data.rows_without_trained_turn or data.weight_zero_turns:
            log(
                f"{split}: {data.preference_rows_as_chat} preference rows trained as input + preferred_output, "
                f"{data.rows_without_trained_turn} rows skipped (every assistant turn has weight 0), "
                f"{data.weight_zero_turns} weight-0 assistant turns kept as context without loss"
            )
    model, tokenizer = load_base(base_dir, quantization)
    if quantization is not None:
        model = prepare_model_for_kbit_training(model)
    if init_adapter is not None:
        model = continue_from(model, init_adapter, log)
    history: list[dict[str, Any]] = []
    callbacks = [_progress_callback(log, history)]
    if settings.early_stopping_patience is not None and validation:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=settings.early_stopping_patience))
    log(
        f"training LoRA r={settings.r} on {len(train)} examples ({len(validation)} for validation) "
        f"on {device} in {precision}"
    )
    with tempfile.TemporaryDirectory(dir=scratch, prefix=".lora-") as work:
        trainer = sft_trainer(model, tokenizer, train, validation, settings, Path(work), precision, callbacks)
        tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"])
        started = time.perf_counter()
        result = trainer.train()
        seconds = time.perf_counter() - started
        trainable, total = trainer.model.get_nb_trainable_parameters()
        writer = trainer.is_world_process_zero()
        if writer:
            out_dir.mkdir(parents=True, exist_ok=True)
            trainer.model.save_pretrained(out_dir)
            tokenizer.save_pretrained(out_dir)
            portable_adapter_config(out_dir / "adapter_config.json", Path(base_dir))
    evals = [h["eval_loss"] for h in history if "eval_loss" in h]
    losses = [h["loss"] for h in history if "loss" in h]
    runtime = result.metrics.get("train_runtime", seconds)
    summary = {
        "settings": asdict(settings),
        "initialized_from": init_adapter.name if init_adapter is not None else None,
        "device": device,
        "precision": precision,
        "train_examples": len(train),
        "validation_examples": len(validation),
        "data": {"train": train_data.summary(), "validation": validation_data.summary()},
        "steps": result.global_step,
        "epochs_run": round(history[-1]["epoch"], 3) if history else settings.epochs,
        "final_train_loss": losses[-1] if losses else None,
        "best_eval_loss": min(evals) if evals else None,
        "final_eval_loss": evals[-1] if evals else None,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "train_tokens_per_epoch": tokens,
        "train_seconds": round(runtime, 3),
        "tokens_per_second": round(tokens * result.metrics.get("epoch", settings.epochs) / runtime, 1),
    }
    if writer:
        (out_dir / HISTORY_FILE).write_text(json.dumps(history, indent=1))
        (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, sort_keys=True))
    log(
        f"trained in {runtime:.1f} s: {summary['tokens_per_second']:.0f} tokens/s, "
        f"final loss {summary['final_train_loss']}, eval loss {summary['final_eval_loss']}"
    )
    return summary
