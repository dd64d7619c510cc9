"""The scoring engine: token ids in, raw probabilities of the rating tokens out.

It knows nothing of datasets, prompts or files. Each sample arrives as a shared prefix and K suffixes (one per
rating prompt); the model reads `prefix + suffix_k`, and the engine returns the full-vocabulary softmax at the
last position of each, read at the rating tokens.

Two ways to run a batch give the same numbers:

* **Shared prefix** (when samples have a prefix): one row per sample, holding the prefix once and then the K
  suffixes side by side, under a block attention mask. Each suffix sees the prefix and itself, never the
  other suffixes, and its position ids continue from the end of the prefix, so it is computed exactly as if
  it followed the prefix alone. The prefix is computed once instead of K times.
* **Whole rows**: K left-padded rows per sample, each `prefix + suffix_k` (the `prompt_first` layout, and
  models whose attention cannot take a custom mask).

Either way only the positions that are read go through the LM head, and batches are cut by a token budget.
"""

from __future__ import annotations

import logging
import math
import os
from collections import deque
from collections.abc import Iterator, Sequence
from typing import NamedTuple, Protocol

import numpy as np
import torch

from ..errors import NonFiniteScoresError, ScoringOutOfMemory
from ..reporting.progress import ScoringProgress

logger = logging.getLogger(__name__)

# Token budget of one forward pass when none is set, by device type. On a CPU, small batches are fastest: their
# activations stay in cache, and a forward pass over a few hundred tokens already keeps the cores busy (a sweep
# of 512-16384 in docs/performance.md). A GPU needs large batches to be busy.
DEFAULT_MAX_BATCH_TOKENS = {"cpu": 2048, "cuda": 16384}


def default_max_batch_tokens(model) -> int:
    return DEFAULT_MAX_BATCH_TOKENS.get(input_device(model).type, DEFAULT_MAX_BATCH_TOKENS["cuda"])


# oneDNN, which runs bf16 matmuls on x86 CPUs, keeps a compiled kernel and its buffers for every matrix shape it
# meets, up to 1,024 of them by default. Scoring meets a few shapes per batch-width bucket, so without a cap the
# process grows with the range of sample lengths: +17% peak memory from 200 to 2,000 rows, against +3.5% with
# the cap, at the same speed (docs/performance.md). Each batch shape runs many times in a row, so a small cache
# loses nothing.
ONEDNN_CACHE_CAPACITY = "8"


def cap_onednn_cache() -> None:
    """Cap oneDNN's kernel cache for this process, unless the user has set ONEDNN_PRIMITIVE_CACHE_CAPACITY.

    oneDNN reads the variable when it first runs, so this works only before the process's first bf16 matmul;
    the trainer calls it before loading the model.
    """
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", ONEDNN_CACHE_CAPACITY)


# Attention implementations that take an arbitrary 4D mask; flash-attention kernels only know padding.
_MASKABLE_ATTENTION = ("sdpa", "eager")


class SampleRequests(NamedTuple):
    """One sample's K rating requests: the model reads `prefix + suffixes[k]` for prompt k."""

    prefix: np.ndarray  # int token ids, possibly empty
    suffixes: tuple[np.ndarray, ...]  # K arrays of int token ids, each non-empty

    def sequence(self, k: int) -> np.ndarray:
        return np.concatenate([self.prefix, self.suffixes[k]])


