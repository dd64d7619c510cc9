"""The generation engine: prompts as token ids in, greedy continuations as text out (a teacher's rewrites).

Greedy text depends on the batch it is generated in (its padding, and the last bits of its floats), so
generation goes through the same planning and replay as the measurements (`batching.run_batches`): a prompt
that an earlier run planned, but whose text was lost, is generated again in that batch, whole, and comes out as
it did then. Batches hold at most `batch_size` prompts, longest first, and are shared between processes by
their cost, the prompt and the new tokens.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from ..progress import ScoringProgress
from .batching import PlanBook, input_device, left_pad, padding_id, run_batches


@torch.no_grad()
def generate(model, tokenizer, prompts: Sequence[np.ndarray], max_new_tokens: int) -> list[str]:
    """Greedy continuations of a batch of token-id prompts, left-padded, decoded without special tokens."""
    pad_id = padding_id(tokenizer)
    input_ids, attention_mask, _ = left_pad(prompts, pad_id, input_device(model))
    output = model.generate(
        input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens, do_sample=False,
        pad_token_id=pad_id, eos_token_id=tokenizer.eos_token_id,
    )
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in output[:, input_ids.shape[1]:]]


def iter_generation_batches(
    model,
    tokenizer,
    prompts: Sequence[np.ndarray],
    max_new_tokens: int,
    batch_size: int,
    progress: bool | ScoringProgress = True,
    desc: str = "Generating",
    done: Sequence[bool] | None = None,
    shard: tuple[int, int] = (0, 1),
    plan_book: PlanBook | None = None,
) -> Iterator[tuple[list[int], np.ndarray]]:
    """Generate batch by batch, yielding `(prompt indices, texts)` as each batch finishes.

    The options are those of `scoring.iter_score_batches`; `batch_size` is the most prompts one batch holds.
    """
    if not prompts:
        return
    widths = [len(p) for p in prompts]  # a batch is padded to its longest prompt, as `generate` does

    def run(batch: list[int], width: int) -> np.ndarray:
        texts = generate(model, tokenizer, [prompts[i] for i in batch], max_new_tokens)
        return np.array(texts, dtype=object)

    yield from run_batches(
        run, widths, [w + max_new_tokens for w in widths], rows_per_item=1,
        # The count caps every batch; the token budget binds only once running out of memory has halved it.
        max_batch_tokens=batch_size * max(widths), max_batch_items=batch_size, added_tokens=max_new_tokens,
        finite=False, progress=progress, desc=desc, done=done, shard=shard, plan_book=plan_book, layout="generate",
    )
