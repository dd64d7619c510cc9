"""Model-level reflection with peers of other sizes: weights from parameter counts, combination by hand."""

import json

import numpy as np
import pytest
import torch
from conftest import build_tiny_llama, cpu_config
from peft import LoraConfig
from transformers import AutoModelForCausalLM

from selectit_trl import SelectiveSFTTrainer, embedded_model_path
from selectit_trl.engine import hardware
from selectit_trl.engine.peers import PeerSpec, parse_peer
from selectit_trl.errors import SelectionConfigError
from selectit_trl.store.outputs import read_scores, read_summary
from selectit_trl.training.model_init import peer_rater


@pytest.fixture(scope="module")
def peer(tmp_path_factory, tokenizer):
    return build_tiny_llama(tmp_path_factory.mktemp("peer"), tokenizer, seed=1, hidden_size=128, layers=2)  # 4-bit on a CPU wants widths in 64s


def count(path):
    return sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(path).parameters())


def test_peer_scores_are_combined_by_parameter_count(tiny_llama, peer, demo_dataset, tmp_path):
    config = cpu_config(tmp_path, selection_peer_models=[peer], selection_ratio=0.5)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    SelectiveSFTTrainer(model=tiny_llama, args=config, train_dataset=demo_dataset(8), peft_config=lora).select()

    summary = read_summary(tmp_path)
    theta = {tiny_llama: count(tiny_llama), peer: count(peer)}
    assert theta[peer] > theta[tiny_llama]
    assert [m["id"] for m in summary["models"]] == [tiny_llama, peer]
    for m in summary["models"]:
        assert m["num_parameters"] == theta[m["id"]]
        assert m["weight"] == pytest.approx(theta[m["id"]] / sum(theta.values()), abs=1e-15)
    weights = {m["id"]: m["weight"] for m in summary["models"]}
    for r in read_scores(tmp_path):
        expected = sum(weights[m] * r["sentence_scores"][m] for m in weights)
        assert r["score"] == pytest.approx(expected, abs=1e-12)
        assert r["sentence_scores"][tiny_llama] != r["sentence_scores"][peer]


def test_explicit_weights(tiny_llama, peer, demo_dataset, tmp_path):
    config = cpu_config(tmp_path, selection_peer_models=[peer], selection_model_weights=[1.0, 3.0])
    SelectiveSFTTrainer(model=tiny_llama, args=config, train_dataset=demo_dataset(5)).select()
    assert [m["weight"] for m in read_summary(tmp_path)["models"]] == [0.25, 0.75]
    for r in read_scores(tmp_path):
        assert r["score"] == pytest.approx(0.25 * r["sentence_scores"][tiny_llama] + 0.75 * r["sentence_scores"][peer], abs=1e-12)


@pytest.fixture(scope="module")
def small_peer(tmp_path_factory, tokenizer):
    return build_tiny_llama(tmp_path_factory.mktemp("small-peer"), tokenizer, seed=2, hidden_size=64, layers=1)


def by_hand(records_by_model: dict, theta: dict, alpha: float, order: list[str]) -> np.ndarray:
    """SelectIT's formulas written out again, from each model's raw probabilities in the score store."""
    combined = 0.0
    total = sum(theta.values())
    for model in theta:
        probs = np.array([records_by_model[model][key] for key in order])  # [N, K, S]
        q = probs / probs.sum(-1, keepdims=True)
        best = q.argmax(-1)
        q_best = np.take_along_axis(q, best[..., None], -1)
        token = (best + 1) * (q_best - q).sum(-1) / (q.shape[-1] - 1)
        sentence = token.mean(-1) / (1 + alpha * token.std(-1))
        combined = combined + theta[model] / total * sentence
    return combined


def test_three_peers_of_other_sizes_in_4bit_match_a_hand_computation(tiny_llama, peer, small_peer, demo_dataset, tmp_path):
    embedded = embedded_model_path()
    peers = [peer, {"model": small_peer, "load_in_4bit": False}, {"model": embedded, "dtype": "bfloat16"}]
    config = cpu_config(tmp_path, selection_peer_models=peers, selection_ratio=0.5, selection_alpha=0.3)
    dataset = demo_dataset(8)
    SelectiveSFTTrainer(model=tiny_llama, args=config, train_dataset=dataset).select()

    summary = read_summary(tmp_path)
    ids = [tiny_llama, peer, small_peer, embedded]
    assert [m["id"] for m in summary["models"]] == ids
    theta = {m: count(m) for m in ids}
    assert len(set(theta.values())) == 4  # four sizes
    for m in summary["models"]:
        assert m["num_parameters"] == theta[m["id"]]  # from the configuration, not from 4-bit storage
        assert m["weight"] == pytest.approx(theta[m["id"]] / sum(theta.values()), abs=1e-15)

    # The per-model records in the store, read as files, and the rows' token keys in dataset order.
    store = [json.loads(line) for f in sorted((tmp_path / "selection" / "store").glob("*.jsonl"))
             for line in f.read_text().splitlines()]
    records_by_model = {m: {} for m in ids}
    for record in store:
        records_by_model[record["model_id"]][record["sample"]] = record["probs"]
    assert all(len(records) == 8 for records in records_by_model.values())
    from selectit_trl.data.formats import rating_samples

    order = [s.content_hash for s in rating_samples(dataset, None)]
    scores = [r["score"] for r in read_scores(tmp_path)]
    np.testing.assert_allclose(scores, by_hand(records_by_model, theta, 0.3, order), rtol=0, atol=1e-12)
    kinds = {r["model_id"]: r["model"] for r in store}
    assert len(set(kinds.values())) == 4


def test_a_peer_loads_in_4bit_by_default_and_as_asked_otherwise(tiny_llama, peer, demo_dataset, tmp_path):
    trainer = SelectiveSFTTrainer(model=tiny_llama, args=cpu_config(tmp_path), train_dataset=demo_dataset(5))
    quantised = peer_rater(trainer.args, trainer.model, parse_peer(peer)).load()
    assert quantised.config.quantization_config.load_in_4bit
    # By default, the compute dtype `dtype: auto` picks: bf16 only where this CPU runs it natively.
    native = torch.bfloat16 if hardware.native_cpu_bf16() else torch.float32
    assert quantised.config.quantization_config.bnb_4bit_compute_dtype == native
    plain_entry = parse_peer({"model": peer, "load_in_4bit": False, "dtype": "float32"})
    plain = peer_rater(trainer.args, trainer.model, plain_entry).load()
    assert getattr(plain.config, "quantization_config", None) is None and plain.dtype == torch.float32


def test_peer_entries_are_read_and_checked():
    assert parse_peer("org/a") == PeerSpec("org/a")
    assert parse_peer('{"model": "org/b", "revision": "v2", "load_in_4bit": false}') == PeerSpec("org/b", "v2", None, False)
    assert parse_peer({"model": "org/b", "revision": "v2"}).model_id == "org/b@v2"
    for bad, message in [
        ({"model": "x", "quantise": True}, "unknown key"),
        ({"revision": "v1"}, "'model' must name"),
        ({"model": "x", "dtype": "int8"}, "'dtype' must be one of"),
        ({"model": "x", "load_in_4bit": "yes"}, "'load_in_4bit' must be true or false"),
        ("{not json", "not valid JSON"),
        (3, "model ids or mappings"),
    ]:
        with pytest.raises(SelectionConfigError, match=message):
            parse_peer(bad)
    with pytest.raises(SelectionConfigError, match="names a model twice"):
        cpu_config("/tmp/unused", selection_peer_models=["org/a", {"model": "org/a"}])
