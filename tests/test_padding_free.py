"""Padding-free batches: a shared-prefix batch's real tokens run through the layers as one sequence, and only
attention lays them out in the batch's rows.

The reference is the unbatched path, each request's whole token sequence alone in a forward pass, on tiny random
models in fp32.
"""

import logging

import numpy as np
import pytest
import torch
from conftest import SCORING_MODELS, build_scoring_model
from transformers import AttentionInterface, AutoModelForCausalLM

from selectit_trl.engine.padding_free import ATTENTION_NAME, RowLayout, padding_free_attention
from selectit_trl.engine.prompts import RatingSample, build_requests, load_prompts, score_token_ids
from selectit_trl.engine.scoring import last_token_probs, score_requests

# Three rows of width 5: padding on the left of blocks and between them, and one full row.
REAL = torch.tensor([[False, True, True, False, True], [True, True, True, True, True], [False, False, True, True, True]])


def test_a_row_layout_finds_every_real_token_in_the_flat_sequence():
    layout = RowLayout.of(REAL)
    assert (layout.rows, layout.width) == (3, 5)
    assert layout.index.tolist() == [1, 2, 4, 5, 6, 7, 8, 9, 12, 13, 14]
    assert layout.flatten(torch.arange(15).view(3, 5) * 10).tolist() == [[10, 20, 40, 50, 60, 70, 80, 90, 120, 130, 140]]
    # Columns 2 and 4 of rows 0, 1 and 2, where the scorer reads its K suffixes' last tokens.
    assert layout.flat_positions(torch.tensor([2, 4])).tolist() == [1, 2, 5, 7, 8, 10]


def test_spreading_into_rows_and_gathering_back_moves_values_exactly():
    layout = RowLayout.of(REAL)
    states = torch.arange(1, 1 + 2 * 11 * 3, dtype=torch.float32).view(1, 2, 11, 3)  # [1, heads, tokens, dim]
    rows = layout.spread(states)
    assert rows.shape == (3, 2, 5, 3)
    for token, flat in enumerate(layout.index.tolist()):
        assert torch.equal(rows[flat // 5, :, flat % 5], states[0, :, token])
    assert (rows.transpose(1, 2)[~REAL] == 0).all()  # padding is zero, not left uninitialised
    # A cache's leading keys go before every row.
    leading = -torch.arange(1, 1 + 2 * 4 * 3, dtype=torch.float32).view(1, 2, 4, 3)
    with_leading = layout.spread(states, leading)
    assert with_leading.shape == (3, 2, 9, 3)
    assert all(torch.equal(with_leading[r, :, :4], leading[0]) for r in range(3))
    assert torch.equal(with_leading[:, :, 4:], rows)
    # Attention's output comes back as [rows, width, heads, dim]; the real tokens' go back in sequence order.
    assert torch.equal(layout.gather(rows.transpose(1, 2)), states.transpose(1, 2))


@pytest.fixture(scope="module", params=SCORING_MODELS)
def model(request, tiny_llama, tokenizer):
    return build_scoring_model(request.param, tiny_llama, tokenizer)


@pytest.fixture(scope="module")
def requests(demo_rows, tokenizer):
    # Rows of different lengths, so that a batch of them pads; chat-rendered, so that they share a preamble too.
    samples = [RatingSample(r["instruction"], r["output"]) for r in demo_rows[:5]] + [RatingSample("Hi", "Hello")]
    return build_requests(samples, load_prompts(3, 5), tokenizer, "sample_first", use_chat_template=True)


def unbatched(model, requests, ids, pad_id):
    return np.array([[last_token_probs(model, [r.sequence(k)], ids, pad_id)[0] for k in range(len(r.suffixes))]
                     for r in requests])


def scored_with_passes(model, requests, ids, pad, **options):
    passes = []
    hook = model.register_forward_pre_hook(lambda m, args, kwargs: passes.append(kwargs), with_kwargs=True)
    try:
        return score_requests(model, requests, ids, pad, progress=False, **options), passes
    finally:
        hook.remove()


def test_padding_free_batches_equal_whole_rows_alone_where_attention_is_sdpa(model, requests, tokenizer):
    ids, pad = score_token_ids(tokenizer, 5), tokenizer.pad_token_id
    got, passes = scored_with_passes(model, requests, ids, pad, max_batch_tokens=10**6)
    assert np.abs(got - unbatched(model, requests, ids, pad)).max() < 1e-5
    batch = passes[-1]  # all six samples in one batch
    if model.config._attn_implementation == "sdpa":
        layout = batch["row_layout"]
        assert layout.rows == len(requests) and batch["input_ids"].shape == (1, len(layout.index))
        assert len(layout.index) < layout.rows * layout.width  # the rows pad; the layers saw none of it
    else:
        # Eager attention keeps its own arithmetic: the padded rows.
        assert "row_layout" not in batch and batch["input_ids"].shape[0] == len(requests)
    # The model comes back with the attention it had.
    assert model.config._attn_implementation in ("sdpa", "eager")


def test_a_model_whose_attention_gets_no_layout_is_scored_in_padded_rows(tiny_llama, requests, tokenizer, caplog):
    """A model whose layers do not pass keyword arguments on to attention cannot run padding-free; stand in for
    one with an attention function that loses the row layout, and check that the scorer pads the rows instead."""
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32, attn_implementation="sdpa").eval()
    ids, pad = score_token_ids(tokenizer, 5), tokenizer.pad_token_id

    def losing_the_layout(module, query, key, value, attention_mask, row_layout=None, **kwargs):
        return padding_free_attention(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register(ATTENTION_NAME, losing_the_layout)
    try:
        with caplog.at_level(logging.INFO, logger="selectit_trl.engine.scoring"):
            got, passes = scored_with_passes(model, requests, ids, pad, max_batch_tokens=10**6)
    finally:
        AttentionInterface.register(ATTENTION_NAME, padding_free_attention)
    assert "in padding-free batches disagree with whole rows by inf" in caplog.text
    assert "whole rows instead" not in caplog.text
    assert np.abs(got - unbatched(model, requests, ids, pad)).max() < 1e-5
    assert passes[-1]["input_ids"].shape[0] == len(requests)  # padded rows, the preamble still cached
    assert model.config._attn_implementation == "sdpa"
