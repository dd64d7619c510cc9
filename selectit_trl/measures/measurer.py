"""The measurer: every measure's values for a list of samples, found in the score store or computed into it.

Every measure (`base.Measure`: rating probabilities, losses, a teacher's texts) goes through one `Measurer`, so
they share everything around the forward passes: identical samples measured once, the store lookup by key and
weights fingerprint, batches planned the same way in every run and replayed after an interruption, the share of
each process under accelerate, progress bars, each batch stored as it ends, and the errors that name the row.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..context import RunContext
from ..data.rows import RatingSample
from ..engine.models import compiled_blocks
from ..errors import NonFiniteScoresError, StoredSelectionMismatch, StoreWriteError
from ..progress import ScoringProgress
from ..store import ledger
from .base import Measure, Rater

logger = logging.getLogger(__name__)


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass
class Measured:
    """Every model's values of one measurement for a list of samples, and what it took to get them."""

    values_by_model: dict[str, np.ndarray]  # [N, *measure.shape] per model, in sample order (texts: [N] objects)
    truncated: np.ndarray  # [N] bool: cut to fit the context of some model
    unique: int  # distinct samples among the N
    keys: dict[str, list[str]]  # model id -> store key of each distinct sample
    scored_now: dict[str, int]  # model id -> samples measured by this run (absent: none)
    seconds: dict[str, float]  # model id -> seconds spent measuring
    fresh: dict[str, np.ndarray]  # model id -> [N] bool: measured by this run rather than read from the store


class StorePlanBook:
    """The batch plans of one model and measurement in the score store, in terms of this call's samples.

    Samples are named in the store by their keys, so a plan survives rows being added, removed or reordered; a
    planned batch whose samples are not all here any more cannot be replayed, and its missing samples are
    planned again.
    """

    def __init__(self, output_dir, rank: int, fingerprint: str, kind: str, keys: Sequence[str], plans: dict):
        self.output_dir, self.rank, self.fingerprint, self.kind, self.keys = output_dir, rank, fingerprint, kind, keys
        self.plans = plans
        self.position: dict[str, int] = {}
        for j, key in enumerate(keys):
            self.position.setdefault(key, j)

    def recorded(self, layout: str) -> list[tuple[list[int], int]]:
        batches = []
        for width, keys in self.plans.get((self.fingerprint, self.kind, layout), []):
            if all(key in self.position for key in keys):
                batches.append(([self.position[key] for key in keys], width))
        return batches

    def record(self, layout: str, batches) -> None:
        ledger.append_plan(
            self.output_dir, self.rank, self.fingerprint, self.kind, layout,
            [(width, tuple(self.keys[j] for j in members)) for members, width in batches],
        )


