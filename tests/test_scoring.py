"""The scorer on tiny random models in fp32: padding, batching, prefix sharing and last-position logits.

The reference throughout is the unbatched path: each request's whole token sequence alone in a forward pass.
"""

import logging

import numpy as np
import pytest
import torch
from conftest import SCORING_MODELS, build_scoring_model
from transformers import AutoModelForCausalLM

from selectit_trl.engine import scoring
from selectit_trl.engine.batching import bucket_width, plan_batches, share_batches
from selectit_trl.engine.preamble import common_leading_tokens
from selectit_trl.engine.prompts import (
    RatingPrompts,
    RatingSample,
    build_requests,
    load_prompts,
    score_token_ids,
)
from selectit_trl.engine.scoring import SampleRequests, last_token_probs, packed_width, score_requests


@pytest.fixture(scope="module", params=SCORING_MODELS)
def model(request, tiny_llama, tokenizer):
    return build_scoring_model(request.param, tiny_llama, tokenizer)


@pytest.fixture(scope="module")
def samples(demo_rows):
    # Mixed lengths: demo rows of different sizes, and one tiny sample.
    return [RatingSample(r["instruction"], r["output"]) for r in demo_rows[:7]] + [RatingSample("Hi", "Hello")]


@pytest.fixture(scope="module", params=["sample_first", "sample_first_chat", "prompt_first"])
def requests(request, samples, tokenizer):
    # Prompts of different lengths, so suffix blocks and whole rows are padded against each other.
    prompts = RatingPrompts(("Good?", "Rate how well the response follows the instruction.", "Correct?"), "Rate 1 to 5.")
    layout = "prompt_first" if request.param == "prompt_first" else "sample_first"
    return build_requests(samples, prompts, tokenizer, layout, use_chat_template=request.param.endswith("chat"))


def unbatched(model, requests, ids, pad_id):
    return np.array(
        [[last_token_probs(model, [r.sequence(k)], ids, pad_id)[0] for k in range(len(r.suffixes))] for r in requests]
    )


def test_plan_batches_keeps_the_budget_and_every_item():
    lengths = [5, 40, 12, 40, 7, 3, 25]
    batches = plan_batches(lengths, max_batch_tokens=80, rows_per_item=2)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) == 1 or len(batch) * 2 * max(lengths[i] for i in batch) <= 80
    assert batches[0][0] in (1, 3)  # longest first


def test_an_item_over_budget_gets_its_own_batch():
    assert plan_batches([100, 2], max_batch_tokens=10) == [[0], [1]]


def test_a_cap_on_items_splits_batches_the_budget_would_allow():
    # Generation's batches: at most 3 prompts each, longest first, the budget never binding.
    lengths = [5, 9, 7, 9, 3, 6, 8]
    assert plan_batches(lengths, max_batch_tokens=10**6, max_batch_items=3) == [[1, 3, 6], [2, 5, 0], [4]]


def test_batches_go_to_the_least_loaded_process_costliest_first():
    # Costs 10, 40, 25, 25, 5 over two processes: 40 -> 0, 25 -> 1, 25 -> 1, 10 -> 0, 5 -> 0 (50 against 50).
    assert share_batches([10, 40, 25, 25, 5], 2) == [0, 0, 1, 1, 0]


def test_bucket_width_rounds_up_to_sixteen_sizes_per_doubling():
    assert [bucket_width(w) for w in (1, 8, 9, 31, 32, 33, 200, 201, 992, 1000, 1025)] == [
        8, 8, 16, 32, 32, 40, 200, 208, 992, 1024, 1088,
    ]
    buckets = [bucket_width(w) for w in range(1, 5000)]
    assert all(w <= b <= max(w + 7, w * 17 / 16) for w, b in zip(range(1, 5000), buckets))
    assert buckets == sorted(buckets) and all(bucket_width(b) == b for b in buckets)
    assert len({b for b in buckets if 256 <= b < 512}) == 16


