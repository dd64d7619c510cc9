"""`SelectiveSFTTrainer`: an `SFTTrainer` that selects its training data with SelectIT before it trains."""

from __future__ import annotations

import contextlib
import copy
import logging
from pathlib import Path

from datasets import Dataset, DatasetDict, IterableDataset, IterableDatasetDict
from transformers import (
    AutoTokenizer,
    PreTrainedModel,
    TrainingArguments,
)
from transformers.integrations import is_deepspeed_zero3_enabled
from trl import SFTTrainer

from .. import strategies
from ..context import RunContext
from ..data import formats, training_view
from ..engine import hardware
from ..engine.models import (
    EMBEDDED_MODEL_ID,
    check_model_source,
    embedded_model_path,
    scoring_mode,
)
from ..engine.prompts import prompts_without_scale, score_token_ids
from ..engine.scoring import cap_onednn_cache
from ..errors import DatasetError, SelectionConfigError, StoredSelectionMismatch
from ..measures.base import Rater
from ..selection import diversity, processes
from ..selection.checks import check_instructions, check_keeps_rows, empty_responses
from ..selection.pipeline import SelectionResult, run_selection
from ..selection.plan import rating_prompts
from ..selection.probing import run_probe
from ..selection.recycling import RECYCLABLE_FORMATS
from ..selection.reuse import check_same_dataset, read_source, reuse_selection
from ..store import outputs
from .callbacks import LogSelection, RecordSelectionInCheckpoints, subset_in_checkpoint
from .config import SelectiveSFTConfig
from .model_card import EMBEDDED_HUB_ID, TrainingFacts, hub_id, training_facts, write_model_card
from .model_init import check_quantized_model_has_adapters, four_bit_compute, load_dtype, peer_rater, tuned_rater
from .streams import fingerprinting, is_shuffled, kept_rows, row_fingerprint

logger = logging.getLogger(__name__)

