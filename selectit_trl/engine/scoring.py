"""The scoring engine: token ids in, raw probabilities of the rating tokens out.

It knows nothing of datasets, prompts or files. Each sample arrives as a shared prefix and K suffixes (one per
rating prompt); the model reads `prefix + suffix_k`, and the engine returns the full-vocabulary softmax at the
last position of each, read at the rating tokens.

Two ways to run a batch give the same numbers:

* **Shared prefix** (when samples have a prefix): one row per sample, holding the prefix once and then the K
  suffixes side by side, under a block attention mask. Each suffix sees the prefix and itself, never the
  other suffixes, and its position ids continue from the end of the prefix, so it is computed exactly as if
  it followed the prefix alone. The prefix is computed once instead of K times. The leading tokens that all
  the samples' prefixes share (a chat template's system message, the rating preamble) are computed once for
  the whole call and attended as a cache (`preamble.py`).
  A batch's padded rows are laid out for attention only: the model reads the batch's real tokens as one
  sequence, so its linear layers compute no padding (`padding_free.py`).
* **Whole rows**: K left-padded rows per sample, each `prefix + suffix_k` (the `prompt_first` layout, and
  models whose attention cannot take a custom mask).

Either way only the positions that are read go through the LM head. Batches are planned, shared out and run by
`batching.run_batches`.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np
import torch

from ..progress import ScoringProgress
from .batching import PlanBook, bucket_width, check_fits, default_max_batch_tokens, input_device, left_pad, run_batches
from .padding_free import PaddingFreeUnsupported, RowLayout, can_run_padding_free, padding_free_passes
from .preamble import Preamble, common_leading_tokens, run_preamble

logger = logging.getLogger(__name__)

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

    def without_leading(self, tokens: int) -> SampleRequests:
        """The same requests with the first `tokens` of the prefix left out (they come from a `Preamble`)."""
        return SampleRequests(self.prefix[tokens:], self.suffixes)


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


class PackedBatch(NamedTuple):
    """A shared-prefix batch laid out in padded rows."""

    input_ids: torch.Tensor  # [rows, width]
    mask: torch.Tensor  # [rows, 1, width, preamble + width], additive
    position_ids: torch.Tensor  # [rows, width]
    ends: torch.Tensor  # [K]: the column of each suffix's last token, the same in every row
    real: torch.Tensor  # [rows, width]: True where a token is not padding


def _packed_inputs(requests: Sequence[SampleRequests], pad_id: int, dtype, device, width=None,
                   preamble: int = 0) -> PackedBatch:
    """Input ids, 4D block mask, position ids, read positions and real tokens of a shared-prefix batch.

    Row layout: [pad.. prefix | pad.. suffix_1 | pad.. suffix_2 | ...]. Each block is right-aligned to a width
    common to the batch, so the last token of suffix k sits at the same column in every row, and the LM head
    runs on those K columns only. With a `preamble` of that many cached tokens before every row, positions start
    after it and the mask gains its columns on the left, which every query attends.
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
        positions[row, prefix_width - n : prefix_width] = preamble + np.arange(n)
        for k, suffix in enumerate(request.suffixes):
            end = ends[k] + 1
            ids[row, end - len(suffix) : end] = suffix
            block[row, end - len(suffix) : end] = k
            # Positions go on from the end of this row's prefix, as if the suffix followed it alone.
            positions[row, end - len(suffix) : end] = preamble + n + np.arange(len(suffix))
    block_t = torch.from_numpy(block)
    query, key = block_t[:, :, None], block_t[:, None, :]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    allowed = causal & (key != -2) & ((key == -1) | (key == query))
    # Padding attends to itself: a row with nothing to attend to would come out as NaN in some kernels, and a
    # NaN value is not cancelled by a zero weight further on.
    allowed |= torch.eye(width, dtype=torch.bool)
    allowed = torch.cat([torch.ones(len(requests), width, preamble, dtype=torch.bool), allowed], dim=-1)
    # Additive, in the weights' dtype: eager attention adds it to the scores, and SDPA would otherwise convert a
    # boolean mask to this form in every layer (a float mask made its CPU kernel 17% faster in bf16).
    mask = torch.zeros((len(requests), 1, width, preamble + width), dtype=dtype).masked_fill(
        ~allowed[:, None], torch.finfo(dtype).min)
    return PackedBatch(
        torch.from_numpy(ids).to(device),
        mask.to(device),
        torch.from_numpy(positions).to(device),
        torch.as_tensor(ends, device=device),
        (block_t != -2).to(device),
    )