class Measurer:
    """Finds measurements in the store, and computes what is missing.

    One run (a selection, or a probe and then a selection) shares one measurer: the same models, store, and
    share of the work between processes.
    """

    def __init__(self, raters: Sequence[Rater], config, context: RunContext):
        self.raters, self.config, self.context = list(raters), config, context

    @property
    def output_dir(self):
        return self.context.output_dir

    def collect(self, measure: Measure, samples: Sequence[RatingSample], label: str = "", row_word: str = "row") -> Measured:
        """Each of the measure's models' values for `samples`, from the store where it has them.

        Args:
            label: put before the progress bars' text ("Probe: ").
            row_word: what a sample is called in error messages.
        """
        raters = measure.raters(self.raters)
        # Identical samples are measured once: `unique` holds the first of each, `copy_of[i]` the position of i's in it.
        first_row: dict[RatingSample, int] = {}
        copy_of = np.array([first_row.setdefault(s, len(first_row)) for s in samples])
        unique = list(first_row)

        # What each model will read, and so the key of its values in the store. The token arrays are dropped once
        # hashed and rebuilt for the models that must compute: with prompt_first they hold K whole requests per
        # sample (about 200 MB per model on a 50k-row dataset), while tokenizing again takes seconds.
        content = [s.content_hash for s in unique]
        keys: dict[str, list[str]] = {}
        truncated = np.zeros(len(unique), dtype=bool)  # cut to fit the context of any model
        for rater in raters:
            requests, cut = measure.requests(rater, unique)
            truncated |= cut
            keys[rater.model_id] = measure.keys(rater, requests)
            del requests

        rank, world = self.context.shard
        wanted = {(r.fingerprint, key) for r in raters for key in keys[r.model_id]}
        stored = ledger.read_store(self.output_dir, wanted, measure.whole)
        # Plans are read with the records, before anyone appends, so that every process replays the same batches.
        plans = ledger.read_plans(self.output_dir, {r.fingerprint for r in raters})
        # Rank 0's progress bars count the other processes' records too; it starts following their files before
        # any process can append to them.
        follower = ledger.StoreFollower(self.output_dir, rank) if world > 1 and self.context.progress else None
        # Every process has read the same store before any appends to it, so they plan the same batches.
        self.context.barrier()

        def found_in(stored: dict) -> dict[str, list]:
            """Each model's stored values per unique sample, None where the store has none."""
            return {r.model_id: [None if (record := stored.get((r.fingerprint, key))) is None else measure.value(record)
                                 for key in keys[r.model_id]]
                    for r in raters}

        found = found_in(stored)
        fresh = {r.model_id: np.array([values is None for values in found[r.model_id]]) for r in raters}
        needing = [r for r in raters if fresh[r.model_id].any()]
        last_to_score = needing[-1] if needing else None
        scored_now: dict[str, int] = {}
        seconds: dict[str, float] = {}
        for rater in needing:
            have = ~fresh[rater.model_id]
            if not self.context.allow_scoring:
                raise StoredSelectionMismatch(
                    f"The score store in {ledger.store_dir(self.output_dir)} lacks {int((~have).sum())} "
                    f"sample(s) of {measure.kind} for {rater.model_id} under these data, prompts and weights. A resumed "
                    "run must train on the subset it started with: resume with the original settings, or start a "
                    "fresh output_dir."
                )
            scored_now[rater.model_id] = int((~have).sum())
            rows_of: dict[str, list[int]] = {}  # store key -> samples; distinct samples can render alike
            for j, key in enumerate(keys[rater.model_id]):
                rows_of.setdefault(key, []).append(j)
            progress = ScoringProgress(
                f"{label}{measure.activity} with {rater.model_id}", enabled=self.context.progress,
                finished_elsewhere=follower.finished_rows(rater.fingerprint, measure.kind, rows_of) if follower else None,
            )
            try:
                book = StorePlanBook(self.output_dir, rank, rater.fingerprint, measure.kind, keys[rater.model_id], plans)
                seconds[rater.model_id] = self._compute_into_store(
                    measure, rater, unique, have, copy_of, content, keys[rater.model_id], progress, row_word, book
                )
                if rater is last_to_score:
                    # Rank 0 waits at the barrier below anyway; until then its bar follows the other processes.
                    # After an earlier model it goes straight on to the next, and that bar closes at its own share.
                    progress.wait_for_others()
            finally:
                progress.close()
            if rater.release_after_use:
                free_memory()
        if scored_now:
            self.context.barrier()  # every process's share is in the store before anyone reads it back
            found = found_in(ledger.read_store(self.output_dir, wanted, measure.whole))
        values_by_model = {}
        for rater in raters:
            missing = [j for j, values in enumerate(found[rater.model_id]) if values is None]
            if missing:
                raise StoredSelectionMismatch(
                    f"{len(missing)} sample(s) of {rater.model_id} are missing from the score store after scoring, "
                    f"the first being {row_word} {int(np.flatnonzero(copy_of == missing[0])[0])}. Did another process fail?"
                )
            values_by_model[rater.model_id] = measure.stack(found[rater.model_id])[copy_of]
        return Measured(values_by_model, truncated[copy_of], len(unique), keys, scored_now, seconds,
                        {m: flags[copy_of] for m, flags in fresh.items()})

    def _compute_into_store(self, measure, rater: Rater, unique, have, copy_of, content, keys, progress, row_word,
                            plan_book: StorePlanBook) -> float:
        """Compute this process's share of the samples `have` lacks, appending each batch to the store as it finishes.

        Returns the seconds spent. A batch that also holds stored samples runs whole (so that every sample is
        always computed in the same batch), and only its new samples are written.
        """
        output_dir = self.output_dir
        requests, cut = measure.requests(rater, unique)
        # Distinct samples can render to the same tokens, and so share a store key: measure the first of them only,
        # so that every key has one place in one batch (the others read its record back).
        first_of_key: dict[str, int] = {}
        done = np.array([have[j] or first_of_key.setdefault(key, j) != j for j, key in enumerate(keys)])
        model = rater.load()
        started = time.perf_counter()
        written = 0
        try:
            with (compiled_blocks(model, self.config.selection_compile and measure.compiles),
                  ledger.StoreWriter(output_dir, rank=self.context.shard[0]) as writer):
                batches = measure.batches(
                    model, rater, requests, max_batch_tokens=self.config.selection_max_batch_tokens,
                    progress=progress, done=done, shard=self.context.shard, plan_book=plan_book,
                )
                for batch, values in batches:
                    new = [(j, v) for j, v in zip(batch, values) if not done[j]]
                    writer.append(
                        {"model": rater.fingerprint, "model_id": rater.model_id, "tokens": keys[j], "sample": content[j],
                         **measure.record(v), "truncated": bool(cut[j])}
                        for j, v in new
                    )
                    written += len(new)
        except NonFiniteScoresError as error:
            row = int(np.flatnonzero(copy_of == error.sample_index)[0])
            raise NonFiniteScoresError(
                f"{rater.model_id} gave {row_word} {row} NaN or infinite {measure.noun}: its logits overflowed or its "
                "weights hold NaN. Score in bf16 or fp32 rather than fp16, or check the weights. The samples measured "
                f"before it are kept in {ledger.store_dir(output_dir)}; scores.jsonl and summary.json are "
                "unchanged.",
                sample_index=row,
            ) from None
        except OSError as error:  # a full disk, a quota, a folder made read-only: the store holds every whole batch
            store = ledger.store_dir(output_dir)
            raise StoreWriteError(
                f"Measuring {measure.kind} with {rater.model_id} stopped: cannot write {error.filename or store} "
                f"({error.strerror or error}). {written} sample(s) of this run are safely stored in {store}, with "
                f"{int(have.sum())} stored before, and no line is left torn. Free some space (or make the folder "
                "writable) and run the same command again: it resumes from them.",
                error.errno,
            ) from error
        except KeyboardInterrupt:
            logger.warning(
                "Measuring %s with %s stopped: %d sample(s) of this run are saved in %s, with %d stored before. Run "
                "the same command again (without --overwrite) to resume from there.",
                measure.kind, rater.model_id, written, ledger.store_dir(output_dir), int(have.sum()),
            )
            raise
        return time.perf_counter() - started
