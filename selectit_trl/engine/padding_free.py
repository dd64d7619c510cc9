"""Padding-free batches: a shared-prefix batch's linear layers run on its real tokens only.

A shared-prefix batch pads every row to the batch's width: the default's batches of the Alpaca demo rows hold
7.7% more tokens than they have real ones (docs/performance.md). Everything in a decoder but attention works on
each token alone, so the batch's real tokens go through the model as one sequence, each with its own position
id, and only attention sees rows: a registered attention function spreads each layer's queries, keys and values
into the batch's padded rows, runs the model's SDPA attention under the batch's block mask, and gathers the
real tokens' outputs back. Every real token meets the same arithmetic as in a padded row; the tests compare the
two paths with whole rows alone.

It needs a model whose attention goes through transformers' `AttentionInterface` and passes on the forward
pass's keyword arguments, as transformers' own models do. A model that does not gets `PaddingFreeUnsupported`,
and the scorer checks this on one sample before it relies on the path (`scoring.py`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

# The name the attention function is registered under; a model is switched to it for the length of one pass.
ATTENTION_NAME = "selectit_padding_free"
# The attention implementation whose arithmetic the function keeps: it spreads the tokens and calls that one.
WRAPPED_ATTENTION = "sdpa"


class PaddingFreeUnsupported(RuntimeError):
    """The model's attention never received the batch's row layout: its layers do not pass keyword arguments on."""


@dataclass(frozen=True)
class RowLayout:
    """Where a batch's real tokens sit in its padded rows: `index` holds `row * width + column` for each, ascending."""

    rows: int
    width: int
    index: torch.Tensor

    @classmethod
    def of(cls, real: torch.Tensor) -> RowLayout:
        """The layout of a batch from its [rows, width] mask of real tokens."""
        rows, width = real.shape
        return cls(rows, width, real.reshape(-1).nonzero()[:, 0])

    def flatten(self, padded: torch.Tensor) -> torch.Tensor:
        """A [rows, width] tensor of the padded batch as the [1, tokens] sequence of its real tokens."""
        return padded.reshape(-1)[self.index.to(padded.device)][None]

    def flat_positions(self, columns: torch.Tensor) -> torch.Tensor:
        """Where the tokens at `columns` of every row sit in the flat sequence, row by row (each must be real)."""
        index = self.index.to(columns.device)
        wanted = (torch.arange(self.rows, device=columns.device)[:, None] * self.width + columns[None]).reshape(-1)
        return torch.searchsorted(index, wanted)

    def spread(self, states: torch.Tensor, leading: torch.Tensor | None = None, zero: bool = True) -> torch.Tensor:
        """[1, heads, tokens, dim] states as [rows, heads, width, dim], zero at padding.

        `leading` ([1, heads, n, dim], a cached preamble's keys or values) goes before every row, which then has
        n + width columns. Keys and values must be zero at padding, not left empty: a masked key's weight is
        zero, but zero times an uninitialised NaN would not be. Queries need not (`zero=False`): a padding
        query's output is never gathered, and rows do not mix in attention.
        """
        heads, dim = states.shape[1], states.shape[3]
        lead = 0 if leading is None else leading.shape[-2]
        shape = (self.rows, lead + self.width, heads, dim)
        rows = states.new_zeros(shape) if zero else states.new_empty(shape)
        index = self.index.to(states.device)
        if lead:
            rows[:, :lead] = leading[0].transpose(0, 1)
            index = index // self.width * (lead + self.width) + lead + index % self.width
        rows.view(-1, heads, dim).index_copy_(0, index, states[0].transpose(0, 1))
        return rows.transpose(1, 2)

    def gather(self, output: torch.Tensor) -> torch.Tensor:
        """[rows, width, heads, dim] attention output as [1, tokens, heads, dim], the real tokens only."""
        heads, dim = output.shape[2], output.shape[3]
        return output.reshape(-1, heads, dim).index_select(0, self.index.to(output.device))[None]


def padding_free_attention(module, query, key, value, attention_mask, row_layout: RowLayout | None = None, **kwargs):
    """transformers' attention-function signature, on a flat sequence: [1, heads, tokens, dim] in, [1, tokens,
    heads, dim] out. Keys beyond the queries (a cache's) come first and are the same for every row."""
    if row_layout is None:
        raise PaddingFreeUnsupported(
            "The model's attention got no row layout: its layers do not pass the forward pass's keyword arguments on."
        )
    lead = key.shape[-2] - query.shape[-2]
    keys = row_layout.spread(key[:, :, lead:], key[:, :, :lead] if lead else None)
    values = row_layout.spread(value[:, :, lead:], value[:, :, :lead] if lead else None)
    queries = row_layout.spread(query, zero=False)
    output, weights = sdpa_attention_forward(module, queries, keys, values, attention_mask, **kwargs)
    return row_layout.gather(output), weights


AttentionInterface.register(ATTENTION_NAME, padding_free_attention)


def can_run_padding_free(model) -> bool:
    """Whether the model attends through SDPA, the implementation the padding-free function wraps."""
    return getattr(model.config, "_attn_implementation", None) == WRAPPED_ATTENTION


@contextlib.contextmanager
def padding_free_passes(model):
    """Switch the model's attention to the padding-free function for the passes inside, and back after."""
    model.set_attn_implementation(ATTENTION_NAME)
    try:
        if model.config._attn_implementation != ATTENTION_NAME:
            raise PaddingFreeUnsupported(f"{type(model).__name__} cannot switch its attention implementation.")
        yield
    finally:
        model.set_attn_implementation(WRAPPED_ATTENTION)
