"""Scoring the 4-bit model must not change the QLoRA gradients that follow it (the bitsandbytes CPU hazard)."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

from selectit_trl.engine.models import scoring_mode
from selectit_trl.engine.prompts import (
    RatingSample,
    build_requests,
    load_prompts,
    score_token_ids,
)
from selectit_trl.engine.scoring import last_token_probs, score_requests


def load_qlora(path):
    model = AutoModelForCausalLM.from_pretrained(
        path, quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32)
    )
    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    return get_peft_model(model, config)


def lora_gradients(model, batch):
    model.train()
    model.zero_grad()
    model(**batch, labels=batch["input_ids"]).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.fixture(scope="module")
def inputs(tokenizer, demo_rows):
    samples = [RatingSample(r["instruction"], r["output"]) for r in demo_rows[:3]]
    requests = build_requests(samples, load_prompts(2, 5), tokenizer, layout="sample_first")
    batch = tokenizer(["Instruction: add 2 and 3.\nResponse: 5"], return_tensors="pt")
    return requests, batch


def test_gradients_after_scoring_equal_gradients_without_it(tiny_llama, tokenizer, inputs):
    requests, batch = inputs
    reference = lora_gradients(load_qlora(tiny_llama), batch)

    scored = load_qlora(tiny_llama)
    with scoring_mode(scored):
        score_requests(scored, requests, score_token_ids(tokenizer, 5), tokenizer.pad_token_id, progress=False)
    after = lora_gradients(scored, batch)

    assert reference and set(after) == set(reference)
    assert any("lora_A" in n for n in after)
    for name in reference:
        assert torch.equal(after[name], reference[name]), name


def _cpu_repacks_4bit_weights() -> bool:
    from bitsandbytes.functional import has_avx512bf16

    return bool(has_avx512bf16())


@pytest.mark.skipif(not _cpu_repacks_4bit_weights(), reason="this CPU has no AVX512-BF16, so bitsandbytes never repacks")
def test_without_the_guard_the_gradients_do_change(tiny_llama, inputs, tokenizer):
    """The hazard is real here: an unguarded eval-mode, no-grad pass changes the later gradients."""
    requests, batch = inputs
    reference = lora_gradients(load_qlora(tiny_llama), batch)
    unguarded = load_qlora(tiny_llama)
    unguarded.eval()
    with unguarded.disable_adapter(), torch.no_grad():
        last_token_probs(unguarded, [requests[0].sequence(0)], score_token_ids(tokenizer, 5), tokenizer.pad_token_id)
    after = lora_gradients(unguarded, batch)
    lost_or_changed = [n for n in reference if n not in after or not torch.equal(after[n], reference[n])]
    assert lost_or_changed
