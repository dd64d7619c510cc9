"""Batches of per-sample work under a token budget: planned, shared between processes, replayed, run.

Every per-sample measurement goes through `run_batches`: the rating probabilities (`scoring.py`), the losses
(`losses.py`) and a teacher's generations (`generation.py`). They differ only in what one batch computes. What
they share is here: rows are left-padded so that batched values equal unbatched ones, widths are bucketed so
that the number of batch shapes stays small, batches are planned longest first and shared out by cost, a plan
is recorded before it runs and replayed whole after an interruption, out of memory halves the budget, and a NaN
stops the run naming its sample. Nothing here knows of prompts, datasets or files.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np
import torch

from ..errors import NonFiniteScoresError, ScoringOutOfMemory
from ..progress import ScoringProgress

logger = logging.getLogger(__name__)

# Token budget of one forward pass when none is set, by device type. On a CPU, small batches are fastest: their
# activations stay in cache, and a forward pass over a few hundred tokens already keeps the cores busy (a sweep
# of 512-16384 in docs/performance.md). A GPU needs large batches to be busy.
DEFAULT_MAX_BATCH_TOKENS = {"cpu": 2048, "cuda": 16384}


def default_max_batch_tokens(model) -> int:
    return DEFAULT_MAX_BATCH_TOKENS.get(input_device(model).type, DEFAULT_MAX_BATCH_TOKENS["cuda"])


def bucket_width(width: int) -> int:
    """Round a row width up to one of a fixed set of sizes, 16 per doubling (at most 1/16 more padding).

    Each distinct batch shape costs memory that is kept for the life of the process: oneDNN, behind CPU bf16
    matmuls, compiles and caches a primitive per shape, and a GPU allocator keeps blocks per size. With exact
    widths every batch has its own shape and that memory grows with the number of samples; with bucketed
    widths the number of shapes depends only on the range of lengths (docs/performance.md).
    """
    step = max(8, 1 << max(0, width.bit_length() - 5))
    return -(-width // step) * step


def plan_batches(
    lengths: Sequence[int], max_batch_tokens: int, rows_per_item: int = 1, max_batch_items: int | None = None
) -> list[list[int]]:
    """Group items into batches whose padded size (rows x longest row) stays within a token budget.

    Each item brings `rows_per_item` rows of (at most) its length: with whole rows, a sample brings its K
    rating requests; with a shared prefix, one packed row. `max_batch_items` also caps the items per batch
    (generation, whose memory grows with the tokens it adds as well as with the prompts).

    Items are taken longest first, so that each batch holds items of similar length and pads little, and so
    that the largest batch runs first: memory trouble shows at once, not an hour in. An item larger than the
    budget on its own still gets a batch of its own.
    """
    if max_batch_tokens < 1:
        raise ValueError(f"selection_max_batch_tokens must be >= 1, got {max_batch_tokens}.")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        # Sorted descending, so the first item of a batch is its longest.
        longest = lengths[current[0]] if current else lengths[i]
        if current and ((len(current) + 1) * rows_per_item * longest > max_batch_tokens
                        or (max_batch_items is not None and len(current) >= max_batch_items)):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def share_batches(costs: Sequence[int], world: int) -> list[int]:
    """The process (0 .. world-1) that runs each batch: costliest first, each to the least loaded so far."""
    owners, loads = [0] * len(costs), [0] * world
    for b in sorted(range(len(costs)), key=lambda b: (-costs[b], b)):
        owner = min(range(world), key=lambda r: (loads[r], r))
        owners[b] = owner
        loads[owner] += costs[b]
    return owners


def input_device(model) -> torch.device:
    # The embedding's device, which is where inputs must go even when the model is spread over devices.
    return model.get_input_embeddings().weight.device


def padding_id(tokenizer) -> int:
    """The id to pad with: padded positions are masked out, so any valid id will do."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return candidate
    return 0


