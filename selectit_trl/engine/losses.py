"""The loss engine: token ids in, the mean token loss of a target text after each of its contexts out.

IFD and reverse IFD (`strategies.py`) compare how well the model predicts one text with and without some
context: the response with and without its instruction, or the instruction with and without its response.
Each sample therefore arrives as a target and C contexts; the model reads `context_c + target` and the engine
returns the mean cross-entropy of the target's tokens only, one value per context.

A sample's C rows always share a batch, and batches go through the same planning, sharing between processes,
resume and out-of-memory handling as the rating probabilities (`batching.run_batches`). Rows are left-padded,
so every target ends at the last column; only the last `longest target + 1` positions go through the LM head.
Like the rating engine, it knows nothing of datasets, prompts or files.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np
import torch

from ..progress import ScoringProgress
from .batching import (
    PlanBook,
    bucket_width,
    check_fits,
    default_max_batch_tokens,
    input_device,
    left_pad,
    run_batches,
)


class TargetRequests(NamedTuple):
    """One sample's loss requests: the model reads `contexts[c] + target` for each c."""

    contexts: tuple[np.ndarray, ...]  # C arrays of int token ids, each non-empty
    target: np.ndarray  # int token ids whose mean loss is measured, non-empty
    # Each context's own target, where they differ: the released scripts cut each text to its own limit.
    targets: tuple[np.ndarray, ...] | None = None

    def target_of(self, c: int) -> np.ndarray:
        return self.target if self.targets is None else self.targets[c]

    def sequence(self, c: int) -> np.ndarray:
        return np.concatenate([self.contexts[c], self.target_of(c)])

    def width(self, c: int) -> int:
        """Tokens the model reads after context c: len(sequence(c)), without building it."""
        return len(self.contexts[c]) + len(self.target_of(c))


@torch.no_grad()
def target_losses(model, rows: Sequence[tuple[np.ndarray, np.ndarray]], pad_id: int, width: int | None = None) -> np.ndarray:
    """Mean token cross-entropy of each row's target after its context, in one forward pass: [len(rows)].

    Args:
        rows: (context, target) token ids per row.
        width: pad every row to this width (default: the longest row).
    """
    sequences = [np.concatenate([context, target]) for context, target in rows]
    input_ids, attention_mask, position_ids = left_pad(sequences, pad_id, input_device(model), width)
    longest_target = max(len(target) for _, target in rows)
    # Left padding puts every target at the end of its row; the logits at position t predict token t + 1.
    output = model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
        logits_to_keep=longest_target + 1, use_cache=False,
    )
    logits = output.logits[:, :-1, :]
    losses = np.empty(len(rows))
    for row, (_, target) in enumerate(rows):
        # Row by row, so that the fp32 copy of the logits is one row's, not the batch's.
        predicted = logits[row, logits.shape[1] - len(target) :, :].float()
        expected = input_ids[row, input_ids.shape[1] - len(target) :]
        losses[row] = torch.nn.functional.cross_entropy(predicted, expected, reduction="mean").item()
    return losses


def iter_loss_batches(
    model,
    requests: Sequence[TargetRequests],
    pad_id: int,
    max_batch_tokens: int | None = None,
    progress: bool | ScoringProgress = True,
    desc: str = "Losses",
    done: Sequence[bool] | None = None,
    shard: tuple[int, int] = (0, 1),
    plan_book: PlanBook | None = None,
) -> Iterator[tuple[list[int], np.ndarray]]:
    """Compute losses batch by batch, yielding `(sample indices, losses [n, C])` as each batch finishes.

    The options are those of `scoring.iter_score_batches`, and batches are planned the same way, so a sample's
    losses come out bit for bit the same in a first, a resumed or a multi-process run.
    """
    if not requests:
        return
    count = len(requests[0].contexts)
    lengths = [max(r.width(c) for c in range(count)) for r in requests]
    check_fits(model, lengths)
    widths = [bucket_width(length) for length in lengths]
    sample_tokens = [sum(r.width(c) for c in range(count)) for r in requests]

    def run(batch: list[int], width: int) -> np.ndarray:
        rows = [(requests[i].contexts[c], requests[i].target_of(c)) for i in batch for c in range(count)]
        return target_losses(model, rows, pad_id, width).reshape(len(batch), count)

    yield from run_batches(
        run, widths, sample_tokens, rows_per_item=count,
        max_batch_tokens=max_batch_tokens or default_max_batch_tokens(model),
        progress=progress, desc=desc, done=done, shard=shard, plan_book=plan_book, layout="target-rows",
    )


def fit_target_requests(requests: Sequence[TargetRequests], max_positions: int | None) -> tuple[list[TargetRequests], list[bool]]:
    """Fit every sample within the model's context: the target keeps its start (at least half the context),
    and a context too long for what is left loses its middle. Returns the requests and whether each was cut."""
    if not max_positions:
        return list(requests), [False] * len(requests)
    out, cut = [], []
    for request in requests:
        longest = max(len(c) for c in request.contexts)
        if longest + len(request.target) <= max_positions:
            out.append(request)
            cut.append(False)
            continue
        target = request.target[: max(max_positions - longest, max_positions // 2)]
        room = max_positions - len(target)
        contexts = tuple(
            c if len(c) <= room else np.concatenate([c[: (room + 1) // 2], c[len(c) - room // 2 :]])
            for c in request.contexts
        )
        out.append(TargetRequests(contexts, target))
        cut.append(True)
    return out, cut
