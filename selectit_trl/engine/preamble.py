"""The tokens that every sample's prefix opens with, run through the model once per call instead of once per row.

With a chat template and the default rating prompts, every shared-prefix row opens with the same 40 tokens
(the system message that asks for a rating, the user turn's opening, "Instruction:"), about 14% of the tokens
of an Alpaca row (docs/performance.md). Attention is causal, so the keys and values of those tokens depend on
those tokens alone: they are computed once, and every batch attends to them as a cache of past keys, with its
rows' positions going on after them. Only a shared-prefix row uses this; its block mask already says what each
query attends, and it gains the preamble's columns, which every query may attend.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import transformers
from transformers.cache_utils import Cache, DynamicLayer

from .batching import input_device

# transformers 5.24 renamed the forward pass's argument and output `past_key_values` to `cache` (the old name
# warns until 5.40); 5.23 knows only the old one.
CACHE_NAME = "cache" if tuple(map(int, transformers.__version__.split(".")[:2])) >= (5, 24) else "past_key_values"


def common_leading_tokens(prefixes: Sequence[np.ndarray]) -> int:
    """How many leading tokens all the prefixes have in common (0 when any prefix is empty)."""
    if not prefixes:
        return 0
    first = np.asarray(prefixes[0])
    length = min(len(p) for p in prefixes)
    for prefix in prefixes[1:]:
        differs = np.flatnonzero(np.asarray(prefix[:length]) != first[:length])
        if len(differs):
            length = int(differs[0])
    return length


class PreambleLayer(DynamicLayer):
    """One layer's preamble keys and values: a pass attends to them before its own keys and stores none of its own.

    A cache that kept each layer's new keys, as transformers' own does for generation, would hold every layer's
    at once until the pass ends, where attention without a cache frees each layer's as it goes: on the embedded
    model that raised peak memory by 220 MiB, 16%, at the CPU's 2,048-token batches (docs/performance.md).
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        super().__init__()
        self.keys, self.values, self.device, self.is_initialized = keys, values, keys.device, True

    def update(self, key_states, value_states, *args, **kwargs):
        return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)


@dataclass(frozen=True)
class Preamble:
    """Leading tokens common to a call's rows, with the keys and values every layer computed for them."""

    tokens: np.ndarray
    states: tuple[tuple[torch.Tensor, torch.Tensor], ...]  # per layer: keys, values [1, heads, tokens, head dim]

    def __len__(self) -> int:
        return len(self.tokens)

    def forward_arguments(self, rows: int) -> dict:
        """What a forward pass over `rows` rows that follow the preamble takes besides its inputs.

        The preamble's keys are expanded to the rows as views, not copied.
        """
        cache = Cache(layers=[PreambleLayer(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1))
                              for k, v in self.states])
        return {CACHE_NAME: cache, "use_cache": True}


@torch.no_grad()
def run_preamble(model, tokens: np.ndarray) -> Preamble | None:
    """Run the leading tokens once and keep their keys and values; None where the model gives no usable cache.

    A model whose cache keeps fewer positions than it was given (a sliding window shorter than the preamble), or
    holds something other than keys and values, or that returns none, is scored without a preamble.
    """
    if not len(tokens):
        return None
    device = input_device(model)
    ids = torch.as_tensor(np.asarray(tokens, dtype=np.int64), device=device)[None]
    output = model(input_ids=ids, position_ids=torch.arange(ids.shape[1], device=device)[None], use_cache=True,
                   logits_to_keep=1)
    cache = getattr(output, CACHE_NAME, None)
    layers = getattr(cache, "layers", None)
    if not layers:
        return None
    # A layer of another kind (a recurrent state, say) has no keys: such a model goes without a preamble.
    states = tuple((getattr(layer, "keys", None), getattr(layer, "values", None)) for layer in layers)
    if any(k is None or v is None or k.shape[-2] != len(tokens) or v.shape[-2] != len(tokens) for k, v in states):
        return None
    return Preamble(np.asarray(tokens), states)
