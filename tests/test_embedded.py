"""The embedded SmolLM2-135M-Instruct: fidelity to the released procedure, and 4-bit selection plus QLoRA."""

import json

import bitsandbytes as bnb
import numpy as np
import pytest
import torch
from conftest import cpu_config
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from selectit_trl import SelectiveSFTTrainer
from selectit_trl.engine.models import EMBEDDED_MODEL_ID
from selectit_trl.store.outputs import read_scores, read_summary

pytestmark = pytest.mark.slow

RELEASED_STYLE_PROMPTS = (
    "We would like you to rate the response to the instruction below on a scale of 1 to 5.\n"
    "Please judge how helpful the response is, giving a number from 1 to 5.\n"
    "How good is this answer? Reply with a digit from 1 to 5."  # the last line of a file may lack its newline
)


def released_procedure(model_dir, rows, prompt_lines, alpha):
    """A plain re-computation of the released SelectIT scoring: one sequence per forward pass, the
    full-vocabulary softmax at the last position, then the released normalisation, written out longhand."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    digit_ids = [tokenizer.convert_tokens_to_ids(str(d)) for d in range(1, 6)]
    scores = []
    for row in rows:
        instruction = row["instruction"] + ("\n" + row["input"] if row["input"] else "")
        token_level = []
        for line in prompt_lines:
            text = line + "\n" + "Instruction:" + instruction + "\n" + "Response:" + row["output"] + "\nThe answer is: \n"
            encoded = tokenizer(text, return_tensors="pt")
            with torch.no_grad():
                logits = model(**encoded).logits[0, -1, :]
            softmax = torch.softmax(logits.float(), dim=-1)
            p = [float(softmax[i]) for i in digit_ids]
            renormalised = [x / sum(p) for x in p]
            exps = [np.exp(x) for x in renormalised]
            q = [e / sum(exps) for e in exps]
            best = int(np.argmax(q))
            confidence = sum(q[best] - x for x in q) / (5 - 1)
            token_level.append((best + 1) * confidence)
        mean = sum(token_level) / len(token_level)
        std = (sum((t - mean) ** 2 for t in token_level) / len(token_level)) ** 0.5
        scores.append(mean / (1 + alpha * std))
    return scores


def test_prompt_first_reference_fp32_matches_the_released_procedure(embedded_dir, demo_rows, demo_dataset, tmp_path):
    prompts_file = tmp_path / "rating_prompt.txt"
    prompts_file.write_text(RELEASED_STYLE_PROMPTS, encoding="utf-8")
    dataset = demo_dataset(6)
    config = cpu_config(
        tmp_path / "out",
        selection_prompt_layout="prompt_first",
        selection_normalization="reference",
        selection_prompts_file=str(prompts_file),
        selection_num_prompts=3,
        selection_max_batch_tokens=2048,
    )
    model = AutoModelForCausalLM.from_pretrained(embedded_dir, dtype=torch.float32)
    SelectiveSFTTrainer(model=model, args=config, train_dataset=dataset).select()

    ours = [r["score"] for r in read_scores(tmp_path / "out")]
    expected = released_procedure(embedded_dir, dataset.to_list(), RELEASED_STYLE_PROMPTS.splitlines(keepends=True), 0.2)
    assert np.abs(np.array(ours) - np.array(expected)).max() < 1e-4
    assert len(set(np.round(expected, 6))) == 6  # six distinct scores: the comparison is not between constants


def test_embedded_model_in_4bit_scores_then_trains_the_same_model(demo_dataset, tmp_path):
    config = cpu_config(tmp_path, selection_ratio=0.5, max_steps=1, model_init_kwargs={"dtype": torch.float32})
    trainer = SelectiveSFTTrainer(
        args=config,
        train_dataset=demo_dataset(6),
        quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32),
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    four_bit = [m for m in trainer.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert four_bit, "the embedded model should be loaded in 4-bit"
    trainer.train()

    summary = read_summary(tmp_path)
    assert summary["models"] == [{"id": EMBEDDED_MODEL_ID, "num_parameters": 134_515_008, "weight": 1.0}]
    assert summary["counts"] == {"total": 6, "selected": 3}
    probs = np.array([r["probs"][EMBEDDED_MODEL_ID] for r in read_scores(tmp_path)])
    assert probs.shape == (6, 3, 5) and (probs > 0).all() and (probs.sum(-1) <= 1).all()
    # The 4-bit layers that scored are the ones that were trained through (one load, not two), and scoring left
    # their weights in the layout training reads: bitsandbytes repacks them on AVX512-BF16 CPUs unless guarded.
    assert not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in four_bit)
    assert trainer.state.global_step == 1
    assert json.loads((tmp_path / "selection" / "summary.json").read_text())["scoring_seconds"] > 0
