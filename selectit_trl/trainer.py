"""`SelectiveSFTTrainer`: an `SFTTrainer` that selects its training data with SelectIT before it trains."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
from pathlib import Path

import torch
from datasets import Dataset, DatasetDict, IterableDataset, IterableDatasetDict
from peft import PeftModel
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    PreTrainedModel,
    TrainerCallback,
    TrainingArguments,
)
from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint
from trl import SFTTrainer

from . import diversity, formats, hardware, processes, store, strategies
from .card import selection_metrics, write_card_section
from .config import SelectiveSFTConfig
from .context import RunContext
from .errors import DatasetError, SelectionConfigError, StoredSelectionMismatch
from .measuring import Rater
from .models import (
    EMBEDDED_MODEL_ID,
    check_model_source,
    embedded_model_path,
    model_fingerprint,
    parameter_count,
    scoring_mode,
)
from .peers import PeerSpec
from .prompts import prompts_without_scale, score_token_ids
from .recycling import RECYCLABLE_FORMATS
from .scoring import cap_onednn_cache
from .selection import (
    SelectionResult,
    check_instructions,
    check_keeps_rows,
    empty_responses,
    rating_prompts,
    run_probe,
    run_selection,
)

logger = logging.getLogger(__name__)

CHECKPOINT_SELECTION_FILE = "selection.json"


def _context_length(config) -> int | None:
    return getattr(config.get_text_config(), "max_position_embeddings", None)


# What from_pretrained's keyword arguments say about where a configuration is found, for reading it alone.
_CONFIG_LOCATION_KEYS = ("revision", "trust_remote_code", "token", "cache_dir", "subfolder", "local_files_only",
                         "gguf_file")


def _four_bit_compute(quantization) -> torch.dtype | None:
    """The compute dtype of a 4-bit quantisation config (an object or its dict form), None when not 4-bit."""
    if isinstance(quantization, dict):  # another method's dict (GPTQ, AWQ) has no load_in_4bit
        if not quantization.get("load_in_4bit"):
            return None
        quantization = BitsAndBytesConfig.from_dict(quantization)
    if not getattr(quantization, "load_in_4bit", False):
        return None
    return hardware.as_dtype(getattr(quantization, "bnb_4bit_compute_dtype", None)) or torch.float32


def _load_dtype(model: str, init_kwargs: dict, quantization, args) -> torch.dtype | str | None:
    """The dtype the model being tuned loads in, with `auto` resolved for the hardware (`hardware.py`).

    In 4-bit, `auto` loads the layers left out of the quantisation in the compute dtype, as TRL's recipes do with
    one `dtype` for both. A dtype given as None means `auto`, as it does in transformers; with no dtype at all,
    TRL's own default (float32) applies. A 16-bit dtype that this CPU only emulates still loads, after one
    warning with the measured slowdown.
    """
    device = hardware.device_type(args)
    if "dtype" in init_kwargs or "torch_dtype" in init_kwargs:  # torch_dtype: the legacy name
        requested = hardware.as_dtype(init_kwargs.get("dtype", init_kwargs.get("torch_dtype"))) or "auto"
    else:
        requested = None
    compute = _four_bit_compute(quantization)
    if requested == "auto":
        if compute is not None:
            requested = compute
        else:
            location = {k: init_kwargs[k] for k in _CONFIG_LOCATION_KEYS if k in init_kwargs}
            config = AutoConfig.from_pretrained(model, **location)
            requested = hardware.resolve_dtype("auto", device, getattr(config, "dtype", None))
    hardware.warn_if_emulated(compute or requested, device, "The model being tuned")
    return requested


class _RecordSelectionInCheckpoints(TrainerCallback):
    """Writes the identity of the training subset into every checkpoint, so a resume can check it."""

    def __init__(self, trainer: SelectiveSFTTrainer):
        self.trainer = trainer

    def on_save(self, args, state, control, **kwargs):
        result = self.trainer.selection_result
        folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if result is not None and state.is_world_process_zero and os.path.isdir(folder):
            marker = {k: getattr(result.summary, k) for k in ("selected_indices_sha256", "counts", "selection_config")}
            with open(os.path.join(folder, CHECKPOINT_SELECTION_FILE), "w", encoding="utf-8") as handle:
                json.dump(marker, handle, indent=2)


class _LogSelection(TrainerCallback):
    """Sends the selection's statistics to every `report_to` logger when training starts, as step 0."""

    def __init__(self, trainer: SelectiveSFTTrainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        # The loggers' own on_train_begin has run by now (they come first in the callback list), so a TensorBoard
        # writer or W&B run exists to take these. A resumed run logged them when it started the first time.
        # They go to the loggers only, not into state.log_history, which keeps exactly the entries SFTTrainer's has
        # (scripts read log_history[0] as the first eval); summary.json records them.
        if self.trainer.selection_result is not None and state.global_step == 0:
            metrics = selection_metrics(self.trainer.selection_result.summary)
            self.trainer.callback_handler.on_log(args, state, control, {**metrics, "epoch": state.epoch or 0.0})


def _eval_in_training_shape(eval_dataset, conversational: bool, fmt: str | None, text_field: str):
    """The eval set in the shape the training rows take (`formats.training_dataset`), so that eval loss is
    computed as the training loss is. Each set of a dict is converted alone. A set in a shape TRL trains on, one
    in no known shape, an iterable one, or an empty one goes to SFTTrainer as it is; TRL prepares it."""
    if isinstance(eval_dataset, dict):  # a DatasetDict too
        return type(eval_dataset)({name: _eval_in_training_shape(part, conversational, fmt, text_field)
                                   for name, part in eval_dataset.items()})
    if not isinstance(eval_dataset, Dataset) or len(eval_dataset) == 0:
        return eval_dataset
    if fmt is None:
        try:
            fmt = formats.detect_format(eval_dataset.column_names, text_field)
        except DatasetError:
            return eval_dataset
    return formats.training_dataset(eval_dataset, conversational, fmt, text_field)


def _is_shuffled(dataset: IterableDataset) -> bool:
    """Whether an iterable dataset reorders its rows from one epoch to the next (`IterableDataset.shuffle`)."""
    examples = getattr(dataset, "_ex_iterable", None)
    while examples is not None:
        if "Shuffled" in type(examples).__name__:
            return True
        examples = getattr(examples, "ex_iterable", None)
    return False


def _row_fingerprint(row: dict) -> str:
    """A short digest of a row's content, to check that an iterable dataset gives the rows it was rated on."""
    return hashlib.blake2b(json.dumps(row, sort_keys=True, default=repr, ensure_ascii=False).encode("utf-8"),
                           digest_size=8).hexdigest()


def _fingerprinting(rows: IterableDataset, fingerprints: list[str]):
    """The rows, unchanged, each one's fingerprint appended to `fingerprints` as it goes by."""
    for row in rows:
        fingerprints.append(_row_fingerprint(row))
        yield row


def _kept_rows(pool: IterableDataset, kept: list[int], fingerprints: list[str]) -> IterableDataset:
    """An iterable dataset restricted to the kept rows: a filter by position in a second pass, which checks each
    kept row against the one that was rated."""
    wanted = set(kept)

    def keep(row: dict, index: int) -> bool:
        if index not in wanted:
            return False
        if index >= len(fingerprints) or _row_fingerprint(row) != fingerprints[index]:
            raise DatasetError(
                f"The iterable train_dataset gave another row at position {index} on its second pass than when it "
                "was rated. Selection keeps rows by position, so the dataset must give the same rows in the same "
                "order each time it is iterated: pass it unshuffled, from a source that can be read again."
            )
        return True

    return pool.filter(keep, with_indices=True)


def _check_quantized_model_has_adapters(model, quantization, peft_config) -> None:
    """A quantized model trains only through adapters: transformers refuses it otherwise, after it has loaded."""
    if peft_config is not None or isinstance(model, PeftModel):
        return
    if isinstance(model, str):
        quantized = quantization is not None and bool(
            getattr(quantization, "load_in_4bit", False) or getattr(quantization, "load_in_8bit", False)
            or (isinstance(quantization, dict) and (quantization.get("load_in_4bit") or quantization.get("load_in_8bit"))))
    else:
        quantized = bool(getattr(model, "is_quantized", False))
    if quantized:
        raise SelectionConfigError(
            "The model is quantized (load_in_4bit or load_in_8bit), and a quantized model trains only through LoRA "
            "adapters: set use_peft: true (from Python, pass peft_config=LoraConfig(...)), or load it unquantized. "
            "`selectit-trl score` alone needs neither."
        )


def _as_selective_config(args: TrainingArguments) -> SelectiveSFTConfig:
    """A `TrainingArguments` or `SFTConfig` as a SelectiveSFTConfig with the selection defaults, as SFTTrainer
    turns a `TrainingArguments` into an SFTConfig. The caller's object is read, never changed."""
    values = args.to_dict()
    values["hub_token"] = args.hub_token  # to_dict hides it
    values.pop("push_to_hub_token", None)  # transformers < 5 lists it; the constructor no longer takes it
    values = {k: v for k, v in values.items() if k in SelectiveSFTConfig.__dataclass_fields__}
    return SelectiveSFTConfig(**copy.deepcopy(values))


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
            into a TRL shape (`selectit_trl.formats`). TRL receives the kept rows as they are, every column kept.
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
            args = _as_selective_config(args)
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
        store.check_writable(args.output_dir)
        # Weights load from safetensors only, unless the user opts in to pickle files (checked here for local paths,
        # before anything loads; transformers refuses pickle-only hub repositories itself).
        allow_pickle = (args.model_init_kwargs or {}).get("use_safetensors") is False
        quantization = quantization_config or (args.model_init_kwargs or {}).get("quantization_config")
        if isinstance(model, str):
            args.model_init_kwargs = {"use_safetensors": True, **(args.model_init_kwargs or {})}
            dtype = _load_dtype(model, args.model_init_kwargs, quantization, args)
            if dtype is not None:
                args.model_init_kwargs.pop("torch_dtype", None)  # the legacy name, now resolved into "dtype"
                args.model_init_kwargs["dtype"] = dtype
        else:
            compute = _four_bit_compute(getattr(model.config, "quantization_config", None))
            hardware.warn_if_emulated(compute or model.dtype, hardware.device_type(args), "The model being tuned")
        _check_quantized_model_has_adapters(model, quantization, peft_config)
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
        if isinstance(train_dataset, IterableDataset) and _is_shuffled(train_dataset):
            raise DatasetError(
                "The iterable train_dataset is shuffled, so it gives its rows in another order each epoch, and the kept "
                "rows, chosen by position, could not be found again. Pass it unshuffled; the Trainer draws batches in "
                "random order from a map-style Dataset by itself."
            )
        rows, self._row_fingerprints = train_dataset, None
        if isinstance(train_dataset, IterableDataset):
            # One streaming pass: each row is rated, and its fingerprint kept to check it in the second pass.
            self._row_fingerprints = []
            rows = _fingerprinting(train_dataset, self._row_fingerprints)
        self.rating_samples = formats.rating_samples(
            rows, fmt, text_field=text_field, tokenizer=tokenizer, formatting_func=formatting_func)
        if self._row_fingerprints is not None:
            # The kept rows are read in a second pass: a source that gives nothing more (a one-shot iterator
            # behind a generator) is refused now, from its first row, rather than found empty in train().
            first = next(iter(train_dataset), None)
            if first is None or _row_fingerprint(first) != self._row_fingerprints[0]:
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
        self._selection_pool = formats.training_dataset(train_dataset, *self._training_shape)
        if formatting_func is None:
            eval_dataset = _eval_in_training_shape(eval_dataset, conversational, args.selection_dataset_format, text_field)
        self.selection_result: SelectionResult | None = None
        self._store_set_aside = False  # selection_overwrite applies to this trainer's first selection only

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
        self.add_callback(_RecordSelectionInCheckpoints(self))
        self.add_callback(_LogSelection(self))

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
        empty_responses(self.rating_samples, args.selection_strict)

    def _base_rater(self) -> Rater:
        config = self.model.config
        fingerprint = model_fingerprint(config, self._model_source, self.model.dtype)
        return Rater(self.selection_model_id, self._tokenizer, fingerprint, parameter_count(config), load=lambda: self.model,
                     max_positions=_context_length(config))

    def _peer_rater(self, peer: PeerSpec) -> Rater:
        """A peer (or the teacher), loaded only when its turn comes: in 4-bit NF4 unless its entry says otherwise."""
        remote = self.args.trust_remote_code
        init_kwargs = {"use_safetensors": True, **(self.args.model_init_kwargs or {})}
        for tuned_only in ("revision", "dtype", "torch_dtype", "quantization_config", "device_map", "attn_implementation"):
            init_kwargs.pop(tuned_only, None)  # the tuned model's settings mean nothing for another repository
        init_kwargs["trust_remote_code"] = remote
        if peer.revision:
            init_kwargs["revision"] = peer.revision
        device = self.model.get_input_embeddings().weight.device
        # Loaded straight onto the scoring device (quantised as it loads, for 4-bit), not through host memory.
        init_kwargs["device_map"] = {"": str(device)}
        config = AutoConfig.from_pretrained(peer.model, revision=peer.revision, trust_remote_code=remote)
        if peer.load_in_4bit:
            # By default bf16 where the device runs it natively, else fp16 on a GPU and fp32 on a CPU (hardware.py).
            compute = hardware.resolve_compute_dtype(peer.dtype, device.type)
            init_kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute, bnb_4bit_use_double_quant=True
            )
            init_kwargs["dtype"] = compute
        elif peer.dtype is None:
            init_kwargs["dtype"] = self.model.dtype  # the tuned model's, already chosen for this hardware
        else:
            # A torch.dtype either way, so that the same load always gives the same fingerprint.
            init_kwargs["dtype"] = hardware.resolve_dtype(peer.dtype, device.type, getattr(config, "dtype", None))
            if init_kwargs["dtype"] == "auto":  # on a GPU: the checkpoint's dtype, as transformers reads it
                init_kwargs["dtype"] = getattr(config, "dtype", None) or torch.float32
        hardware.warn_if_emulated(init_kwargs["dtype"], device.type, f"Peer {peer.model_id}")

        def load():
            return AutoModelForCausalLM.from_pretrained(peer.model, **init_kwargs).eval()

        fingerprint = model_fingerprint(config, peer.model, init_kwargs["dtype"], init_kwargs.get("quantization_config"))
        tokenizer = AutoTokenizer.from_pretrained(peer.model, revision=peer.revision, trust_remote_code=remote)
        return Rater(peer.model_id, tokenizer, fingerprint, parameter_count(config), load=load, release_after_use=True,
                     max_positions=_context_length(config))

    def _raters(self) -> list[Rater]:
        return [self._base_rater(), *(self._peer_rater(p) for p in self.args.peer_specs())]

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
            self.selection_result = run_selection(
                self.rating_samples,
                self._raters(),
                self.args,
                context,
                expected_indices_sha256=expected_indices_sha256,
                dataset_format=self.dataset_format,
                overwrite=self.args.selection_overwrite and not self._store_set_aside,
                teacher=self._peer_rater(teacher) if (teacher := self.args.teacher_spec()) else None,
            )
            self._store_set_aside = True
        context.barrier()  # the files are written before any process goes on
        result = self.selection_result
        logger.info("%s kept %d of %d samples (%s).", result.summary.label, len(result.selected_indices),
                    len(self.rating_samples), result.path)
        return result

    def _checkpoint_subset(self, resume_from_checkpoint) -> str | None:
        """The subset hash recorded in the checkpoint being resumed, if it has one."""
        checkpoint = resume_from_checkpoint
        if checkpoint is True:
            checkpoint = get_last_checkpoint(self.args.output_dir)
        marker = os.path.join(str(checkpoint), CHECKPOINT_SELECTION_FILE) if checkpoint else None
        if marker and os.path.isfile(marker):
            with open(marker, encoding="utf-8") as handle:
                return json.load(handle)["selected_indices_sha256"]
        logger.warning("The checkpoint records no selection; resuming on the stored selection as it stands.")
        return None

    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, **kwargs):
        """Select (or reuse the stored selection), then train on the kept rows.

        With `resume_from_checkpoint`, nothing is scored: the stored probabilities must match, and the subset
        they select must be the one recorded in the checkpoint, so training continues on the rows it started on.
        """
        resuming = bool(resume_from_checkpoint)
        expected = self._checkpoint_subset(resume_from_checkpoint) if resuming else None
        result = self._select(resuming=resuming, expected_indices_sha256=expected)
        kept = result.kept_indices
        if isinstance(self._selection_pool, Dataset):
            subset = self._selection_pool.select(kept)
        else:
            # The filter reads the user's own rows, as they were fingerprinted; any conversion follows it.
            subset = formats.training_dataset(_kept_rows(self._user_rows, kept, self._row_fingerprints),
                                              *self._training_shape)
        if result.recycled:
            # Rows that took a teacher's rewrite train on it, in the shape their format trains in.
            conversational = bool(getattr(self.processing_class, "chat_template", None))
            rewrites = {j: formats.training_row(result.recycled[i], conversational)
                        for j, i in enumerate(kept) if i in result.recycled}
            subset = subset.map(lambda row, j: rewrites.get(j, row), with_indices=True)
        if not self._skip_prepare_dataset:
            subset = super()._prepare_dataset(
                subset, self.processing_class, self.args, self.args.packing, self._formatting_func, "train"
            )
        self.train_dataset = subset
        return super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial, **kwargs)

    def create_model_card(self, model_name=None, dataset_name=None, tags=None):
        """TRL's model card, with a "Data selection" section."""
        super().create_model_card(model_name=model_name, dataset_name=dataset_name, tags=tags)
        if self.is_world_process_zero() and self.selection_result is not None:
            write_card_section(Path(self.args.output_dir) / "README.md", self.selection_result.summary)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        """Save as `Trainer.save_model` does, then add the "Data selection" section to the model card there."""
        super().save_model(output_dir, _internal_call=_internal_call)
        if not self.is_world_process_zero() or self.selection_result is None:
            return
        folder = Path(output_dir or self.args.output_dir)
        readme = folder / "README.md"
        if not readme.is_file():
            if _internal_call:
                return  # a checkpoint of a full model: it has no card, and TRL writes one into output_dir
            if folder.resolve() == Path(self.args.output_dir).resolve():
                # A full model (no adapter) gets no card from save_pretrained: start from TRL's.
                self.create_model_card(model_name=folder.name)
        write_card_section(readme, self.selection_result.summary)
