"""The scorer on a tiny random Llama in fp32: padding, batching and last-position logits."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from selectit_trl.prompts import RatingSample, build_requests, load_prompts, score_token_ids
from selectit_trl.scoring import plan_batches, score_requests


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def model(request, tiny_llama, tokenizer):
    """Llama (rotary positions) and GPT-2 (absolute positions, which catch wrong position ids under padding)."""
    if request.param == "llama":
        return AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=64, n_layer=2, n_head=4, n_positions=1024)
    return GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="module")
def requests(tokenizer, demo_rows):
    samples = [RatingSample(r["instruction"], r["output"]) for r in demo_rows[:8]]
    # prompt_first, so the K rows of one sample also differ in length and get padded against each other
    return build_requests(samples, load_prompts(3, 5), tokenizer, layout="prompt_first")


def test_plan_batches_keeps_the_budget_and_every_item():
    lengths = [5, 40, 12, 40, 7, 3, 25]
    batches = plan_batches(lengths, max_batch_tokens=80, rows_per_item=2)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) == 1 or len(batch) * 2 * max(lengths[i] for i in batch) <= 80
    assert batches[0][0] in (1, 3)  # longest first


def test_an_item_over_budget_gets_its_own_batch():
    assert plan_batches([100, 2], max_batch_tokens=10) == [[0], [1]]


def test_batch_of_one_equals_batch_of_eight(model, requests, tokenizer):
    ids = score_token_ids(tokenizer, 5)
    widest = max(len(s) for r in requests for s in r)
    one = score_requests(model, requests, ids, tokenizer.pad_token_id, max_batch_tokens=1, progress=False)
    eight = score_requests(model, requests, ids, tokenizer.pad_token_id, max_batch_tokens=8 * 3 * widest, progress=False)
    assert len(plan_batches([widest] * 8, 8 * 3 * widest, rows_per_item=3)) == 1
    assert np.abs(one - eight).max() < 1e-5
    assert one.shape == (8, 3, 5)


def test_probabilities_are_the_full_vocabulary_softmax_at_the_last_position(model, requests, tokenizer):
    ids = score_token_ids(tokenizer, 5)
    got = score_requests(model, requests[:2], ids, tokenizer.pad_token_id, progress=False)
    for i, per_sample in enumerate(requests[:2]):
        for k, seq in enumerate(per_sample):
            with torch.no_grad():
                logits = model(torch.tensor([seq])).logits[0, -1].float()
            expected = torch.softmax(logits, dim=-1)[ids].double().numpy()
            assert np.abs(got[i, k] - expected).max() < 1e-6
    assert (got > 0).all() and (got.sum(-1) < 1).all()


def test_scoring_leaves_no_gradients(model, requests, tokenizer):
    score_requests(model, requests[:1], score_token_ids(tokenizer, 5), tokenizer.pad_token_id, progress=False)
    assert all(p.grad is None for p in model.parameters())


def test_a_sample_longer_than_the_context_is_refused_by_index(model, tokenizer):
    long_sample = RatingSample("Summarise.", "word " * 1500)
    requests = build_requests([RatingSample("Hi", "Hello"), long_sample], ["Rate it."], tokenizer, layout="prompt_first")
    with pytest.raises(ValueError, match="first at index 1, render to more than the 1024 positions"):
        score_requests(model, requests, score_token_ids(tokenizer, 5), tokenizer.pad_token_id, progress=False)