@pytest.mark.parametrize("share_prefix", [True, False])
def test_batch_shapes_come_from_the_buckets_not_from_the_number_of_samples(tiny_llama, tokenizer, demo_rows, share_prefix):
    """Each distinct batch shape costs memory for the life of the process (oneDNN caches a primitive per shape), so
    the shapes must not grow with N: every batch is one of the bucket widths, full but for the last batch. A
    padding-free batch's rows are its attention's shape; its layers see its real tokens as one sequence."""
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32, attn_implementation="sdpa").eval()
    samples = [RatingSample(r["instruction"], r["output"]) for r in demo_rows[:60]]
    requests = build_requests(samples, load_prompts(2, 5), tokenizer)
    shapes = []

    def record(module, args, kwargs):
        layout = kwargs.get("row_layout")
        shapes.append((layout.rows, layout.width) if layout else tuple(kwargs["input_ids"].shape))
        assert layout is None or kwargs["input_ids"].shape == (1, len(layout.index))

    model.register_forward_pre_hook(record, with_kwargs=True)
    budget = 4096
    score_requests(model, requests, score_token_ids(tokenizer, 5), tokenizer.pad_token_id,
                   max_batch_tokens=budget, progress=False, share_prefix=share_prefix)
    preamble = common_leading_tokens([r.prefix for r in requests]) if share_prefix else 0
    if share_prefix:
        # The preamble runs once, alone; then two passes check sharing against whole rows.
        assert preamble > 0 and shapes[0] == (1, preamble)
        shapes = shapes[3:]
    rows_per_sample = 1 if share_prefix else 2
    exact = {packed_width(r.without_leading(preamble)) if share_prefix else len(r.prefix) + max(map(len, r.suffixes))
             for r in requests}
    buckets = {bucket_width(w) for w in exact}
    assert sum(rows for rows, _ in shapes) == 60 * rows_per_sample
    assert {width for _, width in shapes} <= buckets
    assert len(buckets) < len(exact)  # the buckets do merge widths on these rows
    for rows, width in shapes[:-1]:
        # Full: one more sample would break the budget.
        assert rows * width <= budget < (rows + rows_per_sample) * width


@pytest.mark.parametrize("share_prefix", [True, False])
@pytest.mark.parametrize("budget", ["one", "many"])
def test_batched_paths_equal_the_unbatched_path(model, requests, tokenizer, share_prefix, budget):
    ids, pad = score_token_ids(tokenizer, 5), tokenizer.pad_token_id
    max_tokens = 1 if budget == "one" else 10**6
    got = score_requests(model, requests, ids, pad, max_batch_tokens=max_tokens, progress=False, share_prefix=share_prefix)
    expected = unbatched(model, requests, ids, pad)
    assert got.shape == (8, 3, 5)
    assert np.abs(got - expected).max() < 1e-5


def test_shared_prefix_batches_hold_every_sample_once(requests):
    if not len(requests[0].prefix):
        pytest.skip("prompt_first has no shared prefix")
    widths = [packed_width(r) for r in requests]
    assert widths[0] == len(requests[0].prefix) + sum(len(s) for s in requests[0].suffixes)
    batches = plan_batches(widths, max_batch_tokens=3 * max(widths))
    assert len(batches) == 3 and sorted(sum(batches, [])) == list(range(8))


def test_probabilities_are_the_full_vocabulary_softmax_at_the_last_position(model, requests, tokenizer):
    ids = score_token_ids(tokenizer, 5)
    got = score_requests(model, requests[:2], ids, tokenizer.pad_token_id, progress=False)
    for i, request in enumerate(requests[:2]):
        for k in range(3):
            with torch.no_grad():
                logits = model(torch.tensor([request.sequence(k).tolist()])).logits[0, -1].float()
            expected = torch.softmax(logits, dim=-1)[ids].double().numpy()
            assert np.abs(got[i, k] - expected).max() < 1e-5
    assert (got > 0).all() and (got.sum(-1) < 1).all()


def test_prefix_sharing_that_disagrees_falls_back_to_whole_rows(model, tokenizer, samples, monkeypatch, caplog):
    requests = build_requests(samples[:3], load_prompts(2, 5), tokenizer)
    ids, pad = score_token_ids(tokenizer, 5), tokenizer.pad_token_id
    expected = unbatched(model, requests, ids, pad)
    # A model that ignored the block mask would give different numbers from whole rows; stand in for one.
    monkeypatch.setattr(scoring, "shared_prefix_probs", lambda m, r, i, p, *args, **kwargs: np.full((len(r), 2, 5), 0.5))
    with caplog.at_level(logging.WARNING, logger="selectit_trl.engine.scoring"):
        got = score_requests(model, requests, ids, pad, progress=False)
    assert "disagree" in caplog.text
    assert np.abs(got - expected).max() < 1e-5


def test_scoring_leaves_no_gradients(model, requests, tokenizer):
    score_requests(model, requests[:1], score_token_ids(tokenizer, 5), tokenizer.pad_token_id, progress=False)
    assert all(p.grad is None for p in model.parameters())


def test_a_sample_longer_than_the_context_is_refused_by_index(model, tokenizer):
    long_sample = RatingSample("Summarise.", "word " * 1500)
    requests = build_requests([RatingSample("Hi", "Hello"), long_sample], load_prompts(1, 5), tokenizer)
    with pytest.raises(ValueError, match="first at index 1, render to more than the 1024 positions"):
        score_requests(model, requests, score_token_ids(tokenizer, 5), tokenizer.pad_token_id, progress=False)


def test_sample_requests_join_prefix_and_suffix():
    request = SampleRequests(np.array([1, 2], dtype=np.int32), (np.array([3]), np.array([4, 5])))
    assert request.sequence(1).tolist() == [1, 2, 4, 5]