class SelectiveSFTTrainer(SFTTrainer):
    """
    Trainer for supervised fine-tuning on the SelectIT-selected part of a dataset.

    It takes [`~trl.SFTTrainer`]'s arguments, in the same order. Before training, it rates every row of `train_dataset`
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
            Training and selection configuration. A `TrainingArguments` or `SFTConfig` is turned into a
            SelectiveSFTConfig with the selection defaults, as SFTTrainer turns a `TrainingArguments` into an
            SFTConfig; the object passed in is never changed.
        train_dataset ([`~datasets.Dataset`] or [`~datasets.IterableDataset`]):
            Any dataset SFTTrainer trains on (text, messages, prompt/completion, pre-tokenized, or rows for a
            `formatting_func`), or alpaca, instruction/output, ShareGPT or translation rows, which are converted
            into a TRL shape (`data/training_view.py`). TRL receives the kept rows as they are, every column kept.
            An iterable dataset is rated in one pass and filtered to the kept rows in a second, so it must give the
            same rows in the same order each time.
        processing_class (`PreTrainedTokenizerBase`, *optional*):
            The tokenizer; loaded from the model when not given.
        eval_dataset (*optional*):
            Put in the shape the training rows take when its columns are in one of the rating formats, so that
            eval loss is computed as the training loss is; otherwise passed on as it is. Never rated.
        data_collator, compute_loss_func, compute_metrics, callbacks, optimizers,
        optimizer_cls_and_kwargs, preprocess_logits_for_metrics, quantization_config, peft_config, formatting_func:
            As for [`~trl.SFTTrainer`], which receives them unchanged.
    """

    _tag_names = ["trl", "sft", "selectit"]

    # SFTTrainer's own parameters, in its order, so that a call written for SFTTrainer (positional arguments
    # included) means the same here; tests/test_trainer.py checks the two signatures against each other.
    def __init__(
        self,
        model: str | PreTrainedModel | None = None,
        args: SelectiveSFTConfig | TrainingArguments | None = None,
        data_collator=None,
        train_dataset: Dataset | None = None,
        eval_dataset=None,
        processing_class=None,
        compute_loss_func=None,
        compute_metrics=None,
        callbacks=None,
        optimizers=(None, None),
        optimizer_cls_and_kwargs=None,
        preprocess_logits_for_metrics=None,
        quantization_config=None,
        peft_config=None,
        formatting_func=None,
    ):
        cap_onednn_cache()  # before anything runs a bf16 matmul on the CPU; see scoring.ONEDNN_CACHE_CAPACITY
        embedded = model is None
        if embedded:
            model = embedded_model_path()
        # Where the weights came from, for the tokenizer and the fingerprint; None for an unnamed in-memory model.
        self._model_source = model if isinstance(model, str) else (model.config._name_or_path or None)
        self.selection_model_id = EMBEDDED_MODEL_ID if embedded else (self._model_source or type(model).__name__)
        if args is None:
            args = SelectiveSFTConfig(output_dir=f"{self.selection_model_id.split('/')[-1]}-SelectIT")
        elif not isinstance(args, SelectiveSFTConfig):
            args = SelectiveSFTConfig.from_training_arguments(args)
        else:
            # The load settings below are this trainer's; the caller's config, and its model_init_kwargs, stay as
            # they were.
            args = copy.copy(args)
            args.model_init_kwargs = copy.copy(args.model_init_kwargs)
        if train_dataset is None:
            raise DatasetError("`train_dataset` is required: SelectiveSFTTrainer selects from its rows.")
        if isinstance(train_dataset, (DatasetDict, IterableDatasetDict)):
            raise DatasetError(
                f"train_dataset is a {type(train_dataset).__name__} with the splits {list(train_dataset)}: pass one split, "
                f"such as train_dataset[{next(iter(train_dataset), 'train')!r}]."
            )
        outputs.check_writable(args.output_dir)
        # Weights load from safetensors only, unless the user opts in to pickle files (checked here for local paths,
        # before anything loads; transformers refuses pickle-only hub repositories itself).
        allow_pickle = (args.model_init_kwargs or {}).get("use_safetensors") is False
        quantization = quantization_config or (args.model_init_kwargs or {}).get("quantization_config")
        if isinstance(model, str):
            args.model_init_kwargs = {"use_safetensors": True, **(args.model_init_kwargs or {})}
            dtype = load_dtype(model, args.model_init_kwargs, quantization, args)
            if dtype is not None:
                args.model_init_kwargs.pop("torch_dtype", None)  # the legacy name, now resolved into "dtype"
                args.model_init_kwargs["dtype"] = dtype
        else:
            compute = four_bit_compute(getattr(model.config, "quantization_config", None))
            hardware.warn_if_emulated(compute or model.dtype, hardware.device_type(args), "The model being tuned")
        check_quantized_model_has_adapters(model, quantization, peft_config)
        others = [*args.peer_specs(), *filter(None, [args.teacher_spec()])]
        for source in ([model] if isinstance(model, str) else []) + [peer.model for peer in others]:
            check_model_source(source, allow_pickle)
        if processing_class is None:
            processing_class = AutoTokenizer.from_pretrained(self._model_source, trust_remote_code=args.trust_remote_code)

        # Two views of the same rows, index for index: what is rated, and what is trained on. The trained view is
        # the user's own rows (converted only where TRL cannot train on their shape), kept aside unprepared: TRL
        # prepares the kept rows once, in train(), after scoring.
        tokenizer = getattr(processing_class, "tokenizer", processing_class)  # a multimodal processor's own tokenizer
        text_field = args.dataset_text_field
        fmt = self.dataset_format = formats.resolve_format(
            train_dataset, args.selection_dataset_format, text_field, formatting_func)
        if isinstance(train_dataset, IterableDataset) and is_shuffled(train_dataset):
            raise DatasetError(
                "The iterable train_dataset is shuffled, so it gives its rows in another order each epoch, and the kept "
                "rows, chosen by position, could not be found again. Pass it unshuffled; the Trainer draws batches in "
                "random order from a map-style Dataset by itself."
            )
        rows, self._row_fingerprints = train_dataset, None
        if isinstance(train_dataset, IterableDataset):
            # One streaming pass: each row is rated, and its fingerprint kept to check it in the second pass.
            self._row_fingerprints = []
            rows = fingerprinting(train_dataset, self._row_fingerprints)
        self.rating_samples = formats.rating_samples(
            rows, fmt, text_field=text_field, tokenizer=tokenizer, formatting_func=formatting_func)
        if self._row_fingerprints is not None:
            # The kept rows are read in a second pass: a source that gives nothing more (a one-shot iterator
            # behind a generator) is refused now, from its first row, rather than found empty in train().
            first = next(iter(train_dataset), None)
            if first is None or row_fingerprint(first) != self._row_fingerprints[0]:
                raise DatasetError(
                    "The iterable train_dataset cannot be iterated twice: after the pass that rated its rows, reading "
                    "it again gave " + ("nothing" if first is None else "another first row") + ". Selection reads "
                    "the kept rows in a second pass: pass a dataset that can be read again, or load it into a Dataset."
                )
        self._check_selection_inputs(args, processing_class)
        # A chat_template_path gives the tokenizer its template inside SFTTrainer.__init__, after this point.
        conversational = bool(getattr(tokenizer, "chat_template", None)) or args.chat_template_path is not None
        # With a formatting_func, TRL formats the user's own rows, whatever format they are rated as.
        trained_as = formats.FORMATTED if formatting_func is not None and fmt != "tokenized" else fmt
        self._training_shape = (conversational, trained_as, text_field)
        self._user_rows = train_dataset
        self._selection_pool = training_view.training_dataset(train_dataset, *self._training_shape)
        if formatting_func is None:
            eval_dataset = training_view.eval_in_training_shape(eval_dataset, conversational, args.selection_dataset_format, text_field)
        self.selection_result: SelectionResult | None = None

        self._deferring_pool = True  # see _prepare_dataset
        super().__init__(
            model=model, args=args, data_collator=data_collator, train_dataset=self._selection_pool,
            eval_dataset=eval_dataset, processing_class=processing_class, compute_loss_func=compute_loss_func,
            compute_metrics=compute_metrics, callbacks=callbacks, optimizers=optimizers,
            optimizer_cls_and_kwargs=optimizer_cls_and_kwargs, preprocess_logits_for_metrics=preprocess_logits_for_metrics,
            quantization_config=quantization_config, peft_config=peft_config, formatting_func=formatting_func,
        )
        self._deferring_pool = False
        # Until train() cuts the subset, train_dataset is the whole pool, prepared only if someone reads it.
        self._pool_unprepared = not self._skip_prepare_dataset
        self.add_callback(RecordSelectionInCheckpoints(self))
        self.add_callback(LogSelection(self))

    def _prepare_dataset(self, dataset, processing_class, args, packing, formatting_func, dataset_name):
        """TRL's preparation, except for the training pool while SFTTrainer.__init__ runs.

        The pool is prepared in train(), on the kept rows only, so that no row is tokenized twice and no dropped
        row at all. Its first row is prepared now and thrown away, so that TRL's own checks of the data (a
        `with_transform` dataset, a bad chat template) fail at construction, as with SFTTrainer.
        """
        if not (self._deferring_pool and dataset_name == "train"):
            return super()._prepare_dataset(dataset, processing_class, args, packing, formatting_func, dataset_name)
        first = dataset.select(range(1)) if isinstance(dataset, Dataset) else dataset.take(1)
        prepared = super()._prepare_dataset(first, processing_class, args, packing, formatting_func, dataset_name)
        if isinstance(prepared, IterableDataset):
            next(iter(prepared), None)  # an iterable's preparation is lazy: run it on that row
        return dataset

    @property
    def train_dataset(self):
        """The rows TRL trains on, prepared: the kept rows once train() has selected them. Before that, the whole
        pool, which is prepared (as SFTTrainer prepares it) only when this is read."""
        if self.__dict__.get("_pool_unprepared"):
            self._pool_unprepared = False
            self.__dict__["_train_dataset"] = super()._prepare_dataset(
                self.__dict__["_train_dataset"], self.processing_class, self.args, self.args.packing,
                self._formatting_func, "train")
        return self.__dict__.get("_train_dataset")

    @train_dataset.setter
    def train_dataset(self, value):
        self.__dict__["_train_dataset"] = value
        self.__dict__["_pool_unprepared"] = False

    def _check_selection_inputs(self, args: SelectiveSFTConfig, tokenizer) -> None:
        """Everything about the selection that can be wrong, checked before the model is loaded."""
        if args.selection_from:  # nothing is scored: the dataset must be the one that was
            check_same_dataset(args.selection_from, read_source(args.selection_from)[0], self.rating_samples)
            return
        if "ratings" in strategies.needed_measurements(strategies.parse_strategy(args.selection_strategy)):
            unscaled = prompts_without_scale(rating_prompts(args), args.selection_score_max)
            if unscaled:
                logger.warning(
                    "%d of the %d rating prompts never name the scale's top (%d), for example %r. The model then guesses "
                    "the scale, and its probabilities over 1..%d say less: write it in, as 'from 1 to {score_max}'.",
                    len(unscaled), args.selection_num_prompts, args.selection_score_max, unscaled[0][:80],
                    args.selection_score_max,
                )
            score_token_ids(tokenizer, args.selection_score_max)
        if args.selection_diversity != "none":
            diversity.check_available(args)
        if args.selection_teacher_model is not None and self.dataset_format not in RECYCLABLE_FORMATS:
            raise SelectionConfigError(
                f"selection_teacher_model rewrites single-turn instruction/response rows ({', '.join(RECYCLABLE_FORMATS)}); "
                f"this dataset is {self.dataset_format}. Convert it, or select without a teacher."
            )
        check_instructions(self.rating_samples, args)
        check_keeps_rows(len(self.rating_samples), args)
        # Pre-tokenized rows decode to text that may be empty where TRL still trains them: SFTTrainer takes them, so
        # construction does; a selection that could keep none is refused when it starts, before it measures.
        empty_responses(self.rating_samples, args.selection_strict, refuse_all_empty=self.dataset_format != "tokenized")

    def _raters(self) -> list[Rater]:
        """The model being tuned, then the peers."""
        tuned = tuned_rater(self.model, self.selection_model_id, self._model_source, self._tokenizer)
        return [tuned, *(peer_rater(self.args, self.model, p) for p in self.args.peer_specs())]

    def _context(self, allow_scoring: bool) -> RunContext:
        """This process among the run's processes, for the selection code."""
        state = self.accelerator.state
        return RunContext(
            self.args.output_dir, state.process_index, state.num_processes, processes.barrier(self.args.output_dir),
            progress=self.accelerator.is_main_process and not self.args.disable_tqdm, allow_scoring=allow_scoring,
        )

    @contextlib.contextmanager
    def _measuring(self, phase: str, instead: str | None):
        """Around a phase that measures: the model in scoring mode, a failure noted for the other processes, and,
        under ZeRO-3, a missing measurement explained (`instead` says what to do; None leaves it as it is)."""
        with processes.failure_noted(self.args.output_dir), scoring_mode(self.model):
            try:
                yield
            except StoredSelectionMismatch:
                if instead is not None and is_deepspeed_zero3_enabled():
                    raise SelectionConfigError(
                        f"DeepSpeed ZeRO-3 splits the weights between processes, so {phase} cannot score under it. "
                        + instead
                    ) from None
                raise

    def probe(self) -> dict:
        """Run the signal probe alone: score `selection_probe_size` rows and as many mismatched pairs, and return
        how well the scores tell them apart (AUROC, per model and combined). Also written to
        `output_dir/selection/probe.json`; its scores are stored, so a later selection reuses them.
        """
        # ZeRO-3 splits every weight between the processes, so none of them can run a forward pass on its own.
        context = self._context(allow_scoring=not is_deepspeed_zero3_enabled())
        with self._measuring("the probe", "Run `selectit-trl probe` without ZeRO-3 (in one process or under DDP)."):
            result = run_probe(self.rating_samples, self._raters(), self.args, context)
        context.barrier()
        return result

    def select(self) -> SelectionResult:
        """Run the selection phase alone: score every row, choose the subset, write `output_dir/selection/`.

        Stored probabilities made from the same token ids and weights are reused instead of scored again.
        """
        return self._select()

    def _select(self, resuming: bool = False, expected_indices_sha256: str | None = None) -> SelectionResult:
        # Under accelerate every process scores its own share of the batches into the store, then all of them read
        # the store back and make the same selection, so that every rank trains on the same subset. Only the main
        # process writes scores.jsonl and summary.json. A resumed run, and ZeRO-3, only read the store.
        context = self._context(allow_scoring=not resuming and not is_deepspeed_zero3_enabled())
        instead = ("Score first without ZeRO-3 (`selectit-trl score --config ...`, in one process or under DDP), then "
                   "train with ZeRO-3: the stored probabilities are reused and no forward pass runs.")
        # A resumed run's missing scores are its own error (StoredSelectionMismatch), ZeRO-3 or not.
        with self._measuring("selection", None if resuming else instead):
            if self.args.selection_from:
                self.selection_result = reuse_selection(self.args.selection_from, self.rating_samples, context,
                                                        expected_indices_sha256)
            else:
                self.selection_result = run_selection(
                    self.rating_samples, self._raters(), self.args, context,
                    expected_indices_sha256=expected_indices_sha256, dataset_format=self.dataset_format,
                    # selection_overwrite scores again once: a trainer's later selections reuse its first one's.
                    overwrite=self.args.selection_overwrite and self.selection_result is None,
                    teacher=peer_rater(self.args, self.model, teacher) if (teacher := self.args.teacher_spec()) else None,
                )
            if context.is_main:  # the kept rows as the user gave them: selection/subset.jsonl
                outputs.write_subset(self.args.output_dir, self._kept_user_rows(self.selection_result.kept_indices))
        context.barrier()  # the files are written before any process goes on
        result = self.selection_result
        logger.info("%s kept %d of %d samples (%s).", result.summary.label, len(result.selected_indices),
                    len(self.rating_samples), result.path)
        return result

    def _kept_user_rows(self, kept: list[int]) -> Dataset | IterableDataset:
        """The kept rows as the user gave them, in dataset order: for an iterable dataset, a second pass that checks
        each kept row against the one that was rated."""
        if isinstance(self._user_rows, Dataset):
            return self._user_rows.select(kept)
        return kept_rows(self._user_rows, kept, self._row_fingerprints)

    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, **kwargs):
        """Select (or reuse the stored selection), then train on the kept rows.

        With `resume_from_checkpoint`, nothing is scored: the stored probabilities must match, and the subset
        they select must be the one recorded in the checkpoint, so training continues on the rows it started on.
        """
        resuming = bool(resume_from_checkpoint)
        expected = subset_in_checkpoint(resume_from_checkpoint, self.args.output_dir) if resuming else None
        result = self._select(resuming=resuming, expected_indices_sha256=expected)
        kept = result.kept_indices
        if isinstance(self._selection_pool, Dataset):
            subset = self._selection_pool.select(kept)  # converted once, at construction
        else:  # an iterable pool converts as it streams: filter the user's rows, then convert the kept ones
            subset = training_view.training_dataset(self._kept_user_rows(kept), *self._training_shape)
        if result.recycled:
            # Rows that took a teacher's rewrite train on it, in the shape their format trains in.
            conversational = bool(getattr(self.processing_class, "chat_template", None))
            rewrites = {j: training_view.training_row(result.recycled[i], conversational)
                        for j, i in enumerate(kept) if i in result.recycled}
            subset = subset.map(lambda row, j: rewrites.get(j, row), with_indices=True)
        if not self._skip_prepare_dataset:
            subset = super()._prepare_dataset(
                subset, self.processing_class, self.args, self.args.packing, self._formatting_func, "train"
            )
        self.train_dataset = subset
        return super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial, **kwargs)

    def create_model_card(self, model_name=None, dataset_name=None, tags=None):
        """TRL's card, rewritten as selectit-trl's (its tags kept): what was trained, on which selection."""
        super().create_model_card(model_name=model_name, dataset_name=dataset_name, tags=tags)
        if self.is_world_process_zero() and self.selection_result is not None:
            write_model_card(Path(self.args.output_dir), self.selection_result.summary, self._card_facts())

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        """Save as `Trainer.save_model` does, then write the model card there (over PEFT's template)."""
        super().save_model(output_dir, _internal_call=_internal_call)
        if not self.is_world_process_zero() or self.selection_result is None:
            return
        folder = Path(output_dir or self.args.output_dir)
        if _internal_call and not (folder / "README.md").is_file():
            return  # a checkpoint of a full model: it has no card, and TRL writes one into output_dir
        write_model_card(folder, self.selection_result.summary, self._card_facts())

    def _card_facts(self) -> TrainingFacts:
        base = EMBEDDED_HUB_ID if self.selection_model_id == EMBEDDED_MODEL_ID else hub_id(self._model_source)
        return training_facts(self.model, self.args, base, self.state.global_step)