@torch.no_grad()
def shared_prefix_probs(
    model, requests: Sequence[SampleRequests], token_ids: Sequence[int], pad_id: int, width: int | None = None,
    preamble: Preamble | None = None, padding_free: bool = False,
) -> np.ndarray:
    """Shared prefix: one forward pass, one packed row per sample (padded to `width`), probabilities [n, K, S].

    With a `preamble`, each request's prefix is what follows the preamble's tokens. `padding_free` runs the rows'
    real tokens as one sequence, the rows existing for attention only (`padding_free.py`); it raises
    `PaddingFreeUnsupported` for a model whose attention cannot take part.
    """
    dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
    batch = _packed_inputs(requests, pad_id, dtype=dtype, device=input_device(model), width=width,
                           preamble=len(preamble) if preamble else 0)
    if not padding_free:
        cached = preamble.forward_arguments(len(requests)) if preamble else {"use_cache": False}
        output = model(input_ids=batch.input_ids, attention_mask=batch.mask, position_ids=batch.position_ids,
                       logits_to_keep=batch.ends, **cached)
        return _read_probs(output.logits, token_ids)
    layout = RowLayout.of(batch.real)
    cached = preamble.forward_arguments(1) if preamble else {"use_cache": False}
    with padding_free_passes(model):
        output = model(input_ids=layout.flatten(batch.input_ids), attention_mask=batch.mask,
                       position_ids=layout.flatten(batch.position_ids), logits_to_keep=layout.flat_positions(batch.ends),
                       row_layout=layout, **cached)
    return _read_probs(output.logits[0].view(len(requests), len(batch.ends), -1), token_ids)


def can_share_prefixes(model) -> bool:
    """Whether the model's attention takes the custom block mask that prefix sharing needs."""
    return getattr(model.config, "_attn_implementation", None) in _MASKABLE_ATTENTION


def _prefix_sharing_agrees(model, request: SampleRequests, whole: np.ndarray, token_ids, pad_id,
                           preamble: Preamble | None = None, padding_free: bool = False) -> tuple[bool, float]:
    """Compare prefix sharing with `whole`, the sample's probabilities from whole rows, before trusting it for a
    whole dataset.

    A model whose code ignores a custom attention mask (or a cache of past keys, for the preamble, or keyword
    arguments, for padding-free batches) would otherwise give wrong scores without an error. Low-precision
    kernels differ from each other by rounding, so the tolerance follows the weights' dtype.
    """
    cut = len(preamble) if preamble else 0
    try:
        shared = shared_prefix_probs(model, [request.without_leading(cut)], token_ids, pad_id, preamble=preamble,
                                     padding_free=padding_free)[0]
    except (PaddingFreeUnsupported, TypeError, ValueError, RuntimeError) as error:
        if not padding_free:
            raise
        # A model whose forward pass takes no extra keyword arguments, or whose attention lays its output out
        # otherwise, fails here rather than giving wrong numbers.
        logger.info("Padding-free batches do not run on this model: %s", error)
        return False, math.inf
    difference = float(np.abs(shared - whole).max())
    full_precision = getattr(model, "dtype", None) == torch.float32 and getattr(model.config, "quantization_config", None) is None
    return difference <= (1e-3 if full_precision else 5e-2), difference


