"""Shared fixtures: a tiny random Llama built here, the embedded tokenizer, the demo data, the shared data."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

if os.environ.get("SELECTIT_TRL_FAULT_LOG"):
    # CI shows the tail of a failed run, which for a native crash is the end of faulthandler's dump (the list of
    # extension modules), not the test that crashed. .ci/run points the dump at a file and prints its head.
    import faulthandler

    _FAULT_LOG = open(os.environ["SELECTIT_TRL_FAULT_LOG"], "w")  # noqa: SIM115 - open for the whole session
    faulthandler.enable(file=_FAULT_LOG, all_threads=True)

import pytest
import torch
from datasets import Dataset

from selectit_trl import SelectiveSFTConfig, embedded_model_path
from selectit_trl.data.loading import demo_dataset_path


@pytest.fixture(scope="session")
def embedded_dir() -> str:
    return embedded_model_path()


@pytest.fixture(scope="session")
def tokenizer():
    """The embedded model's tokenizer. $SELECTIT_TRL_TEST_TOKENIZER may name a folder holding only its tokenizer
    files, for a machine without the embedded model (the GPU checks of tests/test_cuda.py run that way)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(os.environ.get("SELECTIT_TRL_TEST_TOKENIZER") or embedded_model_path())


def build_tiny_llama(
    path: Path, tokenizer, seed: int = 0, hidden_size: int = 64, layers: int = 2, max_positions: int = 1024
) -> str:
    """A randomly initialised Llama small enough to train in seconds, saved with the embedded tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, tokenizer) -> str:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), tokenizer)


# The models the scorer's layouts are checked on: Llama (rotary positions) with both mask-taking attentions, and
# GPT-2 (absolute positions, which catch wrong position ids under padding and prefix sharing).
SCORING_MODELS = ["llama-sdpa", "llama-eager", "gpt2"]


def build_scoring_model(kind: str, tiny_llama: str, tokenizer):
    """One of `SCORING_MODELS`, in fp32 and eval mode."""
    from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

    if kind.startswith("llama"):
        attention = kind.split("-")[1]
        return AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32, attn_implementation=attention).eval()
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=64, n_layer=2, n_head=4, n_positions=1024)
    return GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="session")
def demo_rows() -> list[dict]:
    with open(demo_dataset_path(), encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


@pytest.fixture
def demo_dataset(demo_rows):
    def make(n: int) -> Dataset:
        return Dataset.from_list([{k: r[k] for k in ("instruction", "input", "output")} for r in demo_rows[:n]])

    return make


def cpu_config(output_dir, **overrides) -> SelectiveSFTConfig:
    """A SelectiveSFTConfig that trains a couple of quick steps on the CPU."""
    settings = dict(
        output_dir=str(output_dir),
        use_cpu=True,
        max_steps=2,
        per_device_train_batch_size=2,
        learning_rate=1e-2,
        max_length=128,
        gradient_checkpointing=False,
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        seed=0,
        selection_num_prompts=3,
        # The signal probe has tests of its own (test_probe.py, test_logging.py, and the CLI's end to end); off here,
        # so that the store and batch counts these tests check are the selection's alone.
        selection_probe=False,
    )
    settings.update(overrides)
    return SelectiveSFTConfig(**settings)


@pytest.fixture
def zero3(monkeypatch):
    """`zero3(True)` makes the trainer see DeepSpeed ZeRO-3 as on, the way transformers reports it (DeepSpeed is not
    installed here); `zero3(False)` turns it off again."""
    from selectit_trl.training import trainer

    return lambda enabled: monkeypatch.setattr(trainer, "is_deepspeed_zero3_enabled", lambda: enabled)


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The shared public datasets: $SELECTIT_TRL_DATA, else ../shared/data next to the checkout."""
    candidates = [os.environ.get("SELECTIT_TRL_DATA"), Path(__file__).resolve().parents[2] / "shared" / "data"]
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    pytest.skip("shared data not found: set SELECTIT_TRL_DATA or put ../shared/data beside the checkout")
