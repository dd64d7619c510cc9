"""`selection_compile`: scoring with the decoder layers compiled gives the eager numbers, and training is untouched."""

import os

import numpy as np
import pytest
import torch
from conftest import cpu_config
from transformers import AutoModelForCausalLM

from selectit_trl import SelectiveSFTTrainer
from selectit_trl.engine.models import compiled_blocks, repeated_blocks
from selectit_trl.errors import SelectionConfigError
from selectit_trl.store.ledger import read_store


def store_values(output_dir) -> dict:
    """(kind, sample) -> the stored probabilities or losses."""
    return {(r.get("kind", "ratings"), r["sample"]): np.array(r["probs"] if "probs" in r else r["losses"])
            for r in read_store(output_dir).values()}


def test_the_repeated_blocks_are_the_decoder_layers(tiny_llama):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    assert repeated_blocks(model) == list(model.model.layers)
    with compiled_blocks(model):
        assert all(layer._compiled_call_impl is not None for layer in model.model.layers)
        assert model.lm_head._compiled_call_impl is None  # the layers only
    assert all(layer._compiled_call_impl is None for layer in model.model.layers)


def test_compiled_scoring_gives_the_eager_values_and_training_runs_uncompiled(tiny_llama, demo_dataset, tmp_path):
    dataset = demo_dataset(12)
    # A mix, so that both engines run compiled: rating probabilities and IFD's losses.
    settings = dict(selection_strategy="selectit:0.5,ifd:0.5", selection_max_batch_tokens=512)
    eager_dir, compiled_dir = tmp_path / "eager", tmp_path / "compiled"
    SelectiveSFTTrainer(model=tiny_llama, args=cpu_config(eager_dir, **settings), train_dataset=dataset).select()

    frames_before = torch._dynamo.utils.counters["frames"]["ok"]  # frames dynamo compiled, across the process
    trainer = SelectiveSFTTrainer(
        model=tiny_llama, args=cpu_config(compiled_dir, selection_compile=True, **settings), train_dataset=dataset
    )
    trainer.train()
    assert torch._dynamo.utils.counters["frames"]["ok"] > frames_before

    eager, compiled = store_values(eager_dir), store_values(compiled_dir)
    assert set(eager) == set(compiled) and {kind for kind, _ in eager} == {"ratings", "ifd"}
    for key in eager:
        np.testing.assert_allclose(compiled[key], eager[key], rtol=0, atol=1e-5)
    base = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
    assert all(layer._compiled_call_impl is None for layer in base.model.layers)
    assert trainer.state.global_step == 2


def test_compile_on_a_cpu_without_a_compiler_is_refused_before_scoring(tiny_llama, demo_dataset, tmp_path, monkeypatch):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing to run there
    trainer = SelectiveSFTTrainer(
        model=tiny_llama, args=cpu_config(tmp_path / "out", selection_compile=True), train_dataset=demo_dataset(8)
    )
    with pytest.raises(SelectionConfigError, match="needs a C\\+\\+ compiler"):
        trainer.select()
    assert not list((tmp_path / "out" / "selection" / "store").glob("*.jsonl"))


def test_a_forced_cpu_capability_gets_a_compile_cache_of_its_own(tiny_llama, monkeypatch):
    """Inductor's cache does not key CPU kernels on ATEN_CPU_CAPABILITY, and kernels built natively gave NaN under
    ATEN_CPU_CAPABILITY=avx2; a folder the user chose stays theirs."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "AVX2")
    for inductors_own in (None, default_cache_dir()):  # unset, or set by inductor the first time it looked
        if inductors_own is None:
            monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
        else:
            monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", inductors_own)
        with compiled_blocks(model):
            assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == default_cache_dir() + "_avx2"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/somewhere/of/theirs")
    with compiled_blocks(model):
        assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/somewhere/of/theirs"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())
    monkeypatch.delenv("ATEN_CPU_CAPABILITY")
    with compiled_blocks(model):
        assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == default_cache_dir()  # no override: inductor's own folder
