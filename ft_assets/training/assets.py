"""Training assets: the base model, the LoRA adapter (trained out of process through Dagster Pipes), the merged model.

Each asset first looks for an artifact already made from the same input versions, config and
code (``ArtifactStore.made_from``): a rerun with nothing changed reuses it instead of training
again. Metadata is read back from the artifact folder, so a reused artifact shows the same.
"""

import json
import os
import sys
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Literal

import dagster as dg
from pydantic import Field

from ft_assets.artifacts import ArtifactRef, inputs_key
from ft_assets.code_versions import source_version
from ft_assets.defaults import BASE_MODEL_ENV, BUILTIN_SOURCE
from ft_assets.metadata import image, inline_curves, reading_order, rounded, table
from ft_assets.readable import settings_table, text
from ft_assets.resources import ArtifactStore, LineageStore

GROUP = "training"
BASE_CODE = source_version(__name__, "base_model")
LORA_CODE = source_version(__name__, "lora_adapter")
MERGE_CODE = source_version(__name__, "merged_model")
# Files that describe an artifact (timings, curves, model card) without being what a consumer loads:
# they stay out of its version, so the same weights from the same inputs give the same version.
BASE_REPORTS = ("pretraining_history.json", "pretraining_loss.png")
LORA_REPORTS = ("training_summary.json", "training_history.json", "loss_curve.png", "README.md")
BUILTIN_LEARNING_RATE = 2e-2
PRETRAINED_LEARNING_RATE = 2e-4
PARITY_TOLERANCE = 1e-4
HALF_PRECISION_TOLERANCE = 5e-2
CPU = "cpu"


class BaseModelConfig(dg.Config):
    """Which base model to fine-tune: the built-in tiny Llama (default) or a Hugging Face id / local path."""

    source: str = Field(
        default_factory=lambda: os.environ.get(BASE_MODEL_ENV, BUILTIN_SOURCE),
        description=f"'builtin' (a small Llama built offline), a hub id or a local path; default {BASE_MODEL_ENV} "
        "or builtin.",
    )
    allow_download: bool = Field(False, description="Let a hub id be downloaded (otherwise only the local cache).")
    seed: int = Field(0, description="Seed of the built-in model's initialisation and pretraining.")
    vocab_size: int = Field(1024, description="Built-in model: tokenizer vocabulary size.")
    hidden_size: int = Field(128, description="Built-in model: hidden size.")
    intermediate_size: int = Field(256, description="Built-in model: MLP size.")
    layers: int = Field(2, description="Built-in model: decoder layers.")
    heads: int = Field(4, description="Built-in model: attention heads.")
    pretrain_epochs: int = Field(
        10, description="Built-in model: epochs of causal-LM pretraining on the prompts (0: none)."
    )
    pretrain_learning_rate: float = Field(3e-3, description="Built-in model: pretraining learning rate.")


class LoraAdapterConfig(dg.Config):
    """LoRA (peft) and trainer (trl SFTTrainer) settings."""

    r: int = Field(16, description="LoRA rank.")
    alpha: int = Field(32, description="LoRA alpha (scaling = alpha / r).")
    dropout: float = Field(0.05, description="LoRA dropout.")
    target_modules: list[str] = Field(["q_proj", "v_proj"], description="Modules that get LoRA matrices.")
    epochs: float = Field(12.0, description="Training epochs.")
    learning_rate: float | None = Field(
        None,
        description=f"Learning rate; default {BUILTIN_LEARNING_RATE} for the built-in model, "
        f"{PRETRAINED_LEARNING_RATE} for a pretrained one.",
    )
    batch_size: int = Field(8, description="Examples per device per step.")
    gradient_accumulation: int = Field(1, description="Steps accumulated per optimizer update.")
    max_length: int = Field(512, description="Longest tokenized example (longer ones are truncated).")
    warmup: float = Field(0.05, description="Warmup: a share of the steps (< 1) or a number of steps.")
    seed: int = Field(0, description="Training seed.")
    early_stopping_patience: int | None = Field(
        None, description="Stop after this many epochs without a better eval loss."
    )
    init_from: Literal["base", "champion"] = Field(
        "base",
        description="'base': a fresh adapter; 'champion': continue training the serving model's adapter (it must "
        "have been trained on this base_model; its rank and target modules are kept).",
    )
    quantization: Literal["none", "4bit"] = Field("none", description="'4bit' for QLoRA (needs CUDA and bitsandbytes).")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: fp32 on CPU, bf16/fp16 on GPU."
    )


