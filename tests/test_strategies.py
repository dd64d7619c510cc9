"""Selection strategies: IFD, reverse IFD, length, random and rank-weighted mixes, from the math to the trainer."""

import json

import numpy as np
import pytest
import torch
from conftest import cpu_config
from scipy.stats import rankdata
from transformers import AutoModelForCausalLM, AutoTokenizer

from selectit_trl import SelectiveSFTTrainer, strategies
from selectit_trl.data.formats import rating_samples, resolve_format
from selectit_trl.data.rows import RatingSample
from selectit_trl.engine.losses import TargetRequests, iter_loss_batches
from selectit_trl.engine.targets import build_target_requests
from selectit_trl.errors import SelectionConfigError
from selectit_trl.measures.difficulty import Difficulty
from selectit_trl.reporting.report import write_report
from selectit_trl.selection import probe
from selectit_trl.store.ledger import read_store
from selectit_trl.store.outputs import read_scores, read_summary, selection_dir
from selectit_trl.store.summary import Summary
from selectit_trl.training.card import card_section, selection_metrics

# ---- the math -------------------------------------------------------------------------------------------------


def test_parse_strategy_takes_a_name_a_mapping_text_or_json():
    assert strategies.parse_strategy("ifd") == {"ifd": 1.0}
    assert strategies.parse_strategy({"selectit": 1, "ifd": 3}) == {"selectit": 0.25, "ifd": 0.75}
    assert strategies.parse_strategy("selectit:0.5, ifd:0.5") == {"selectit": 0.5, "ifd": 0.5}
    assert strategies.parse_strategy('{"length": 2, "random": 2}') == {"length": 0.5, "random": 0.5}
    for bad, message in [("judge", "Unknown selection_strategy"), ({"ifd": 0}, "positive number"),
                         ("ifd:x", "no numeric weight"), ({"ifd": True}, "positive number"), ({}, "strategy name")]:
        with pytest.raises(SelectionConfigError, match=message):
            strategies.parse_strategy(bad)


def test_ifd_and_reverse_ifd_from_losses():
    losses = np.array([[1.0, 2.0], [3.0, 2.0], [0.5, 0.5]])
    assert strategies.ifd(losses).tolist() == [0.5, 1.5, 1.0]
    assert strategies.rifd(losses).tolist() == [np.exp(-1.0), np.exp(1.0), 1.0]


def test_one_strategy_ranks_by_its_value_and_bars_ratios_above_one():
    ranked = strategies.score({"ifd": 1.0}, {"ifd": np.array([0.5, 1.5, 1.0, 0.9])})
    assert ranked.ranking.tolist() == [0.5, 1.5, 1.0, 0.9]
    assert ranked.eligible.tolist() == [True, False, True, True]
    ranked = strategies.score({"rifd": 1.0}, {"rifd": np.array([0.5, 2.0, 0.25])})
    assert ranked.ranking.tolist() == [2.0, 0.5, 4.0]  # 1 / r-IFD: the lowest r-IFD first
    assert ranked.eligible.tolist() == [True, False, True]


def test_a_mix_weighs_rank_percentiles():
    values = {"selectit": np.array([0.3, 0.1, 0.2, 0.2]), "length": np.array([10.0, 40.0, 30.0, 20.0])}
    ranked = strategies.score({"selectit": 0.75, "length": 0.25}, values)
    # selectit ranks 4, 1, 2.5, 2.5 and length 1, 4, 3, 2, each over N = 4
    expected = [0.75 * 4 / 4 + 0.25 * 1 / 4, 0.75 * 1 / 4 + 0.25 * 4 / 4, 0.75 * 2.5 / 4 + 0.25 * 3 / 4,
                0.75 * 2.5 / 4 + 0.25 * 2 / 4]
    assert ranked.ranking.tolist() == pytest.approx(expected, abs=1e-15)
    assert ranked.eligible.all()


