"""The compute dtype follows the hardware: bf16 where the CPU runs it natively, fp32 where it would be emulated.

The detection is driven for real: oneDNN reads `ONEDNN_MAX_CPU_ISA` when it starts, so the trainer is built in a
fresh process with the variable set, through the CLI's own `build_trainer`, exactly as `selectit-trl` builds it.
"""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_llama, cpu_config
from transformers import AutoModelForCausalLM

from selectit_trl.engine import hardware
from selectit_trl.training.model_init import load_dtype

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}

# Builds the trainer a recipe describes and reports the dtypes it loaded, a peer's, and the warnings logged.
REPORT = r"""
import json, logging, os, sys
import bitsandbytes as bnb
from selectit_trl.engine import hardware
from selectit_trl.cli import build_trainer, parse_args
from selectit_trl.engine.peers import parse_peer
from selectit_trl.training.model_init import peer_rater

messages = []
handler = logging.Handler()
handler.emit = lambda record: messages.append(record.getMessage())
logging.getLogger("selectit_trl").addHandler(handler)
trainer = build_trainer(*parse_args(sys.argv[1:]))
four_bit = [m for m in trainer.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
peer = peer_rater(trainer.args, trainer.model, parse_peer(os.environ["PEER"])).load()  # a peer in its default 4-bit
print(json.dumps({
    "native": hardware.native_cpu_bf16(),
    "weights": str(trainer.model.get_input_embeddings().weight.dtype),
    "compute": sorted({str(m.compute_dtype) for m in four_bit}),
    "peer_compute": str(peer.config.quantization_config.bnb_4bit_compute_dtype),
    "warnings": [m for m in messages if "emulates" in m],
}))
"""


def build(tmp_path, model, dtype, env=None) -> dict:
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"instruction": "Add 2 and 3.", "input": "", "output": "5"}) + "\n", encoding="utf-8")
    args = ["--model_name_or_path", model, "--dataset_name", str(data), "--output_dir", str(tmp_path / "out"),
            "--use_cpu", "true", "--load_in_4bit", "true", "--dtype", dtype, "--use_peft", "true",
            "--lora_target_modules", "q_proj", "v_proj", "--report_to", "none", "--selection_max_samples", "1"]
    script = tmp_path / "report.py"
    script.write_text(REPORT, encoding="utf-8")
    run_env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")}
    run_env.update(HF_HUB_OFFLINE="1", PEER=model, **(env or {}))
    done = subprocess.run([sys.executable, str(script), *args], cwd=REPO, env=run_env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_auto_computes_in_fp32_where_bf16_would_be_emulated(tiny_llama, tmp_path):
    report = build(tmp_path, tiny_llama, "auto", AVX2)
    assert report["native"] is False
    assert report["weights"] == "torch.float32" and report["compute"] == ["torch.float32"]
    assert report["peer_compute"] == "torch.float32"
    assert report["warnings"] == []


@pytest.mark.skipif(not hardware.cpu_bf16_instructions(), reason="this CPU has neither AMX nor AVX512-BF16")
def test_auto_computes_in_bf16_where_the_cpu_has_it(tiny_llama, tmp_path):
    report = build(tmp_path, tiny_llama, "auto")
    assert report["native"] is True
    assert report["weights"] == "torch.bfloat16" and report["compute"] == ["torch.bfloat16"]
    assert report["peer_compute"] == "torch.bfloat16"
    assert report["warnings"] == []


def test_an_explicit_bf16_without_native_support_runs_after_one_warning(tiny_llama, tmp_path):
    report = build(tmp_path, tiny_llama, "bfloat16", AVX2)
    assert report["weights"] == "torch.bfloat16" and report["compute"] == ["torch.bfloat16"]
    (warning,) = report["warnings"]  # one for the model being tuned; the peer computes in fp32 (its default)
    assert warning.startswith("The model being tuned computes in bfloat16, which this CPU (AVX2, no AMX or AVX512-BF16)")
    assert "slower than in float32. Set dtype: auto (or float32)" in warning


@pytest.mark.parametrize(
    ("cap", "native"),
    [("AVX2", False), ("AVX512_CORE", False), ("AVX512_CORE_BF16", True), ("AVX512_CORE_AMX", True), ("", True)],
)
def test_detection_follows_the_onednn_cap(monkeypatch, cap, native):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    assert hardware.native_cpu_bf16() is (native and hardware.cpu_bf16_instructions())


def test_auto_keeps_fp32_checkpoints_and_16_bit_ones_only_where_native(monkeypatch):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert hardware.resolve_dtype("auto", "cpu", torch.bfloat16) == torch.float32
    assert hardware.resolve_dtype("auto", "cpu", torch.float16) == torch.float32
    assert hardware.resolve_dtype("bfloat16", "cpu", torch.float32) == torch.bfloat16  # explicit: as asked
    assert hardware.resolve_dtype("auto", "cuda", torch.bfloat16) == "auto"  # a GPU: transformers' meaning
    assert hardware.resolve_compute_dtype(None, "cpu") == torch.float32
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    native = hardware.cpu_bf16_instructions()
    assert hardware.resolve_dtype("auto", "cpu", torch.bfloat16) == (torch.bfloat16 if native else torch.float32)
    assert hardware.resolve_dtype("auto", "cpu", torch.float32) == torch.float32
    assert hardware.resolve_compute_dtype("auto", "cpu") == (torch.bfloat16 if native else torch.float32)


def test_the_emulation_warning_is_given_once(monkeypatch, caplog):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.setattr(hardware, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="selectit_trl.engine.hardware"):
        assert hardware.warn_if_emulated(torch.bfloat16, "cpu", "Peer p") is True
        assert hardware.warn_if_emulated(torch.bfloat16, "cpu", "Peer p") is False
        assert hardware.warn_if_emulated(torch.float32, "cpu", "Peer q") is False
        assert hardware.warn_if_emulated(torch.bfloat16, "cuda", "Peer q") is False
    assert len(caplog.records) == 1 and "Peer p computes in bfloat16" in caplog.text


@pytest.fixture(scope="module")
def bf16_checkpoint(tmp_path_factory, tokenizer) -> str:
    path = build_tiny_llama(tmp_path_factory.mktemp("tiny-bf16"), tokenizer)
    AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).save_pretrained(path)
    return path


@pytest.mark.parametrize("init", [{"dtype": "auto"}, {"dtype": None}, {"torch_dtype": "auto"}, {"torch_dtype": None}])
def test_auto_in_any_spelling_loads_a_bf16_checkpoint_in_fp32_where_bf16_is_emulated(bf16_checkpoint, tmp_path, monkeypatch,
                                                                                      init):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert load_dtype(bf16_checkpoint, dict(init), None, cpu_config(tmp_path)) == torch.float32
    assert load_dtype(bf16_checkpoint, {}, None, cpu_config(tmp_path)) is None  # no dtype at all: TRL's float32


def test_a_4bit_config_given_as_a_dict_sets_the_compute_dtype_and_is_warned_about(tiny_llama, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.setattr(hardware, "_warned", set())
    quantization = {"load_in_4bit": True, "bnb_4bit_compute_dtype": "bfloat16"}
    with caplog.at_level(logging.WARNING, logger="selectit_trl.engine.hardware"):
        assert load_dtype(tiny_llama, {"dtype": "auto"}, quantization, cpu_config(tmp_path)) == torch.bfloat16
    assert "The model being tuned computes in bfloat16" in caplog.text
