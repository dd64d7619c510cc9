"""The model card of a trained adapter or model: Hub metadata, what was trained on what, and the data selection.

Written with `huggingface_hub.ModelCard` after every save, over the card that PEFT (an adapter's template) or TRL
wrote there, whose tags it keeps. The base model is named by its Hub id, never a local path, which the Hub
would not take; the embedded default model is the Hub's SmolLM2-135M-Instruct.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from ..store.summary import Summary
from .card import card_section

EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
TAGS = ("selectit-trl", "data-selection", "trl", "sft")


def hub_id(name: str | None) -> str | None:
    """`name` when it reads as a Hub id ("owner/name", or a bare "name"), not a local path."""
    if not name or Path(name).expanduser().exists() or name.startswith((".", "/", "~")):
        return None
    return name if name.count("/") <= 1 else None


@dataclass
class TrainingFacts:
    """What the card says of the run besides its selection; the trainer gathers them (`SelectiveSFTTrainer`)."""

    base_model: str | None  # a Hub id, or None for a local model
    adapter: dict | None  # LoRA's r, alpha, dropout and target modules; None for a full model
    quantized: bool  # the base model was loaded in 4-bit (QLoRA)
    settings: dict = field(default_factory=dict)  # training settings, as shown
    dataset: str | None = None  # the data's name (`selection_dataset_name`)


def installed(name: str) -> str:
    """A distribution's installed version, or "not installed"."""
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def _versions() -> str:
    return ", ".join(f"{label} {installed(name)}" for label, name in (
        ("selectit-trl", "selectit-trl"), ("TRL", "trl"), ("Transformers", "transformers"), ("PEFT", "peft"),
        ("PyTorch", "torch"), ("Datasets", "datasets")))


def _existing_tags(readme: Path) -> list[str]:
    """The tags of the card already there (PEFT's `lora`, `base_model:adapter:...`; TRL's `trl`, `sft`)."""
    from huggingface_hub import ModelCard

    if not readme.is_file():
        return []
    try:
        return list(ModelCard.load(readme).data.tags or [])
    except Exception:  # a card that is not ours to judge: keep none of its tags rather than fail the save
        return []


def model_card_text(summary: Summary, facts: TrainingFacts, name: str, kept_tags: list[str]) -> str:
    from huggingface_hub import ModelCard, ModelCardData

    base, adapter, dataset = facts.base_model, facts.adapter, facts.dataset
    # PEFT tags an adapter with its base model's path; a local path means nothing on the Hub.
    kept_tags = [tag for tag in kept_tags if not tag.startswith("base_model:")]
    extra = [*(["lora"] if adapter else []), *(["qlora"] if facts.quantized else []),
             *([f"base_model:adapter:{base}"] if adapter and base else [])]
    tags = list(dict.fromkeys([*kept_tags, *TAGS, *extra]))
    data = ModelCardData(
        model_name=name, base_model=base, library_name="peft" if adapter else "transformers",
        datasets=[dataset] if hub_id(dataset) else None, tags=tags, pipeline_tag="text-generation",
    )
    counts = summary.counts
    what = "A LoRA adapter" + (" (QLoRA: the base model in 4-bit NF4)" if facts.quantized else "") if adapter else "A model"
    source = f"[{base}](https://huggingface.co/{base})" if base else "a local model"
    data_name = f"`{dataset}`" if dataset else "its training data"
    settings = {**({"Fine-tuning": f"LoRA, r = {adapter['r']}, α = {adapter['lora_alpha']}, dropout "
                              f"{adapter['lora_dropout']}, on {adapter['target_modules']}"} if adapter else
                   {"Fine-tuning": "full fine-tuning"}), **facts.settings}
    if adapter:
        load = ["from peft import AutoPeftModelForCausalLM", "",
                f'model = AutoPeftModelForCausalLM.from_pretrained("{name}")']
    else:
        load = ["from transformers import AutoModelForCausalLM", "",
                f'model = AutoModelForCausalLM.from_pretrained("{name}")']
    lines = [
        f"# {name}",
        "",
        f"{what} fine-tuned from {source} with TRL's `SFTTrainer`, on {counts['selected']:,} of the "
        f"{counts['total']:,} rows of {data_name}: the rows that {summary.label} kept (selectit-trl).",
        "",
        card_section(summary).rstrip("\n"),
        "",
        "## Training",
        "",
        "| Setting | Value |",
        "|---|---|",
        *(f"| {key} | {value} |" for key, value in settings.items()),
        "",
        "## Use",
        "",
        "```python",
        *load,
        "```",
        "",
        "## Framework versions",
        "",
        _versions(),
        "",
    ]
    return ModelCard.from_template(data, template_str="---\n{{ card_data }}\n---\n\n" + "\n".join(lines)).content


def write_model_card(folder: Path, summary: Summary, facts: TrainingFacts) -> None:
    """Write `folder/README.md`, keeping the tags of the card PEFT or TRL left there."""
    readme = Path(folder) / "README.md"
    text = model_card_text(summary, facts, Path(folder).resolve().name, _existing_tags(readme))
    readme.write_text(text, encoding="utf-8")


def training_facts(model, args, base_model: str | None, steps: int) -> TrainingFacts:
    """The card's facts of a trained `model` (a PeftModel for an adapter) under `args`, after `steps` steps."""
    peft_config = getattr(model, "peft_config", {}).get("default")
    adapter = None
    if peft_config is not None:
        adapter = {key: getattr(peft_config, key, None) for key in ("r", "lora_alpha", "lora_dropout")}
        modules = getattr(peft_config, "target_modules", None)
        adapter["target_modules"] = ", ".join(sorted(modules)) if isinstance(modules, (set, list, tuple)) else modules
    quantized = bool(getattr(model, "is_loaded_in_4bit", False) or getattr(getattr(model, "config", None),
                                                                       "quantization_config", None))
    scheduler = getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)
    settings = {
        "Steps": f"{steps:,}" + (f" (max_steps {args.max_steps})" if args.max_steps > 0 else
                                 f" ({args.num_train_epochs} epochs)"),
        "Learning rate": f"{args.learning_rate:g}, {scheduler} schedule",
        "Batch": f"{args.per_device_train_batch_size} per device × {args.gradient_accumulation_steps} accumulation × "
                 f"{args.world_size} process(es)",
        "Max length": (f"{args.max_length} tokens" if args.max_length else "untruncated") + (", packed" if args.packing else ""),
        "Seed": str(args.seed),
    }
    return TrainingFacts(base_model, adapter, quantized, settings, args.selection_dataset_name)