def test_a_mix_ranks_among_the_rows_that_may_be_kept():
    values = {"ifd": np.array([0.9, 1.4, 0.5, 0.7, 0.8]), "length": np.array([5.0, 50.0, 40.0, 30.0, 10.0])}
    keepable = np.array([True, True, True, True, False])  # row 4: an empty response, say
    ranked = strategies.score({"ifd": 0.5, "length": 0.5}, values, keepable)
    assert ranked.eligible.tolist() == [True, False, True, True, False]  # row 1: IFD > 1
    # Among rows 0, 2, 3: IFD ranks 3, 1, 2 and length 1, 3, 2, each over 3; the barred rows score 0.
    expected = [0.5 * 3 / 3 + 0.5 * 1 / 3, 0.0, 0.5 * 1 / 3 + 0.5 * 3 / 3, 0.5 * 2 / 3 + 0.5 * 2 / 3, 0.0]
    assert ranked.ranking.tolist() == pytest.approx(expected, abs=1e-15)
    alone = strategies.score({"length": 1.0}, values, keepable)
    assert alone.eligible.tolist() == keepable.tolist() and alone.ranking.tolist() == values["length"].tolist()


def test_random_draws_are_fixed_by_the_seed():
    assert strategies.random_values(5, 3).tolist() == np.random.default_rng(3).random(5).tolist()
    assert strategies.random_values(5, 3).tolist() != strategies.random_values(5, 4).tolist()


def test_store_takes_loss_records_and_drops_damaged_ones():
    base = {"model": "m", "tokens": "t", "kind": "ifd"}
    assert Difficulty.whole({**base, "losses": [1.5, 2.0]})
    for bad in ([], [1.0, float("nan")], [-0.1, 1.0], [True, 1.0], "1.0"):
        assert not Difficulty.whole({**base, "losses": bad})


# ---- the loss engine ------------------------------------------------------------------------------------------


def unbatched_loss(model, context, target) -> float:
    """Mean cross-entropy of `target` after `context`, from one unpadded forward pass over every position."""
    ids = torch.as_tensor(np.concatenate([context, target]), dtype=torch.long)[None]
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    log_probs = torch.log_softmax(logits, dim=-1)
    start = len(context)
    picked = [log_probs[start - 1 + t, int(target[t])].item() for t in range(len(target))]
    return -float(np.mean(picked))


@pytest.fixture(scope="module")
def tiny_model(tiny_llama):
    return AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()


def test_batched_losses_match_an_unbatched_recomputation(tiny_model, tokenizer):
    samples = [
        RatingSample("Name a colour.", "Blue."),
        RatingSample("Explain photosynthesis in one paragraph for a child who has never heard of plants.",
                     "Plants make their own food from sunlight, water and air; the green parts catch the light."),
        RatingSample("Add 2 and 3.", "5"),
        RatingSample("Translate 'good morning' to French.", "Bonjour."),
        RatingSample("Write a haiku about rain.", "Soft rain on the roof\nthe garden drinks in silence\nclouds move slowly on"),
    ]
    for kind in ("ifd", "rifd"):
        requests = build_target_requests(samples, tokenizer, kind)
        expected = np.array([[unbatched_loss(tiny_model, r.contexts[c], r.target) for c in range(2)] for r in requests])
        for budget in (1, 64, 100_000):  # one sample per batch, a few, all at once
            out = np.full((len(samples), 2), np.nan)
            for batch, losses in iter_loss_batches(tiny_model, requests, tokenizer.pad_token_id,
                                                   max_batch_tokens=budget, progress=False):
                out[batch] = losses
            np.testing.assert_allclose(out, expected, atol=1e-5, rtol=0)


def test_loss_requests_differ_only_by_what_is_measured(tokenizer):
    sample = RatingSample("Add 2 and 3.", "5")
    ifd = build_target_requests([sample], tokenizer, "ifd")[0]
    rifd = build_target_requests([sample], tokenizer, "rifd")[0]
    assert tokenizer.decode(ifd.target) == "5" and tokenizer.decode(rifd.target) == "Add 2 and 3."
    assert "Add 2 and 3." in tokenizer.decode(ifd.contexts[0]) and "Add 2 and 3." not in tokenizer.decode(ifd.contexts[1])
    assert "5" in tokenizer.decode(rifd.contexts[0]) and ifd.contexts[1].tolist() == rifd.contexts[1].tolist()
    plain = build_target_requests([sample], tokenizer, "ifd", use_chat_template=False)[0]
    assert tokenizer.decode(plain.contexts[0]) == "Instruction:\nAdd 2 and 3.\n\nResponse:\n"  # as Alpaca rows train
    assert tokenizer.decode(plain.contexts[1]) == "Response:\n"
    empty = build_target_requests([RatingSample("Say nothing.", "")], tokenizer, "ifd")[0]
    assert empty.target.tolist() == [tokenizer.eos_token_id]  # measured on end-of-text, never kept anyway