class TrainingLauncher(dg.ConfigurableResource):
    """How the training process is started: plain Python by default, or e.g. ``accelerate launch`` / ``torchrun``."""

    launcher: list[str] = Field(
        default_factory=list,
        description="Command that starts the training module, e.g. ['accelerate', 'launch'] or "
        "['torchrun', '--nproc-per-node', '4']; empty: this Python interpreter.",
    )
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment variables for the process.")

    def command(self, module: str, *args: str) -> list[str]:
        """Return the command line that runs ``module`` with ``args``."""
        if self.launcher:
            return [*self.launcher, "-m", module, *args]
        return [sys.executable, "-m", module, *args]


def _spec(config: BaseModelConfig) -> Any:
    from ft_assets.training.base_model import TinyModelSpec

    values = config.model_dump()
    return TinyModelSpec(**{f.name: values[f.name] for f in fields(TinyModelSpec) if f.name in values})


def _reuse(context: dg.AssetExecutionContext, artifacts: ArtifactStore, asset: str, key: str) -> ArtifactRef | None:
    ref = artifacts.made_from(asset, key)
    if ref is not None:
        context.log.info(f"{asset}: inputs, config and code unchanged; reusing {ref.path}")
    return ref


def _output(
    context: dg.AssetExecutionContext,
    ref: ArtifactRef,
    parents: list[ArtifactRef],
    config: dg.Config,
    lineage: LineageStore,
    reused: bool,
    metadata: tuple[dict[str, Any], dict[str, Any]],
    device: str | None,
) -> dg.Output[ArtifactRef]:
    """Return the output with its metadata in reading order: figures, ``reused``, tables and pictures, lineage last."""
    figures, details = metadata
    recorded = lineage.record(context, ref, parents, config, device=device)
    return dg.Output(
        ref,
        data_version=dg.DataVersion(ref.version),
        metadata=reading_order({**figures, "reused": reused, **details}, recorded=recorded),
    )


def _points(history: list[dict[str, Any]], key: str) -> list[tuple[float, float]]:
    return [(h["step"], h[key]) for h in history if h.get(key) is not None]


def _base_metadata(ref: ArtifactRef) -> tuple[dict[str, Any], dict[str, Any]]:
    summary = json.loads(ref.file("summary.json").read_text())
    figures: dict[str, Any] = {"source": summary["source"]}
    if "parameters" in summary:
        figures["parameters"] = summary["parameters"]
    settings = {k: v for k, v in summary.items() if k not in ("source", "parameters", "spec")}
    details: dict[str, Any] = {"settings": settings_table({**summary.get("spec", {}), **settings})}
    history = ref.file("pretraining_history.json")
    points = _points(json.loads(history.read_text()), "loss") if history.exists() else []
    if points:
        details["pretraining_curve"] = inline_curves({"pretraining loss": points}, alt="pretraining loss curve")
    if ref.file("pretraining_loss.png").exists():
        details["pretraining_curve_png"] = image(ref.file("pretraining_loss.png"), "pretraining loss")
    return figures, details