def bucket_width(width: int) -> int:
    """Round a row width up to one of a fixed set of sizes, 16 per doubling (at most 1/16 more padding).

    Each distinct batch shape costs memory that is kept for the life of the process: oneDNN, behind CPU bf16
    matmuls, compiles and caches a primitive per shape, and a GPU allocator keeps blocks per size. With exact
    widths every batch has its own shape and that memory grows with the number of samples; with bucketed
    widths the number of shapes depends only on the range of lengths (docs/performance.md).
    """
    step = max(8, 1 << max(0, width.bit_length() - 5))
    return -(-width // step) * step


def plan_batches(lengths: Sequence[int], max_batch_tokens: int, rows_per_item: int = 1) -> list[list[int]]:
    """Group items into batches whose padded size (rows x longest row) stays within a token budget.

    Each item brings `rows_per_item` rows of (at most) its length: with whole rows, a sample brings its K
    rating requests; with a shared prefix, one packed row.

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
        if current and (len(current) + 1) * rows_per_item * longest > max_batch_tokens:
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


def _read_probs(logits: torch.Tensor, token_ids: Sequence[int]) -> np.ndarray:
    """Softmax over the full vocabulary in fp32, read at the rating tokens."""
    probs = torch.softmax(logits.float(), dim=-1)
    return probs[..., torch.as_tensor(list(token_ids), device=probs.device)].double().cpu().numpy()


@torch.no_grad()
def last_token_probs(
    model, sequences: Sequence[Sequence[int]], token_ids: Sequence[int], pad_id: int, width: int | None = None
) -> np.ndarray:
    """Whole rows: one forward pass over a batch of sequences, probabilities at each row's last position."""
    input_ids, attention_mask, position_ids = left_pad(
        [np.asarray(s) for s in sequences], pad_id, input_device(model), width
    )
    # logits_to_keep=1 computes the LM head at the last position only: with a large vocabulary this is much of
    # the compute the released scripts spend per token.
    output = model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, logits_to_keep=1, use_cache=False
    )
    return _read_probs(output.logits[:, -1, :], token_ids)


def _packed_layout(requests: Sequence[SampleRequests], width: int | None = None) -> tuple[int, list[int]]:
    """Width of the prefix block and of each suffix block, so that every block is right-aligned in all rows.

    A `width` beyond what the rows need goes to the prefix block as extra left padding.
    """
    suffix_widths = [max(len(r.suffixes[k]) for r in requests) for k in range(len(requests[0].suffixes))]
    prefix_width = max(len(r.prefix) for r in requests)
    prefix_width = max(prefix_width, (width or 0) - sum(suffix_widths))
    return prefix_width, suffix_widths


def packed_width(request: SampleRequests) -> int:
    """Tokens in a sample's shared-prefix row: the prefix once, then every suffix."""
    return len(request.prefix) + sum(len(s) for s in request.suffixes)


def _packed_inputs(requests: Sequence[SampleRequests], pad_id: int, dtype, device, width=None):
    """Input ids, 4D block mask, position ids and read positions of a shared-prefix batch.

    Row layout: [pad.. prefix | pad.. suffix_1 | pad.. suffix_2 | ...]. Each block is right-aligned to a width
    common to the batch, so the last token of suffix k sits at the same column in every row, and the LM head
    runs on those K columns only.
    """
    prefix_width, suffix_widths = _packed_layout(requests, width)
    width = prefix_width + sum(suffix_widths)
    ends = (prefix_width + np.cumsum(suffix_widths) - 1).tolist()
    ids = np.full((len(requests), width), pad_id, dtype=np.int64)
    # Which block each column belongs to: -1 the prefix, k suffix k, -2 padding.
    block = np.full((len(requests), width), -2, dtype=np.int64)
    positions = np.zeros((len(requests), width), dtype=np.int64)
    for row, request in enumerate(requests):
        n = len(request.prefix)
        ids[row, prefix_width - n : prefix_width] = request.prefix
        block[row, prefix_width - n : prefix_width] = -1
        positions[row, prefix_width - n : prefix_width] = np.arange(n)
        for k, suffix in enumerate(request.suffixes):
            end = ends[k] + 1
            ids[row, end - len(suffix) : end] = suffix
            block[row, end - len(suffix) : end] = k
            # Positions go on from the end of this row's prefix, as if the suffix followed it alone.
            positions[row, end - len(suffix) : end] = n + np.arange(len(suffix))
    block_t = torch.from_numpy(block)
    query, key = block_t[:, :, None], block_t[:, None, :]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    allowed = causal & (key != -2) & ((key == -1) | (key == query))
    # Padding attends to itself: a row with nothing to attend to would come out as NaN in some kernels, and a
    # NaN value is not cancelled by a zero weight further on.
    allowed |= torch.eye(width, dtype=torch.bool)
    # Additive, in the weights' dtype: eager attention adds it to the scores, and SDPA would otherwise convert a
    # boolean mask to this form in every layer (a float mask made its CPU kernel 17% faster in bf16).
    mask = torch.zeros((len(requests), 1, width, width), dtype=dtype).masked_fill(~allowed[:, None], torch.finfo(dtype).min)
    return (
        torch.from_numpy(ids).to(device),
        mask.to(device),
        torch.from_numpy(positions).to(device),
        torch.as_tensor(ends, device=device),
    )


