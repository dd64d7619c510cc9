"""The preamble: the leading tokens all samples share, run once per call and attended as a cache.

The reference is the unbatched path, each request's whole token sequence alone in a forward pass, on a tiny
random Llama in fp32, with the rating prompts rendered through the embedded model's chat template (whose system
message every row opens with).
"""

import logging

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from selectit_trl.engine import preamble as preamble_module
from selectit_trl.engine import scoring
from selectit_trl.engine.preamble import common_leading_tokens, run_preamble
from selectit_trl.engine.prompts import RatingSample, build_requests, load_prompts, score_token_ids
from selectit_trl.engine.scoring import last_token_probs, score_requests


@pytest.fixture(scope="module")
def model(tiny_llama):
    return AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32, attn_implementation="sdpa").eval()


@pytest.fixture(scope="module")
def requests(demo_rows, tokenizer):
    samples = [RatingSample(r["instruction"], r["output"]) for r in demo_rows[:6]]
    return build_requests(samples, load_prompts(3, 5), tokenizer, "sample_first", use_chat_template=True)


def unbatched(model, requests, ids, pad_id):
    return np.array([[last_token_probs(model, [r.sequence(k)], ids, pad_id)[0] for k in range(len(r.suffixes))]
                     for r in requests])


def test_common_leading_tokens_counts_what_every_prefix_opens_with():
    a = np.array
    assert common_leading_tokens([a([1, 2, 3, 4]), a([1, 2, 5]), a([1, 2, 3])]) == 2
    assert common_leading_tokens([a([1, 2, 3]), a([1, 2, 3])]) == 3
    assert common_leading_tokens([a([1, 2, 3]), a([1, 2, 3, 4])]) == 3
    assert common_leading_tokens([a([7, 2]), a([1, 2])]) == 0
    assert common_leading_tokens([a([1, 2]), a([], dtype=np.int64)]) == 0
    assert common_leading_tokens([]) == 0


def test_the_chat_template_gives_every_row_the_same_opening(requests, tokenizer):
    length = common_leading_tokens([r.prefix for r in requests])
    opening = tokenizer.decode(requests[0].prefix[:length])
    assert opening.startswith("<|im_start|>system\n") and "<|im_start|>user\n" in opening
    assert all(len(r.prefix) > length for r in requests)  # each sample still has a prefix of its own


def test_the_preamble_keeps_every_layers_keys_and_values_for_its_tokens(model, requests):
    length = common_leading_tokens([r.prefix for r in requests])
    preamble = run_preamble(model, requests[0].prefix[:length])
    assert len(preamble) == length and len(preamble.states) == model.config.num_hidden_layers
    heads, dim = model.config.num_key_value_heads, model.config.hidden_size // model.config.num_attention_heads
    assert all(k.shape == v.shape == (1, heads, length, dim) for k, v in preamble.states)
    # The same keys a whole row computes for those positions: causal attention makes them depend on them alone.
    ids = torch.as_tensor(requests[1].sequence(0)[None], dtype=torch.long)
    with torch.no_grad():
        whole = model(input_ids=ids, use_cache=True)
    whole_cache = getattr(whole, preamble_module.CACHE_NAME)
    for (k, v), layer in zip(preamble.states, whole_cache.layers):
        assert torch.allclose(k, layer.keys[:, :, :length], atol=1e-6)
        assert torch.allclose(v, layer.values[:, :, :length], atol=1e-6)
    assert run_preamble(model, np.array([], dtype=np.int64)) is None


