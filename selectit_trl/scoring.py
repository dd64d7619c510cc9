"""The scoring engine: token ids in, raw probabilities of the rating tokens out.

It knows nothing of datasets, prompts or files. Given, for each sample, K token sequences (one per rating
prompt), it returns the full-vocabulary softmax at the last position of each, read at the rating tokens.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

DEFAULT_MAX_BATCH_TOKENS = 8192


def plan_batches(lengths: Sequence[int], max_batch_tokens: int, rows_per_item: int = 1) -> list[list[int]]:
    """Group items into batches whose padded size (rows x longest row) stays within a token budget.

    Each item brings `rows_per_item` rows of (at most) its length: a sample brings its K rating requests.

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


def _left_pad(sequences: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-pad so that every row's last real token sits at the final position.

    Position ids are counted over real tokens only, so a padded row sees exactly the positions it would see
    alone; this is what makes batched probabilities equal unbatched ones.
    """
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, width - len(seq) :] = torch.as_tensor(seq, dtype=torch.long)
        mask[row, width - len(seq) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), positions.to(device)


@torch.no_grad()
def last_token_probs(model, sequences: Sequence[Sequence[int]], token_ids: Sequence[int], pad_id: int) -> np.ndarray:
    """One forward pass over a batch: full-vocabulary softmax at each row's last position, read at `token_ids`."""
    device = next(model.parameters()).device
    input_ids, attention_mask, position_ids = _left_pad(sequences, pad_id, device)
    # logits_to_keep=1 computes the LM head at the last position only: with a large vocabulary this is most of
    # the compute the released scripts spend per token.
    output = model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, logits_to_keep=1, use_cache=False
    )
    logits = output.logits[:, -1, :].float()
    probs = torch.softmax(logits, dim=-1)[:, torch.as_tensor(list(token_ids), device=device)]
    return probs.double().cpu().numpy()


def iter_score_batches(
    model,
    requests: Sequence[Sequence[Sequence[int]]],
    token_ids: Sequence[int],
    pad_id: int,
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
    progress: bool = True,
    desc: str = "Scoring",
) -> Iterator[tuple[list[int], np.ndarray]]:
    """Score samples batch by batch, yielding `(sample indices, probs [n, K, S])` as each batch finishes.

    Args:
        requests: for each sample, its K token sequences (one per rating prompt). A sample's K rows always
            share a batch.
        max_batch_tokens: budget for one forward pass, counted as padded rows x width.
    """
    k = len(requests[0]) if requests else 0
    widths = [max(len(seq) for seq in sample) for sample in requests]
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    too_long = [i for i, width in enumerate(widths) if limit and width > limit]
    if too_long:
        raise ValueError(
            f"{len(too_long)} sample(s), the first at index {too_long[0]}, render to more than the {limit} positions "
            "this model can attend to. Shorten or drop those rows before selection."
        )
    batches = plan_batches(widths, max_batch_tokens, rows_per_item=k)
    with tqdm(total=len(requests), desc=desc, unit="sample", disable=not progress, dynamic_ncols=True) as bar:
        for batch in batches:
            rows = [seq for i in batch for seq in requests[i]]
            probs = last_token_probs(model, rows, token_ids, pad_id)
            yield batch, probs.reshape(len(batch), k, len(token_ids))
            bar.update(len(batch))


def score_requests(model, requests, token_ids, pad_id, max_batch_tokens=DEFAULT_MAX_BATCH_TOKENS, progress=True, desc="Scoring") -> np.ndarray:
    """All of `iter_score_batches`, gathered into one array of shape [N, K, S] in sample order."""
    out = np.full((len(requests), len(requests[0]) if requests else 0, len(token_ids)), math.nan)
    for batch, probs in iter_score_batches(model, requests, token_ids, pad_id, max_batch_tokens, progress, desc):
        out[batch] = probs
    return out