@torch.no_grad()
def shared_prefix_probs(
    model, requests: Sequence[SampleRequests], token_ids: Sequence[int], pad_id: int, width: int | None = None
) -> np.ndarray:
    """Shared prefix: one forward pass, one packed row per sample (padded to `width`), probabilities [n, K, S]."""
    dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
    input_ids, mask, position_ids, ends = _packed_inputs(requests, pad_id, dtype=dtype, device=input_device(model), width=width)
    output = model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, logits_to_keep=ends, use_cache=False)
    return _read_probs(output.logits, token_ids)


def can_share_prefixes(model) -> bool:
    """Whether the model's attention takes the custom block mask that prefix sharing needs."""
    return getattr(model.config, "_attn_implementation", None) in _MASKABLE_ATTENTION


def _prefix_sharing_agrees(model, request: SampleRequests, token_ids, pad_id) -> tuple[bool, float]:
    """Compare prefix sharing with whole (padded) rows on one sample before trusting it for a whole dataset.

    A model whose code ignores a custom attention mask would otherwise give wrong scores without an error.
    Low-precision kernels differ from each other by rounding, so the tolerance follows the weights' dtype.
    """
    shared = shared_prefix_probs(model, [request], token_ids, pad_id)[0]
    whole = last_token_probs(model, [request.sequence(k) for k in range(len(request.suffixes))], token_ids, pad_id)
    difference = float(np.abs(shared - whole).max())
    full_precision = getattr(model, "dtype", None) == torch.float32 and getattr(model.config, "quantization_config", None) is None
    return difference <= (1e-3 if full_precision else 5e-2), difference