# ---- end to end -----------------------------------------------------------------------------------------------


def expected_losses(model_dir, dataset, kind) -> np.ndarray:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    samples = rating_samples(dataset, resolve_format(dataset, None))
    requests: list[TargetRequests] = build_target_requests(samples, tokenizer, kind)
    return np.array([[unbatched_loss(model, r.contexts[c], r.target) for c in range(2)] for r in requests])


def top_eligible(ranking, eligible, count) -> list[int]:
    order = sorted(range(len(ranking)), key=lambda i: (-ranking[i], i))
    return [i for i in order if eligible[i]][:count]


@pytest.mark.parametrize("kind", ["ifd", "rifd"])
def test_difficulty_strategy_end_to_end(kind, tiny_llama, demo_dataset, tmp_path, monkeypatch):
    dataset = demo_dataset(12)
    trainer = SelectiveSFTTrainer(model=tiny_llama, train_dataset=dataset, args=cpu_config(
        tmp_path, selection_strategy=kind, selection_ratio=0.25))
    trainer.train()
    losses = expected_losses(tiny_llama, dataset, kind)
    value = strategies.ifd(losses) if kind == "ifd" else strategies.rifd(losses)
    assert (value > 1).any() and (value <= 1).sum() >= 3, "the rows should exercise the bar and still fill the subset"
    records = read_scores(tmp_path)
    written = np.array([r["strategy_scores"][kind] for r in records])
    np.testing.assert_allclose(written, value, atol=1e-4, rtol=0)
    np.testing.assert_allclose([r["losses"][kind] for r in records], losses, atol=1e-5, rtol=0)
    assert all(r["probs"] == {} and r["sentence_scores"] == {} for r in records)  # no SelectIT ratings
    ranking = value if kind == "ifd" else 1 / value
    kept = top_eligible(ranking, value <= 1, 3)
    assert sorted(i for i, r in enumerate(records) if r["selected"]) == sorted(kept)
    summary = read_summary(tmp_path)
    assert summary["strategy"] == {kind: 1.0} and summary["barred"] == {kind: int((value > 1).sum()), "empty_instruction": 0}
    assert summary["scored_this_run"] == {f"{kind}:{tiny_llama}": 12}
    assert [m["id"] for m in summary["models"]] == [tiny_llama] and summary["prompts"] == []
    stored = read_store(tmp_path).values()
    assert len(stored) == 12 and {r["kind"] for r in stored} == {kind}
    section = card_section(Summary.from_json(summary))
    assert f"| Method | {kind}, run by selectit-trl |" in section and "Rating prompts (K)" not in section
    # The report has no SelectIT ratings to show.
    assert write_report(tmp_path).startswith(f"{kind} kept 3 of 12 samples")
    report = (selection_dir(tmp_path) / "report.md").read_text()
    assert f"by {kind}." in report and "Agreement across rating prompts" not in report
    assert not (selection_dir(tmp_path) / "prompt_agreement.png").exists()

    def no_losses(*args, **kwargs):
        raise AssertionError("measured again")

    monkeypatch.setattr("selectit_trl.measures.difficulty.iter_loss_batches", no_losses)
    again = SelectiveSFTTrainer(model=tiny_llama, train_dataset=dataset, args=cpu_config(
        tmp_path, selection_strategy=kind, selection_ratio=0.25)).select()
    assert again.reused and sorted(again.selected_indices) == sorted(kept)


def test_length_and_random_need_no_forward_pass(tiny_llama, demo_dataset, tmp_path, monkeypatch, tokenizer):
    def no_forward(*args, **kwargs):
        raise AssertionError("a model ran")

    monkeypatch.setattr("selectit_trl.measures.difficulty.iter_loss_batches", no_forward)
    monkeypatch.setattr("selectit_trl.measures.ratings.iter_score_batches", no_forward)
    dataset = demo_dataset(10)
    samples = rating_samples(dataset, resolve_format(dataset, None))
    lengths = [len(tokenizer(s.response, add_special_tokens=False)["input_ids"]) for s in samples]
    result = SelectiveSFTTrainer(model=tiny_llama, train_dataset=dataset, args=cpu_config(
        tmp_path / "length", selection_strategy="length", selection_ratio=0.3)).select()
    assert result.scores.tolist() == lengths
    assert result.selected_indices == top_eligible(lengths, [True] * 10, 3)
    draws = np.random.default_rng(5).random(10)
    result = SelectiveSFTTrainer(model=tiny_llama, train_dataset=dataset, args=cpu_config(
        tmp_path / "random", selection_strategy="random", selection_ratio=0.3, seed=5)).select()
    assert result.scores.tolist() == draws.tolist()
    assert result.selected_indices == top_eligible(draws, [True] * 10, 3)


