"""`SelectiveSFTTrainer`: an `SFTTrainer` that selects its training data with SelectIT before it trains."""

from __future__ import annotations

import logging

from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from trl import SFTTrainer

from . import formats
from .config import SelectiveSFTConfig
from .models import EMBEDDED_MODEL_ID, embedded_model_path, parameter_count, scoring_mode
from .selection import Scorer, SelectionResult, run_selection

logger = logging.getLogger(__name__)


def _model_id(model) -> str:
    if isinstance(model, str):
        return model
    return getattr(model.config, "_name_or_path", None) or type(model).__name__


class SelectiveSFTTrainer(SFTTrainer):
    """
    Trainer for supervised fine-tuning on the SelectIT-selected part of a dataset.

    It takes the same arguments as [`~trl.SFTTrainer`]. Before training, it rates every row of `train_dataset`
    with the model being tuned (adapters disabled, so the base model rates) and with any
    `args.selection_peer_models`, keeps the best `args.selection_ratio` of the rows, and trains on those. The
    scores go to `args.output_dir/selection/`.

    The model is loaded once: when `quantization_config` asks for 4-bit, the same 4-bit model scores and is then
    QLoRA-trained.

    Args:
        model (`str` or `PreTrainedModel`, *optional*):
            The model to tune, as an id, a local path or an instance. Defaults to the embedded
            SmolLM2-135M-Instruct (see [`embedded_model_path`]).
        args ([`SelectiveSFTConfig`], *optional*):
            Training and selection configuration.
        train_dataset ([`~datasets.Dataset`]):
            Rows in one of the formats of `selectit_trl.formats` (alpaca, messages, prompt/completion).
        processing_class (`PreTrainedTokenizerBase`, *optional*):
            The tokenizer; loaded from the model when not given.
        **kwargs:
            Everything else [`~trl.SFTTrainer`] accepts (`peft_config`, `quantization_config`, `eval_dataset`, ...).
    """

    _tag_names = ["trl", "sft", "selectit"]

    def __init__(
        self,
        model: str | PreTrainedModel | None = None,
        args: SelectiveSFTConfig | None = None,
        train_dataset: Dataset | None = None,
        processing_class=None,
        **kwargs,
    ):
        if model is None:
            model = embedded_model_path()
            self.selection_model_id = EMBEDDED_MODEL_ID
        else:
            self.selection_model_id = _model_id(model)
        if args is None:
            args = SelectiveSFTConfig(output_dir=f"{self.selection_model_id.split('/')[-1]}-SelectIT")
        if not isinstance(args, SelectiveSFTConfig):
            raise TypeError("SelectiveSFTTrainer needs a SelectiveSFTConfig, which carries the selection_* settings.")
        if train_dataset is None:
            raise ValueError("SelectiveSFTTrainer needs a train_dataset to select from.")
        if processing_class is None:
            source = model if isinstance(model, str) else model.config._name_or_path
            processing_class = AutoTokenizer.from_pretrained(source, trust_remote_code=args.trust_remote_code)

        # Two views of the same rows, index for index: what is rated, and what is trained on. The trained view is
        # kept aside unprepared, because the subset is cut from it in train(), after scoring.
        fmt = args.selection_dataset_format
        self.rating_samples = formats.rating_samples(train_dataset, fmt)
        conversational = bool(getattr(processing_class, "chat_template", None))
        self._selection_pool = formats.training_dataset(train_dataset, conversational, fmt)
        self.selection_result: SelectionResult | None = None

        super().__init__(model=model, args=args, train_dataset=self._selection_pool, processing_class=processing_class, **kwargs)

    def _scorer(self) -> Scorer:
        return Scorer(self.selection_model_id, self.model, self._tokenizer, parameter_count(self.model.config))

    def _load_peer(self, model_id: str) -> Scorer:
        """Load a peer the way the tuned model was loaded (same dtype and quantisation), on the same device."""
        init_kwargs = dict(self.args.model_init_kwargs or {})
        init_kwargs.setdefault("trust_remote_code", self.args.trust_remote_code)
        quantization = getattr(self.model.config, "quantization_config", None)
        if quantization is not None:
            init_kwargs.setdefault("quantization_config", quantization)
        peer = AutoModelForCausalLM.from_pretrained(model_id, **init_kwargs)
        if quantization is None:
            peer.to(self.model.device)
        peer.eval()
        tokenizer = AutoTokenizer.from_pretrained(model_id, trust_remote_code=self.args.trust_remote_code)
        return Scorer(model_id, peer, tokenizer, parameter_count(peer.config))

    def select(self, require_stored: bool = False) -> SelectionResult:
        """Run the selection phase alone: score every row, choose the subset, write `output_dir/selection/`.

        A finished selection from the same inputs in `output_dir` is reused rather than scored again.
        """
        with self.accelerator.main_process_first(), scoring_mode(self.model):
            # Only the main process scores; the others arrive afterwards and reuse the stored selection.
            self.selection_result = run_selection(
                self.rating_samples,
                self._scorer(),
                self.args,
                self.args.output_dir,
                peer_ids=self.args.selection_peer_models or (),
                load_peer=self._load_peer,
                require_stored=require_stored,
                progress=not self.args.disable_tqdm and self.accelerator.is_main_process,
            )
        result = self.selection_result
        logger.info(
            "SelectIT kept %d of %d samples (%s).", len(result.selected_indices), len(self.rating_samples), result.path
        )
        return result

    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, **kwargs):
        """Select (or reuse the stored selection), then train on the kept rows.

        With `resume_from_checkpoint`, the stored selection must exist and match the settings: training continues
        on exactly the subset it started with, and nothing is scored again.
        """
        result = self.select(require_stored=bool(resume_from_checkpoint))
        subset = self._selection_pool.select(result.kept_indices)
        if not self._skip_prepare_dataset:
            subset = self._prepare_dataset(
                subset, self.processing_class, self.args, self.args.packing, self._formatting_func, "train"
            )
        self.train_dataset = subset
        return super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial, **kwargs)