def left_pad(
    sequences: Sequence[np.ndarray], pad_id: int, device, width: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-pad to `width` (default: the longest row) so that every row's last real token sits at the end.

    Position ids are counted over real tokens only, so a padded row sees exactly the positions it would see
    alone; this is what makes batched probabilities equal unbatched ones.
    """
    width = max([width or 0, *(len(s) for s in sequences)])
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, width - len(seq) :] = torch.as_tensor(seq, dtype=torch.long)
        mask[row, width - len(seq) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), positions.to(device)


def check_fits(model, lengths: Sequence[int]) -> None:
    """Refuse samples whose longest row exceeds the positions the model can attend to."""
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    too_long = [i for i, length in enumerate(lengths) if limit and length > limit]
    if too_long:
        raise ValueError(
            f"{len(too_long)} sample(s), the first at index {too_long[0]}, render to more than the {limit} positions "
            "this model can attend to. Shorten or drop those rows before selection."
        )


class PlanBook(Protocol):
    """Where the batch plans of one model and measurement are kept between runs (`measurer.py` keeps them in the
    score store). Batches are given as sample indices of the current call, with the width they run at."""

    def recorded(self, layout: str) -> list[tuple[list[int], int]]:
        """The batches planned by earlier runs in this layout, each made only of samples of this call."""

    def record(self, layout: str, batches: Sequence[tuple[list[int], int]]) -> None:
        """Keep these batches, durably, before any of them runs."""


def run_batches(
    run,
    widths: Sequence[int],
    sample_tokens: Sequence[int],
    rows_per_item: int,
    max_batch_tokens: int,
    progress: bool | ScoringProgress = True,
    desc: str = "Scoring",
    done: Sequence[bool] | None = None,
    shard: tuple[int, int] = (0, 1),
    plan_book: PlanBook | None = None,
    layout: str = "rows",
    max_batch_items: int | None = None,
    added_tokens: int = 0,
    finite: bool = True,
) -> Iterator[tuple[list[int], np.ndarray]]:
    """Plan, share out and run batches of samples, yielding `(sample indices, values)` as each batch finishes.

    The machinery every per-sample measurement shares (rating probabilities in `scoring.py`, losses in
    `losses.py`, texts in `generation.py`): `run(batch, width)` runs one batch padded to `width` and returns an
    array whose first axis follows `batch`. `widths` are the samples' bucketed row widths and `sample_tokens` the tokens the
    model reads per sample (for the progress bar); `layout` names how `run` lays a batch out, since a plan made
    for one layout means nothing in another. The other arguments are those of `scoring.iter_score_batches`, and:

    * `max_batch_items`: at most this many samples per batch, besides the token budget;
    * `added_tokens`: tokens each row grows by as it runs (generation), counted in a batch's cost when batches
      are shared between processes;
    * `finite`: whether the values are numbers that must be finite (a teacher's texts are not).

    A missing sample that an earlier run planned runs again in that very batch (all of it, at its width), so
    that it comes out bit for bit as it would have then; the others are planned among themselves, and their
    batches are recorded in `plan_book` before they run. Out of memory, the budget is halved and the batch
    planned again; a sample with a NaN or infinite value raises `NonFiniteScoresError`.
    """

    def plan(items: list[int], budget: int) -> list[tuple[list[int], int]]:
        batches = plan_batches([widths[i] for i in items], budget, rows_per_item, max_batch_items)
        return [(members, max(widths[i] for i in members)) for members in ([items[j] for j in b] for b in batches)]

    missing = np.ones(len(widths), dtype=bool) if done is None else ~np.asarray(done, dtype=bool)
    earlier = plan_book.recorded(layout) if plan_book is not None else []
    # Batches of an earlier plan that hold a missing sample run whole; only their missing samples are new. One
    # that is over the budget now (lowered after running out of memory, or planned on a GPU) and holds nothing
    # stored is planned again instead; one partly stored is replayed all the same, since only that batch gives its
    # missing samples the values an uninterrupted run gave the rest.
    replayed = [(members, width) for members, width in earlier if missing[members].any()
                and (len(members) * rows_per_item * width <= max_batch_tokens or not missing[members].all())]
    covered = np.zeros(len(widths), dtype=bool)
    for members, _ in replayed:
        covered[members] = True
    fresh = plan([i for i in range(len(widths)) if missing[i] and not covered[i]], max_batch_tokens)
    batches = replayed + fresh
    rank, world = shard
    owners = share_batches([len(b) * rows_per_item * (width + added_tokens) for b, width in batches], world)
    pending = deque(batch for batch, owner in zip(batches, owners) if owner == rank)
    if plan_book is not None:
        plan_book.record(layout, [batch for batch, owner in zip(fresh, owners[len(replayed):]) if owner == rank])
    bar = progress if isinstance(progress, ScoringProgress) else ScoringProgress(desc, enabled=progress)
    # Only samples that are not stored yet: they are the ones every process will report as it finishes them.
    bar.start([i for b, _ in batches for i in b if missing[i]], sample_tokens)
    try:
        while pending:
            batch, width = pending.popleft()
            try:
                values = run(batch, width)
            except torch.OutOfMemoryError:
                if len(batch) == 1:
                    raise ScoringOutOfMemory(
                        f"Out of memory scoring sample {batch[0]} ({width} tokens) on its own. Free memory on the "
                        "device, load the model in 4-bit (load_in_4bit), or drop or shorten that row."
                    ) from None
                # Halve the budget for this batch and all that follow: the next batches are as large as this one.
                max_batch_tokens = max(1, min(max_batch_tokens, len(batch) * rows_per_item * width) // 2)
                logger.warning("Out of memory on a batch of %d samples; retrying with a budget of %d tokens.",
                               len(batch), max_batch_tokens)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                # Only the samples not stored yet: a replayed batch's stored ones need no second run.
                pending = deque(plan([i for i in [*batch, *(i for b, _ in pending for i in b)] if missing[i]],
                                     max_batch_tokens))
                if plan_book is not None:
                    plan_book.record(layout, list(pending))  # a resumed run replays these, not the batches that failed
                continue
            whole = np.isfinite(values).reshape(len(batch), -1).all(axis=1) if finite else np.ones(len(batch), bool)
            if not whole.all():
                sample = batch[int(np.argmin(whole))]
                raise NonFiniteScoresError(
                    f"Sample {sample} got NaN or infinite values: the logits overflowed or the weights hold NaN. "
                    "Score in bf16 or fp32 rather than fp16, or check the model's weights.",
                    sample_index=sample,
                )
            yield batch, values
            bar.advance(batch)
    finally:
        if bar is not progress:
            bar.close()