def test_a_mix_combines_ranks_and_keeps_each_strategys_scores(tiny_llama, demo_dataset, tmp_path):
    dataset = demo_dataset(12)
    result = SelectiveSFTTrainer(model=tiny_llama, train_dataset=dataset, args=cpu_config(
        tmp_path, selection_strategy={"selectit": 1, "ifd": 1, "length": 2}, selection_ratio=0.25)).select()
    records = read_scores(tmp_path)
    columns = {name: np.array([r["strategy_scores"][name] for r in records]) for name in ("selectit", "ifd", "length")}
    np.testing.assert_allclose(columns["selectit"], [r["sentence_scores"][tiny_llama] for r in records], rtol=0, atol=0)
    eligible = columns["ifd"] <= 1
    assert 3 <= eligible.sum() < 12, "the rows should exercise the bar"
    expected = np.zeros(12)
    for name, weight in {"selectit": 0.25, "ifd": 0.25, "length": 0.5}.items():
        expected[eligible] += weight * rankdata(columns[name][eligible]) / eligible.sum()
    np.testing.assert_allclose(result.scores, expected, rtol=0, atol=1e-15)
    assert result.selected_indices == top_eligible(expected, eligible, 3)
    summary = read_summary(tmp_path)
    assert summary["strategy"] == {"selectit": 0.25, "ifd": 0.25, "length": 0.5}
    assert set(summary["scored_this_run"]) == {tiny_llama, f"ifd:{tiny_llama}"}
    printed = write_report(tmp_path)
    assert printed.startswith("selectit 0.25 + ifd 0.25 + length 0.50 kept 3 of 12 samples")
    report = (selection_dir(tmp_path) / "report.md").read_text()
    assert "## Strategies" in report and "| | selectit | ifd | length | combined |" in report


def test_probe_scores_the_strategy(tiny_llama, demo_dataset, tmp_path):
    dataset = demo_dataset(16)
    SelectiveSFTTrainer(model=tiny_llama, train_dataset=dataset, args=cpu_config(
        tmp_path, selection_strategy="ifd:1,length:1", selection_probe=True, selection_probe_size=6)).select()
    result = json.loads((selection_dir(tmp_path) / probe.PROBE_FILE).read_text())
    labels = result["labels"]
    # Length cannot tell a clean pair from a mismatched one: the two sets hold the same responses.
    assert result["auroc_by_strategy"]["length"] == 0.5
    ifd = np.array(result["strategy_scores"]["ifd"])
    alone = probe.bottom_barred(ifd, ifd <= 1)
    assert result["auroc_by_strategy"]["ifd"] == pytest.approx(probe.auroc(alone, labels), abs=1e-12)
    # The mix rebuilt from each strategy's values: rank percentiles among pairs with IFD <= 1, the rest last.
    eligible = ifd <= 1
    mix = np.zeros(len(labels))
    for name in ("ifd", "length"):
        mix[eligible] += 0.5 * rankdata(np.array(result["strategy_scores"][name])[eligible]) / eligible.sum()
    assert result["auroc"]["combined"] == pytest.approx(probe.auroc(np.where(eligible, mix, -1.0), labels), abs=1e-12)
    summary = read_summary(tmp_path)
    assert summary["probe"]["auroc_by_strategy"] == result["auroc_by_strategy"]
    metrics = selection_metrics(Summary.from_json(summary))
    assert metrics["selection/probe_auroc"] == result["auroc"]["combined"]
    assert {k: v for k, v in metrics.items() if k.startswith("selection/probe_auroc/")} == {
        f"selection/probe_auroc/{name}": value for name, value in result["auroc_by_strategy"].items()}