@pytest.mark.parametrize("padding_free", [True, False])
@pytest.mark.parametrize("budget", [1, 10**6])
def test_scores_with_the_preamble_cached_equal_whole_rows_alone(model, requests, tokenizer, budget, padding_free):
    ids, pad = score_token_ids(tokenizer, 5), tokenizer.pad_token_id
    passes = []

    def record(module, args, kwargs):
        # The pass appends its rows' keys to the cache: note what it holds before.
        cache = kwargs.get(preamble_module.CACHE_NAME)
        passes.append({**kwargs, "cached": cache.get_seq_length() if cache is not None else 0})

    hook = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        got = score_requests(model, requests, ids, pad, max_batch_tokens=budget, progress=False,
                             padding_free=padding_free)
    finally:
        hook.remove()
    assert np.abs(got - unbatched(model, requests, ids, pad)).max() < 1e-5
    length = common_leading_tokens([r.prefix for r in requests])
    assert passes[0]["input_ids"].shape == (1, length)
    scoring = passes[3:]  # after the preamble and the check against whole rows
    assert len(scoring) == (len(requests) if budget == 1 else 1)
    for kwargs in scoring:
        if padding_free:
            # The batch's real tokens run as one sequence; only attention lays them out in rows.
            rows, width = kwargs["row_layout"].rows, kwargs["row_layout"].width
            assert kwargs["input_ids"].shape == (1, len(kwargs["row_layout"].index))
        else:
            rows, width = kwargs["input_ids"].shape
        # The rows hold no preamble; the mask covers it, and the cache holds it for every row.
        assert kwargs["attention_mask"].shape == (rows, 1, width, length + width)
        assert (kwargs["attention_mask"][..., :length] == 0).all()
        assert kwargs["cached"] == length
        positions = kwargs["position_ids"]
        assert int(positions[positions > 0].min()) == length  # real tokens go on from the preamble; padding sits at 0
    # Every real token after the preamble runs once; padding-free, no padding reaches the model's layers.
    real = sum(len(r.prefix) - length + sum(len(s) for s in r.suffixes) for r in requests)
    tokens = sum(kwargs["input_ids"].numel() for kwargs in scoring)
    assert tokens == real if padding_free else tokens > real


def test_a_cache_that_disagrees_is_left_out_and_prefixes_are_still_shared(model, requests, tokenizer, monkeypatch,
                                                                          caplog):
    """A model that took the block mask but mishandled past keys would score wrongly; stand in for one whose
    passes with a preamble give nonsense, and check that scoring goes on sharing prefixes without it."""
    ids, pad = score_token_ids(tokenizer, 5), tokenizer.pad_token_id
    real = scoring.shared_prefix_probs

    def wrong_with_a_preamble(model, requests, token_ids, pad_id, width=None, preamble=None, padding_free=False):
        if preamble is not None:
            return np.full((len(requests), len(requests[0].suffixes), len(token_ids)), 0.5)
        return real(model, requests, token_ids, pad_id, width, padding_free=padding_free)

    monkeypatch.setattr(scoring, "shared_prefix_probs", wrong_with_a_preamble)
    passes = []
    hook = model.register_forward_pre_hook(lambda m, args, kwargs: passes.append(kwargs), with_kwargs=True)
    try:
        with caplog.at_level(logging.INFO, logger="selectit_trl.engine.scoring"):
            got = score_requests(model, requests, ids, pad, progress=False)
    finally:
        hook.remove()
    assert "Shared prefixes with the preamble cached disagree" in caplog.text and "whole rows instead" not in caplog.text
    assert np.abs(got - unbatched(model, requests, ids, pad)).max() < 1e-5
    last = passes[-1]  # padding-free still, without the preamble's columns
    assert preamble_module.CACHE_NAME not in last and last["attention_mask"].shape[-1] == last["row_layout"].width


def test_scoring_without_the_preamble_reads_it_in_every_row_and_gives_the_same_scores(model, requests, tokenizer):
    ids, pad = score_token_ids(tokenizer, 5), tokenizer.pad_token_id
    passes = []
    hook = model.register_forward_pre_hook(lambda m, args, kwargs: passes.append(kwargs), with_kwargs=True)
    try:
        without = score_requests(model, requests, ids, pad, progress=False, share_preamble=False, padding_free=False)
    finally:
        hook.remove()
    with_it = score_requests(model, requests, ids, pad, progress=False)
    assert np.abs(without - with_it).max() < 1e-5
    last = passes[-1]  # the one batch, after the two passes of the check
    assert len(passes) == 3 and preamble_module.CACHE_NAME not in last
    assert last["input_ids"].shape[1] >= max(len(r.prefix) for r in requests)  # every row holds its whole prefix
