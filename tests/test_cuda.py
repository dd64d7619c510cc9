"""The same scorer and trainer on a CUDA device: skipped where there is none (CI has none).

Run on a GPU machine with `pytest tests/test_cuda.py`. They check what the CPU tests cannot: inputs, masks and
the rating softmax on the device, bitsandbytes' CUDA 4-bit kernels, SDPA's CUDA kernels, and the recipe path
(TRL's `get_quantization_config` and its device map) through the real CLI.
"""

import json
import math

import numpy as np
import pytest
import torch
from peft import LoraConfig

from selectit_trl import SelectiveSFTConfig, SelectiveSFTTrainer
from selectit_trl.cli import main
from selectit_trl.engine.models import scoring_mode
from selectit_trl.engine.prompts import (
    RatingPrompts,
    RatingSample,
    build_requests,
    score_token_ids,
)
from selectit_trl.engine.scoring import last_token_probs, score_requests
from selectit_trl.store.outputs import read_scores, read_summary
from selectit_trl.training.model_init import peer_rater

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.fixture(scope="module")
def requests(demo_rows, tokenizer):
    samples = [RatingSample(r["instruction"], r["output"]) for r in demo_rows[:9]] + [RatingSample("Hi", "Hello")]
    prompts = RatingPrompts(("Good?", "Rate how well the response follows the instruction.", "Correct?"), "Rate 1 to 5.")
    return {layout: build_requests(samples, prompts, tokenizer, layout) for layout in ("sample_first", "prompt_first")}


@pytest.mark.parametrize("layout", ["sample_first", "prompt_first"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_batched_paths_equal_the_unbatched_path_on_cuda(tiny_llama, tokenizer, requests, layout, attention):
    from transformers import AutoModelForCausalLM

    # TF32 would round the products to 10 bits of mantissa; the 1e-4 agreement is an fp32 claim.
    torch.backends.cuda.matmul.allow_tf32 = False
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32, attn_implementation=attention).to("cuda")
    ids, pad = score_token_ids(tokenizer, 5), tokenizer.pad_token_id
    with scoring_mode(model):
        reference = np.array(
            [[last_token_probs(model, [r.sequence(k)], ids, pad)[0] for k in range(3)] for r in requests[layout]]
        )
        for budget in (64, 100_000):  # one sample per batch, and everything in one batch
            batched = score_requests(model, requests[layout], ids, pad, max_batch_tokens=budget, progress=False)
            assert batched.shape == reference.shape == (10, 3, 5)
            np.testing.assert_allclose(batched, reference, atol=1e-4, rtol=0)


def test_trainer_scores_in_4bit_and_trains_lora_on_cuda(tiny_llama, demo_dataset, tmp_path):
    from transformers import BitsAndBytesConfig

    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    args = SelectiveSFTConfig(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=2, learning_rate=1e-2, max_length=128,
        report_to="none", save_strategy="no", logging_strategy="no", disable_tqdm=True, seed=0,
        selection_num_prompts=3, selection_ratio=0.25,
        model_init_kwargs={"dtype": torch.bfloat16, "quantization_config": quantization, "device_map": {"": 0}},
    )
    trainer = SelectiveSFTTrainer(
        model=tiny_llama, args=args, train_dataset=demo_dataset(24),
        peft_config=LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]),
    )
    assert trainer.model.device.type == "cuda"
    assert getattr(trainer.model.config, "quantization_config", None) is not None
    lora_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
    trainer.train()

    records = read_scores(tmp_path)
    assert len(records) == 24 and sum(r["selected"] for r in records) == 6 == len(trainer.train_dataset)
    assert all(math.isfinite(r["score"]) for r in records)
    probs = np.array([r["probs"][tiny_llama] for r in records])
    # Full-vocabulary softmax at the rating position, read at the five score tokens: a part of one distribution.
    assert probs.shape == (24, 3, 5) and (probs > 0).all() and (probs.sum(-1) <= 1 + 1e-6).all()
    assert read_summary(tmp_path)["models"][0]["weight"] == 1.0
    after = dict(trainer.model.named_parameters())
    assert any(not torch.equal(lora_before[n], after[n]) for n in lora_before), "LoRA did not train on the GPU"


def test_a_recipe_with_load_in_4bit_runs_on_cuda_through_the_cli(tiny_llama, demo_rows, tmp_path, capsys):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in demo_rows[:20]), encoding="utf-8")
    out = tmp_path / "run"
    code = main([
        "train", "--model_name_or_path", tiny_llama, "--dataset_name", str(data), "--output_dir", str(out),
        "--load_in_4bit", "--dtype", "bfloat16", "--use_peft", "--lora_r", "4", "--lora_target_modules", "q_proj", "v_proj",
        "--max_steps", "2", "--per_device_train_batch_size", "2", "--max_length", "128", "--report_to", "none",
        "--save_strategy", "no", "--selection_num_prompts", "3", "--selection_ratio", "0.2",
    ])
    assert code == 0
    assert sum(r["selected"] for r in read_scores(out)) == 4
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and sorted(adapter["target_modules"]) == ["q_proj", "v_proj"]


def test_a_4bit_peer_loads_on_the_gpu_scores_and_is_released(tiny_llama, tokenizer, demo_dataset, tmp_path):
    from conftest import build_tiny_llama

    peer = build_tiny_llama(tmp_path / "peer", tokenizer, seed=1, hidden_size=128, layers=2)
    args = SelectiveSFTConfig(
        output_dir=str(tmp_path / "out"), report_to="none", disable_tqdm=True, selection_num_prompts=3,
        selection_ratio=0.25, selection_peer_models=[peer], model_init_kwargs={"dtype": torch.bfloat16},
    )
    trainer = SelectiveSFTTrainer(model=tiny_llama, args=args, train_dataset=demo_dataset(16))
    assert trainer.model.device.type == "cuda"
    rater = peer_rater(trainer.args, trainer.model, args.peer_specs()[0])
    loaded = rater.load()
    assert loaded.get_input_embeddings().weight.device.type == "cuda"
    assert loaded.config.quantization_config.load_in_4bit
    del loaded
    before = torch.cuda.memory_allocated()
    result = trainer.select()
    assert [m["id"] for m in result.summary.models] == [tiny_llama, peer]
    assert result.summary.scored_this_run == {tiny_llama: 16, peer: 16}
    assert np.isfinite(result.scores).all()
    assert torch.cuda.memory_allocated() <= before + 2**20  # the peer is gone once it has scored
