"""The base model: a small Llama built offline from the corpus, or a Hugging Face model id / local path.

The built-in model needs no network: a byte-level BPE tokenizer is trained on the training
text, a Llama of a few hundred thousand parameters is initialised from a seed, and an optional
short causal-LM pass on the prompts (system and user turns, never the answers) teaches it the
domain's language without teaching it the task. The chat template marks assistant turns with
``{% generation %}`` so trainers can put the loss on answers only. No dagster import here.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ft_assets import compute_threads

compute_threads.configure()  # before torch loads: this module is the first of the training code a step imports

BUILTIN = "builtin:tiny-llama"
SOURCE_FILE = "model_source.json"
END_OF_TURN = "<|end|>"
PAD = "<|pad|>"
BOS = "<|begin|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "<|assistant|>{% generation %}{{ message['content'] }}<|end|>{% endgeneration %}"
    "{%- else -%}"
    "<|{{ message['role'] }}|>{{ message['content'] }}<|end|>"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)

Log = Callable[[str], None]


@dataclass(frozen=True)
class TinyModelSpec:
    """Shape and seed of the built-in model, and its optional pretraining pass."""

    seed: int = 0
    vocab_size: int = 1024
    hidden_size: int = 128
    intermediate_size: int = 256
    layers: int = 2
    heads: int = 4
    max_positions: int = 512
    pretrain_epochs: int = 10
    pretrain_learning_rate: float = 3e-3
    pretrain_block: int = 128
    pretrain_batch: int = 16


class BaseModelError(Exception):
    """The base model cannot be built or loaded; the message says why and what to do."""


def prompt_texts(rows: Iterable[dict[str, Any]]) -> list[str]:
    """Return the system and user contents of chat rows (the text a pretraining pass may see)."""
    texts = []
    for row in rows:
        messages = row.get("messages") or row.get("input", {}).get("messages", [])
        texts += [m["content"] for m in messages if m.get("role") != "assistant" and isinstance(m.get("content"), str)]
    return texts


def all_texts(rows: Iterable[dict[str, Any]]) -> list[str]:
    """Return every message content of chat rows (the tokenizer's corpus: answers must be spellable)."""
    texts = []
    for row in rows:
        messages = [*(row.get("messages") or row.get("input", {}).get("messages", []))]
        messages += row.get("preferred_output", []) + row.get("non_preferred_output", [])
        texts += [m["content"] for m in messages if isinstance(m.get("content"), str)]
    return texts


def train_tokenizer(corpus: Sequence[str], vocab_size: int) -> Any:
    """Train a byte-level BPE tokenizer on ``corpus``, with the chat template and its special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    specials = [PAD, BOS, END_OF_TURN, *ROLE_TOKENS]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=END_OF_TURN,
        pad_token=PAD,
        additional_special_tokens=list(ROLE_TOKENS),
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def _pretrain(
    model: Any, tokenizer: Any, texts: Sequence[str], spec: TinyModelSpec, log: Log
) -> list[dict[str, float]]:
    """Run a short causal-LM pass over ``texts`` packed into blocks; return the loss per step."""
    import torch

    ids: list[int] = []
    for text in texts:
        ids += [tokenizer.bos_token_id, *tokenizer(text, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
    block = spec.pretrain_block
    n_blocks = len(ids) // block
    if n_blocks == 0 or spec.pretrain_epochs <= 0:
        return []
    data = torch.tensor(ids[: n_blocks * block]).view(n_blocks, block)
    generator = torch.Generator().manual_seed(spec.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.pretrain_learning_rate, weight_decay=0.0)
    steps = spec.pretrain_epochs * math.ceil(n_blocks / spec.pretrain_batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, spec.pretrain_learning_rate, total_steps=steps)
    history = []
    model.train()
    step = 0
    for epoch in range(spec.pretrain_epochs):
        order = torch.randperm(n_blocks, generator=generator)
        for start in range(0, n_blocks, spec.pretrain_batch):
            batch = data[order[start : start + spec.pretrain_batch]]
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            step += 1
            history.append({"step": step, "epoch": epoch + 1, "loss": loss.item()})
        log(f"pretraining epoch {epoch + 1}/{spec.pretrain_epochs}: loss {history[-1]['loss']:.3f} ({n_blocks} blocks)")
    model.eval()
    return history


def build_tiny_model(
    rows: Sequence[dict[str, Any]], out_dir: Path, spec: TinyModelSpec, log: Log = print
) -> dict[str, Any]:
    """Build the built-in model from training rows into ``out_dir``; return its summary."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    started = time.perf_counter()
    corpus = all_texts(rows)
    if not corpus:
        raise BaseModelError("the training split holds no text to train a tokenizer on")
    tokenizer = train_tokenizer(corpus, spec.vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.heads,
        max_position_embeddings=spec.max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(config)
    log(f"built a {sum(p.numel() for p in model.parameters()):,}-parameter Llama, vocabulary {len(tokenizer)}")
    history = _pretrain(model, tokenizer, prompt_texts(rows), spec, log)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    summary = {
        "source": BUILTIN,
        "spec": asdict(spec),
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocabulary": len(tokenizer),
        "pretraining_steps": len(history),
        "pretraining_final_loss": history[-1]["loss"] if history else None,
        "seconds": round(time.perf_counter() - started, 2),
    }
    (out_dir / "pretraining_history.json").write_text(json.dumps(history))
    return summary


def reference_pretrained(source: str, out_dir: Path, allow_download: bool, log: Log = print) -> dict[str, Any]:
    """Record a Hugging Face model id or local path as the base model, after checking that it loads.

    The weights stay where they are (the hub cache or the given folder); ``out_dir`` keeps the
    reference, the resolved config and the tokenizer, so lineage names exactly what was used.
    """
    from transformers import AutoConfig, AutoTokenizer

    local = Path(source).expanduser()
    kwargs: dict[str, Any] = {} if local.exists() else {"local_files_only": not allow_download}
    try:
        config = AutoConfig.from_pretrained(str(local) if local.exists() else source, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(str(local) if local.exists() else source, **kwargs)
    except OSError as error:
        hint = "" if allow_download or local.exists() else " (downloads are off: set allow_download to fetch it)"
        raise BaseModelError(f"cannot load base model {source!r}{hint}: {error}") from error
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out_dir / "tokenizer")
    config.save_pretrained(out_dir / "config")
    reference = {
        "source": str(local.resolve()) if local.exists() else source,
        "allow_download": allow_download,
        "revision": getattr(config, "_commit_hash", None) or _folder_fingerprint(local),
    }
    (out_dir / SOURCE_FILE).write_text(json.dumps(reference, indent=2, sort_keys=True))
    log(f"base model {source}: {config.model_type}, vocabulary {len(tokenizer)}")
    return {"source": reference["source"], "model_type": config.model_type, "vocabulary": len(tokenizer)}


def _folder_fingerprint(folder: Path) -> str | None:
    """Return a hash of a local model folder's file names, sizes and modification times (None if no folder)."""
    if not folder.is_dir():
        return None
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(folder)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def model_location(base_dir: str | Path) -> tuple[str, dict[str, Any]]:
    """Return where the base model's weights load from and the keyword arguments to load them with."""
    base_dir = Path(base_dir)
    reference = base_dir / SOURCE_FILE
    if not reference.exists():
        return str(base_dir), {}
    data = json.loads(reference.read_text())
    if Path(data["source"]).exists():
        return data["source"], {}
    return data["source"], {"local_files_only": not data.get("allow_download", False)}


def tokenizer_location(base_dir: str | Path) -> str:
    """Return the folder the base model's tokenizer loads from."""
    base_dir = Path(base_dir)
    return str(base_dir / "tokenizer") if (base_dir / SOURCE_FILE).exists() else str(base_dir)
