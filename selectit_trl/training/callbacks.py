"""What a training run records of its selection, through the Trainer's callbacks: the subset's identity in every
checkpoint, and the selection's statistics for every `report_to` logger."""

from __future__ import annotations

import json
import logging
import os

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from .card import selection_metrics

logger = logging.getLogger(__name__)

CHECKPOINT_SELECTION_FILE = "selection.json"


def subset_in_checkpoint(resume_from_checkpoint, output_dir) -> str | None:
    """The subset hash recorded in the checkpoint being resumed (`True`: the last one in `output_dir`), if any."""
    checkpoint = get_last_checkpoint(output_dir) if resume_from_checkpoint is True else resume_from_checkpoint
    marker = os.path.join(str(checkpoint), CHECKPOINT_SELECTION_FILE) if checkpoint else None
    if marker and os.path.isfile(marker):
        with open(marker, encoding="utf-8") as handle:
            return json.load(handle)["selected_indices_sha256"]
    logger.warning("The checkpoint records no selection; resuming on the stored selection as it stands.")
    return None


class RecordSelectionInCheckpoints(TrainerCallback):
    """Writes the identity of the training subset into every checkpoint, so a resume can check it."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_save(self, args, state, control, **kwargs):
        result = self.trainer.selection_result
        folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if result is not None and state.is_world_process_zero and os.path.isdir(folder):
            marker = {k: getattr(result.summary, k) for k in ("selected_indices_sha256", "counts", "selection_config")}
            with open(os.path.join(folder, CHECKPOINT_SELECTION_FILE), "w", encoding="utf-8") as handle:
                json.dump(marker, handle, indent=2)


class LogSelection(TrainerCallback):
    """Sends the selection's statistics to every `report_to` logger when training starts, as step 0."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        # The loggers' own on_train_begin has run by now (they come first in the callback list), so a TensorBoard
        # writer or W&B run exists to take these. A resumed run logged them when it started the first time.
        # They go to the loggers only, not into state.log_history, which keeps exactly the entries SFTTrainer's has
        # (scripts read log_history[0] as the first eval); summary.json records them.
        if self.trainer.selection_result is not None and state.global_step == 0:
            metrics = selection_metrics(self.trainer.selection_result.summary)
            self.trainer.callback_handler.on_log(args, state, control, {**metrics, "epoch": state.epoch or 0.0})