@dg.asset(
    group_name=GROUP,
    code_version=BASE_CODE,
    kinds={"pytorch"},
    deps=["base_model_source"],
    description="The model to fine-tune. Default: a small Llama built offline (BPE tokenizer trained on the train "
    "split, seeded init, short pretraining on the prompts only). Or a Hugging Face id / local path.",
)
def base_model(
    context: dg.AssetExecutionContext,
    config: BaseModelConfig,
    train_split: ArtifactRef,
    artifacts: ArtifactStore,
    lineage: LineageStore,
) -> dg.Output[ArtifactRef]:
    """Build (or reference) the base model and save it as an artifact."""
    builtin = config.source == BUILTIN_SOURCE
    key = inputs_key(code=BASE_CODE, config=config.model_dump(), train=train_split.version if builtin else None)
    ref = _reuse(context, artifacts, "base_model", key)
    reused = ref is not None
    if ref is None:
        from ft_assets.plots import loss_curve
        from ft_assets.training.base_model import BaseModelError, build_tiny_model, reference_pretrained
        from ft_assets.training.lora import read_rows

        with artifacts.stage("base_model") as staging:
            try:
                if builtin:
                    summary = build_tiny_model(
                        read_rows(train_split.file("data.jsonl")), staging, _spec(config), context.log.info
                    )
                else:
                    summary = reference_pretrained(config.source, staging, config.allow_download, context.log.info)
            except BaseModelError as error:
                raise dg.Failure(f"base_model: {error}") from error
            summary.pop("seconds", None)
            (staging / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
            history = staging / "pretraining_history.json"
            if history.exists() and json.loads(history.read_text()):
                points = [(h["step"], h["loss"]) for h in json.loads(history.read_text())]
                loss_curve({"pretraining": points}, staging / "pretraining_loss.png", "base model pretraining")
            ref = artifacts.publish(staging, "base_model", reports=BASE_REPORTS)
        artifacts.remember("base_model", key, ref)
    parents = [train_split] if builtin else []
    device = CPU if builtin else None  # the built-in model is pretrained on the CPU; a hub model is only referenced
    return _output(context, ref, parents, config, lineage, reused, _base_metadata(ref), device)


def _settings(config: LoraAdapterConfig, base: ArtifactRef) -> Any:
    from ft_assets.training.lora import LoraSettings

    values = config.model_dump(exclude={"init_from"})  # where training starts is an input, not a setting
    if values["learning_rate"] is None:
        builtin = json.loads(base.file("summary.json").read_text())["source"].startswith("builtin")
        values["learning_rate"] = BUILTIN_LEARNING_RATE if builtin else PRETRAINED_LEARNING_RATE
    values["target_modules"] = tuple(values["target_modules"])
    return LoraSettings(**values)


def model_card(base: ArtifactRef, train: ArtifactRef, validation: ArtifactRef, summary: dict[str, Any]) -> str:
    """Return the adapter's model card (Markdown): what it was trained from, how, and how to load it."""
    settings = {k: v for k, v in summary["settings"].items() if k != "extra" or v}
    rows = "\n".join(f"| {name} | {text(value)} |" for name, value in sorted(settings.items()))
    data_note = _data_note(summary.get("data", {}).get("train", {}))
    if summary.get("initialized_from"):
        data_note += f"Continued from the champion's adapter lora_adapter@{summary['initialized_from']}.\n\n"
    eval_loss = summary.get("final_eval_loss")
    results = [
        f"- final train loss: {text(rounded(summary['final_train_loss']))}",
        *([f"- final eval loss: {text(rounded(eval_loss))}"] if eval_loss is not None else []),
        f"- {summary['steps']} steps (epochs run: {text(summary.get('epochs_run'))}) on {summary['device']}, "
        f"precision {summary['precision']}",
        f"- {text(summary.get('trainable_parameters'))} trainable parameters",
    ]
    results_text = "\n".join(results)
    return f"""# LoRA adapter (ft-assets)

Trained by the `lora_adapter` asset of ft-assets with peft and trl (supervised fine-tuning; the loss counts the
assistant turns, except those of weight 0).

## Made from

| input | version | examples |
|---|---|---|
| base_model | {base.version} | |
| train_split | {train.version} | {summary["train_examples"]} |
| validation_split | {validation.version} | {summary["validation_examples"]} |

{data_note}## Results

{results_text}

## Hyperparameters

| setting | value |
|---|---|
{rows}

## Use

Load it on top of the base model folder named above: `PeftModel.from_pretrained(base, "<this folder>")`.
"""


def _data_note(train: dict[str, Any]) -> str:
    """Say how the train split's rows were used, when not every row was a plain trained chat example."""
    plain = train.get("trained_examples") == train.get("rows") and not train.get("preference_rows_as_chat")
    if not train or (plain and not train.get("weight_zero_turns")):
        return ""
    return (
        f"Of {train['rows']} train rows: {train['preference_rows_as_chat']} preference rows trained as input + "
        f"preferred answer, {train['rows_without_trained_turn']} skipped (every assistant turn has weight 0); "
        f"{train['weight_zero_turns']} weight-0 assistant turns kept as context without loss.\n\n"
    )


TRAINING_ROW_COLUMNS = {"split": "string", "rows": "int", "trained_examples": "int",
                        "preference_rows_as_chat": "int", "rows_without_trained_turn": "int",
                        "weight_zero_turns": "int", "refused_rows": "int"}  # fmt: skip
LOSS_COLUMNS = {"step": "int", "epoch": "float", "loss": "float", "eval_loss": "float", "learning_rate": "float"}
RUN_FACTS = ("initialized_from", "device", "steps", "epochs_run", "train_examples", "validation_examples",
             "total_parameters")  # fmt: skip


def _lora_metadata(ref: ArtifactRef, reused: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return lora_adapter's figures (losses; speed only when it trained in this run) and its tables and pictures.

    A reused adapter did not train here: its timings are told as text, not as figures the Plots tab would chart.
    """
    summary = json.loads(ref.file("training_summary.json").read_text())
    history = json.loads(ref.file("training_history.json").read_text())
    figures: dict[str, Any] = {
        "final_train_loss": rounded(summary["final_train_loss"]),
        "final_eval_loss": rounded(summary["final_eval_loss"]),
        "loss_curve": inline_curves(  # next to the losses, so the first screen shows it
            {"train loss": _points(history, "loss"), "eval loss": _points(history, "eval_loss")}, alt="loss curve"
        ),
    }
    if not reused:
        figures["tokens_per_second"] = summary["tokens_per_second"]
        figures["train_seconds"] = summary["train_seconds"]
    figures["trainable_parameters"] = summary["trainable_parameters"]
    details: dict[str, Any] = {}
    if reused:
        details["trained"] = (
            f"not in this run: reused; it trained in {summary['train_seconds']:.1f} s at "
            f"{summary['tokens_per_second']:,.0f} tokens/s when first made"
        )
    settings = {k: v for k, v in summary["settings"].items() if k != "extra" or v}
    if settings.get("precision") not in (None, summary["precision"]):  # "auto (fp32)": asked for, then used
        settings["precision"] = f"{settings['precision']} ({summary['precision']})"
    facts = {k: summary[k] for k in RUN_FACTS if summary.get(k) is not None}
    data = summary.get("data", {})
    details |= {
        "hyperparameters": settings_table({**settings, **facts}),
        "training_rows": table([{"split": split, **counts} for split, counts in data.items()], TRAINING_ROW_COLUMNS),
        "loss_table": table([h for h in history if "loss" in h or "eval_loss" in h], LOSS_COLUMNS),
        "loss_curve_png": image(ref.file("loss_curve.png"), "training loss curve"),
        "model_card": dg.MetadataValue.md(ref.file("README.md").read_text()),
    }
    return figures, details


@dg.asset(
    group_name=GROUP,
    code_version=LORA_CODE,
    kinds={"pytorch"},
    description="A LoRA adapter (peft) trained with trl's SFTTrainer on train_split, evaluated on validation_split "
    "each epoch. Training runs in its own process through Dagster Pipes; progress streams into the run's logs.",
)
def lora_adapter(
    context: dg.AssetExecutionContext,
    config: LoraAdapterConfig,
    base_model: ArtifactRef,
    train_split: ArtifactRef,
    validation_split: ArtifactRef,
    artifacts: ArtifactStore,
    lineage: LineageStore,
    pipes_client: dg.PipesSubprocessClient,
    training_launcher: TrainingLauncher,
) -> dg.Output[ArtifactRef]:
    """Train the adapter out of process, write its model card and loss curve, and publish it."""
    settings = _settings(config, base_model)
    start = _champion_adapter(lineage, base_model) if config.init_from == "champion" else None
    versions = {"base": base_model.version, "train": train_split.version, "validation": validation_split.version}
    key = inputs_key(code=LORA_CODE, settings=asdict(settings), init=start and start.version, **versions)
    ref = _reuse(context, artifacts, "lora_adapter", key)
    reused = ref is not None
    if ref is None:
        if start is not None:
            context.log.info(f"lora_adapter: continuing from the champion's adapter lora_adapter@{start.version}")
        ref = _train(
            context, settings, base_model, train_split, validation_split, artifacts, pipes_client, training_launcher,
            start,
        )  # fmt: skip
        artifacts.remember("lora_adapter", key, ref)
    metadata = _lora_metadata(ref, reused)
    device = json.loads(ref.file("training_summary.json").read_text())["device"]
    parents = [base_model, train_split, validation_split, *([start] if start else [])]
    return _output(context, ref, parents, config, lineage, reused, metadata, device)


def _champion_adapter(lineage: LineageStore, base: ArtifactRef) -> ArtifactRef:
    """Return the adapter of the current champion, to continue training from; fail saying why it cannot be."""
    from ft_assets.champion.store import current_champion, history, materialization, parents_of

    champion = current_champion(history(lineage.path))
    if champion is None:
        raise dg.Failure("lora_adapter: init_from is 'champion' but there is no champion yet; use init_from: base")
    if champion.asset != "merged_model":
        raise dg.Failure(
            f"lora_adapter: the champion {champion.name} is not a local merged model, so it has no LoRA adapter to "
            "continue from; use init_from: base (an Azure champion continues through azure_finetune_job)"
        )
    parents = parents_of(lineage.path, "merged_model", champion.version)
    adapter, trained_on = parents.get("lora_adapter"), parents.get("base_model")
    if adapter is None:
        raise dg.Failure(f"lora_adapter: lineage records no adapter of the champion {champion.name}")
    if trained_on != base.version:
        raise dg.Failure(
            f"lora_adapter: the champion's adapter lora_adapter@{adapter} was trained on base_model@{trained_on}, "
            f"not on this base_model@{base.version}; continue only on the same base, or use init_from: base"
        )
    recorded = materialization(lineage.path, "lora_adapter", adapter)
    if recorded is None or not recorded["path"] or not Path(recorded["path"]).is_dir():
        raise dg.Failure(f"lora_adapter: the folder of the champion's adapter lora_adapter@{adapter} is gone")
    return ArtifactRef("lora_adapter", adapter, recorded["path"])


def _train(
    context: dg.AssetExecutionContext,
    settings: Any,
    base: ArtifactRef,
    train: ArtifactRef,
    validation: ArtifactRef,
    artifacts: ArtifactStore,
    pipes_client: dg.PipesSubprocessClient,
    launcher: TrainingLauncher,
    start: ArtifactRef | None = None,
) -> ArtifactRef:
    from ft_assets.plots import loss_curve

    with artifacts.stage("lora_adapter") as staging, artifacts.scratch("lora_adapter") as scratch:
        job = {
            "base_dir": base.path,
            "train_path": str(train.file("data.jsonl")),
            "validation_path": str(validation.file("data.jsonl")) if _has_rows(validation) else None,
            "out_dir": str(staging),
            "scratch": str(scratch),
            "settings": asdict(settings),
            "error_file": str(scratch / "error.txt"),
            "init_adapter": start.path if start else None,
        }
        job_file = scratch / "job.json"
        job_file.write_text(json.dumps(job, indent=2))
        command = launcher.command("ft_assets.training.lora_pipes", str(job_file))
        context.log.info(f"lora_adapter: starting {' '.join(command)}")
        try:
            pipes_client.run(context=context, command=command, env=launcher.env or None)
        except Exception as error:  # any Pipes client: a local process exit, a remote job failure
            cause = Path(job["error_file"])
            reason = cause.read_text() if cause.exists() else f"{error} (see the process output above)"
            raise dg.Failure(f"lora_adapter: training failed: {reason}") from error
        if not (staging / "training_summary.json").exists():
            raise dg.Failure("lora_adapter: the training process ended without saving an adapter; see its log above")
        summary = json.loads((staging / "training_summary.json").read_text())
        history = json.loads((staging / "training_history.json").read_text())
        loss_curve(
            {
                "train": [(h["step"], h["loss"]) for h in history if "loss" in h],
                "validation": [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h],
            },
            staging / "loss_curve.png",
            "LoRA training",
        )
        (staging / "README.md").write_text(model_card(base, train, validation, summary))
        return artifacts.publish(staging, "lora_adapter", reports=LORA_REPORTS)


def _has_rows(split: ArtifactRef) -> bool:
    return split.file("data.jsonl").stat().st_size > 0


@dg.asset(
    group_name=GROUP,
    code_version=MERGE_CODE,
    kinds={"pytorch", "safetensors"},
    description="base_model with lora_adapter folded into its weights (merge_and_unload), saved as safetensors "
    "with its tokenizer: loads with plain transformers, no peft needed.",
)
def merged_model(
    context: dg.AssetExecutionContext,
    base_model: ArtifactRef,
    lora_adapter: ArtifactRef,
    artifacts: ArtifactStore,
    lineage: LineageStore,
) -> dg.Output[ArtifactRef]:
    """Merge the adapter into the base model."""
    key = inputs_key(code=MERGE_CODE, base=base_model.version, adapter=lora_adapter.version)
    ref = _reuse(context, artifacts, "merged_model", key)
    reused = ref is not None
    if ref is None:
        from ft_assets.training.merge import MergeError, merge_adapter

        with artifacts.stage("merged_model") as staging:
            try:
                summary = merge_adapter(base_model.path, lora_adapter.path, staging)
            except MergeError as error:
                raise dg.Failure(f"merged_model: {error}") from error
            (staging / "merge_summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
            ref = artifacts.publish(staging, "merged_model")
        artifacts.remember("merged_model", key, ref)
    summary = json.loads(ref.file("merge_summary.json").read_text())
    figures = {"parameters": summary["parameters"], "dtype": summary["dtype"].removeprefix("torch.")}
    return _output(context, ref, [base_model, lora_adapter], {}, lineage, reused, (figures, {}), CPU)  # on the CPU


@dg.asset_check(
    asset="merged_model",
    additional_ins={"base_model": dg.AssetIn("base_model"), "lora_adapter": dg.AssetIn("lora_adapter"),
                    "test_split": dg.AssetIn("test_split"), "validation_split": dg.AssetIn("validation_split"),
                    "train_split": dg.AssetIn("train_split")},
    blocking=True,
    description=f"The merged model reloads with plain transformers and runs generation (its answer is shown), and "
    f"its logits match "
    f"base + adapter on fixed prompts of the test split (validation, then train, when it is empty) (max abs "
    f"difference <= {PARITY_TOLERANCE} for fp32 weights, {HALF_PRECISION_TOLERANCE} for bf16/fp16 ones, whose "
    f"merged weights are rounded).",
)  # fmt: skip
def merged_model_matches_adapter(
    merged_model: ArtifactRef,
    base_model: ArtifactRef,
    lora_adapter: ArtifactRef,
    test_split: ArtifactRef,
    validation_split: ArtifactRef,
    train_split: ArtifactRef,
) -> dg.AssetCheckResult:
    """Compare merged and base + adapter logits, and let the reloaded merged model answer one prompt."""
    from ft_assets.evaluation.runners import eval_cases, load_model, run_local
    from ft_assets.training.lora import read_rows
    from ft_assets.training.merge import PARITY_PROMPTS, logits_difference

    cases, source = [], "no split"
    for split in (test_split, validation_split, train_split):
        cases = eval_cases(read_rows(split.file("data.jsonl")))[:PARITY_PROMPTS]
        if cases:
            source = split.asset
            break
    if not cases:
        return dg.AssetCheckResult(
            passed=False, metadata={"error": "no split holds a chat example with an answer to compare on"}
        )
    model, tokenizer = load_model(base_model.path, merged_dir=merged_model.path)
    prompts = [tokenizer.apply_chat_template(c.prompt, tokenize=False, add_generation_prompt=True) for c in cases]
    difference = logits_difference(base_model.path, lora_adapter.path, merged_model.path, prompts)
    dtype = json.loads(merged_model.file("merge_summary.json").read_text()).get("dtype", "")
    tolerance = PARITY_TOLERANCE if dtype.endswith("float32") else HALF_PRECISION_TOLERANCE
    answer = run_local(model, tokenizer, cases[:1], log=lambda _: None).answers[0]
    return dg.AssetCheckResult(
        passed=difference <= tolerance,
        metadata={"max_abs_logit_difference": difference, "tolerance": tolerance, "prompts": len(prompts),
                  "compared_on": source, "reloaded_answer": answer or "(empty)", "gold_answer": cases[0].gold},
    )  # fmt: skip