def _checked_way(model, requests: Sequence[SampleRequests], token_ids, pad_id, preamble: Preamble | None,
                 padding_free: bool) -> tuple[bool, Preamble | None, bool]:
    """The fastest way of sharing prefixes that agrees with whole rows: (share prefixes, preamble, padding-free).

    Each shortcut rests on something a model's code may not do (take a cache of past keys, pass keyword arguments
    on to attention), so each is dropped in turn, padding-free batches first, until one way agrees; when none
    does, the samples are scored as whole rows.
    """
    # On the shortest sample, which costs least to run twice.
    shortest = requests[min(range(len(requests)), key=lambda i: packed_width(requests[i]))]
    # The reference, run once for every way tried.
    whole = last_token_probs(model, [shortest.sequence(k) for k in range(len(shortest.suffixes))], token_ids, pad_id)
    ways = [(cached, free) for cached in ([preamble, None] if preamble else [None])
            for free in ([True, False] if padding_free else [False])]
    for cached, free in ways:
        agrees, difference = _prefix_sharing_agrees(model, shortest, whole, token_ids, pad_id, cached, free)
        if agrees:
            return True, cached, free
        way = [what for what, used in (("with the preamble cached", cached), ("in padding-free batches", free)) if used]
        logger.info("Shared prefixes %s disagree with whole rows by %.3g; trying another way.",
                    " and ".join(way) or "in padded rows", difference)
    logger.warning(
        "Prefix sharing and whole rows disagree by %.3g on the first sample with this model; scoring with whole rows "
        "instead (slower, same numbers as the released procedure's layout).",
        difference,
    )
    return False, None, False


def iter_score_batches(
    model,
    requests: Sequence[SampleRequests],
    token_ids: Sequence[int],
    pad_id: int,
    max_batch_tokens: int | None = None,
    progress: bool | ScoringProgress = True,
    desc: str = "Scoring",
    share_prefix: bool = True,
    share_preamble: bool = True,
    padding_free: bool = True,
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
        share_preamble: with prefixes shared, compute the leading tokens common to all samples once for the call
            (`preamble.py`); off only to measure what it saves.
        padding_free: with prefixes shared and SDPA attention, run each batch's real tokens as one sequence, so
            that the linear layers compute no padding (`padding_free.py`); off only to measure what it saves.
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
    preamble = None
    if shared and share_preamble:
        # Computed from every sample of the call, stored or not, so that a resumed run cuts its rows where the
        # first run did.
        preamble = run_preamble(model, requests[0].prefix[: common_leading_tokens([r.prefix for r in requests])])
    free = shared and padding_free and can_run_padding_free(model)
    if shared:
        shared, preamble, free = _checked_way(model, requests, token_ids, pad_id, preamble, free)
    packed = [r.without_leading(len(preamble)) for r in requests] if preamble else requests
    # Batches are planned and padded on bucketed widths, so that the number of batch shapes stays small.
    widths = [bucket_width(packed_width(r) if shared else w) for r, w in zip(packed, whole_widths)]
    # Tokens the model reads per sample (unpadded): the prefix once when it is shared (the preamble once per call,
    # not counted), K times otherwise.
    sample_tokens = [len(r.prefix) * (1 if shared else k) + sum(len(s) for s in r.suffixes) for r in packed]

    def run(batch: list[int], width: int) -> np.ndarray:
        if shared:
            return shared_prefix_probs(model, [packed[i] for i in batch], token_ids, pad_id, width, preamble, free)
        rows = [requests[i].sequence(j) for i in batch for j in range(k)]
        return last_token_probs(model, rows, token_ids, pad_id, width).reshape(len(batch), k, len(token_ids))

    yield from run_batches(
        run, widths, sample_tokens, rows_per_item=1 if shared else k,
        max_batch_tokens=max_batch_tokens or default_max_batch_tokens(model),
        progress=progress, desc=desc, done=done, shard=shard, plan_book=plan_book,
        # A plan holds for the rows it was made for: rows cut after a preamble are rows of another layout.
        layout=("shared-prefix" + (f"+preamble{len(preamble)}" if preamble else "") + ("+padding-free" if free else "")
                if shared else "whole-rows"),
    )


def score_requests(model, requests: Sequence[SampleRequests], token_ids: Sequence[int], pad_id: int, **options) -> np.ndarray:
    """All of `iter_score_batches` (which takes the same `options`), gathered into one array [N, K, S] in sample order."""
    k = len(requests[0].suffixes) if requests else 0
    out = np.full((len(requests), k, len(token_ids)), math.nan)
    for batch, probs in iter_score_batches(model, requests, token_ids, pad_id, **options):
        out[batch] = probs
    return out