def iter_score_batches(
    model,
    requests: Sequence[SampleRequests],
    token_ids: Sequence[int],
    pad_id: int,
    max_batch_tokens: int | None = None,
    progress: bool | ScoringProgress = True,
    desc: str = "Scoring",
    share_prefix: bool = True,
    done: Sequence[bool] | None = None,
    shard: tuple[int, int] = (0, 1),
    plan_book: PlanBook | None = None,
) -> Iterator[tuple[list[int], np.ndarray]]:
    """Score samples batch by batch, yielding `(sample indices, probs [n, K, S])` as each batch finishes.

    The samples not yet scored are planned into batches, which are shared out between processes. With a
    `plan_book`, every batch is recorded before it runs, and a sample that an earlier run planned but did not
    finish runs again in that same batch, with the same padding and row, so its probabilities come out bit for
    bit the same whether the run is the first, one resumed after an interruption, or one of several processes.

    Args:
        requests: for each sample, its prefix and K suffixes. A sample's K requests always share a batch.
        max_batch_tokens: budget for one forward pass, counted as padded rows x width; by default
            `DEFAULT_MAX_BATCH_TOKENS` for the model's device.
        progress: draw a progress bar labelled `desc`, or the `ScoringProgress` to report to (which the caller
            then closes, after waiting for the other processes' shares if it likes).
        share_prefix: compute each sample's prefix once for its K suffixes. Used when the samples have
            prefixes and the model's attention takes a custom mask; checked against whole rows on one sample
            first, and turned off with a warning if the two disagree.
        done: samples whose probabilities are already known. Batches made only of them are not run; a batch
            holding some of them runs whole and yields them too.
        shard: (this process's rank, number of processes). Each process runs its own share of the batches,
            balanced by padded tokens; together they run every batch once.
        plan_book: where batch plans are kept between runs (see `PlanBook`); without one, the samples not in
            `done` are planned afresh.
    """
    if not requests:
        return
    k = len(requests[0].suffixes)
    whole_widths = [len(r.prefix) + max(len(s) for s in r.suffixes) for r in requests]
    check_fits(model, whole_widths)
    shared = share_prefix and any(len(r.prefix) for r in requests)
    if shared and not can_share_prefixes(model):
        logger.info(
            "Attention implementation %r takes no custom mask: scoring whole rows without prefix sharing. "
            "Load the model with attn_implementation='sdpa' to share prefixes.",
            model.config._attn_implementation,
        )
        shared = False
    if shared:
        # On the shortest sample, which costs least to run twice.
        shortest = min(range(len(requests)), key=lambda i: packed_width(requests[i]))
        agrees, difference = _prefix_sharing_agrees(model, requests[shortest], token_ids, pad_id)
        if not agrees:
            logger.warning(
                "Prefix sharing and whole rows disagree by %.3g on the first sample with this model; scoring with "
                "whole rows instead (slower, same numbers as the released procedure's layout).",
                difference,
            )
            shared = False
    # Batches are planned and padded on bucketed widths, so that the number of batch shapes stays small.
    widths = [bucket_width(packed_width(r) if shared else w) for r, w in zip(requests, whole_widths)]
    # Tokens the model reads per sample (unpadded): the prefix once when it is shared, K times otherwise.
    sample_tokens = [len(r.prefix) * (1 if shared else k) + sum(len(s) for s in r.suffixes) for r in requests]

    def run(batch: list[int], width: int) -> np.ndarray:
        if shared:
            return shared_prefix_probs(model, [requests[i] for i in batch], token_ids, pad_id, width)
        rows = [requests[i].sequence(j) for i in batch for j in range(k)]
        return last_token_probs(model, rows, token_ids, pad_id, width).reshape(len(batch), k, len(token_ids))

    yield from run_batches(
        run, widths, sample_tokens, rows_per_item=1 if shared else k,
        max_batch_tokens=max_batch_tokens or default_max_batch_tokens(model),
        progress=progress, desc=desc, done=done, shard=shard, plan_book=plan_book,
        layout="shared-prefix" if shared else "whole-rows",
    )


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
) -> Iterator[tuple[list[int], np.ndarray]]:
    """Plan, share out and run batches of samples, yielding `(sample indices, values)` as each batch finishes.

    The machinery every per-sample measurement shares (rating probabilities here, losses in `losses.py`):
    `run(batch, width)` does one forward pass over a batch padded to `width` and returns an array whose first
    axis follows `batch`. `widths` are the samples' bucketed row widths and `sample_tokens` the tokens the
    model reads per sample (for the progress bar); `layout` names how `run` lays a batch out, since a plan made
    for one layout means nothing in another. The other arguments are those of `iter_score_batches`.

    A missing sample that an earlier run planned runs again in that very batch (all of it, at its width), so
    that it comes out bit for bit as it would have then; the others are planned among themselves, and their
    batches are recorded in `plan_book` before they run. Out of memory, the budget is halved and the batch
    planned again; a sample with a NaN or infinite value raises `NonFiniteScoresError`.
    """

    def plan(items: list[int], budget: int) -> list[tuple[list[int], int]]:
        batches = plan_batches([widths[i] for i in items], budget, rows_per_item)
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
    owners = share_batches([len(b) * rows_per_item * width for b, width in batches], world)
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
            finite = np.isfinite(values).reshape(len(batch), -1).all(axis=1)
            if not finite.all():
                sample = batch[int(np.argmin(finite))]
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


def score_requests(model, requests: Sequence[SampleRequests], token_ids: Sequence[int], pad_id: int, **options) -> np.ndarray:
    """All of `iter_score_batches` (which takes the same `options`), gathered into one array [N, K, S] in sample order."""
    k = len(requests[0].suffixes) if requests else 0
    out = np.full((len(requests), k, len(token_ids)), math.nan)
    for batch, probs in iter_score_batches(model, requests, token_ids, pad_id, **options):
        out[batch] = probs
    return out
