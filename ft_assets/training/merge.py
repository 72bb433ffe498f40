"""Merge a LoRA adapter into its base model, and check that the merged model behaves like base + adapter.

No dagster import here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ft_assets.training.base_model import model_location
from ft_assets.training.lora import load_base

PARITY_PROMPTS = 4


class MergeError(Exception):
    """The adapter cannot be merged; the message says why."""


def quantization_of(base_dir: str | Path) -> Any:
    """Return the base model's quantization config (None for full-precision weights), read from its config."""
    from transformers import AutoConfig

    location, kwargs = model_location(base_dir)
    return getattr(AutoConfig.from_pretrained(location, **kwargs), "quantization_config", None)


def merge_adapter(base_dir: str | Path, adapter_dir: str | Path, out_dir: Path) -> dict[str, Any]:
    """Fold the adapter's low-rank updates into the base weights; save model (safetensors) and tokenizer."""
    from peft import PeftModel

    quantization = quantization_of(base_dir)
    if quantization:
        method = quantization.get("quant_method", "?") if isinstance(quantization, dict) else quantization
        raise MergeError(
            f"the base model's weights are quantized ({method}): merging LoRA updates into them loses precision "
            "and cannot be saved faithfully. Merge into a full-precision copy of the base model instead."
        )
    model, tokenizer = load_base(base_dir)
    peft_model = PeftModel.from_pretrained(model, str(adapter_dir))
    merged = peft_model.merge_and_unload()
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return {"parameters": sum(p.numel() for p in merged.parameters()), "dtype": str(next(merged.parameters()).dtype)}


def parity_inputs(tokenizer: Any, prompts: Sequence[str]) -> dict[str, Any]:
    """Tokenize fixed prompts into a padded batch (left padding, as for generation)."""
    tokenizer.padding_side = "left"
    return tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)


def logits_difference(
    base_dir: str | Path, adapter_dir: str | Path, merged_dir: str | Path, prompts: Sequence[str]
) -> float:
    """Return the largest absolute difference between base + adapter logits and merged logits on ``prompts``.

    The merged model is loaded from its folder with plain ``transformers``, so this also checks
    that it reloads.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base, tokenizer = load_base(base_dir)
    with_adapter = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir)).eval()
    merged_tokenizer = AutoTokenizer.from_pretrained(str(merged_dir))
    batch = parity_inputs(tokenizer, prompts)
    if (
        merged_tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
        != tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    ):
        raise MergeError("the merged model's tokenizer does not tokenize like the base model's")
    with torch.no_grad():
        expected = with_adapter(**batch).logits
        actual = merged(**batch).logits
    mask = batch["attention_mask"].bool()
    return float((expected - actual).abs()[mask].max())
