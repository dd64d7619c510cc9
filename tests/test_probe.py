"""The signal probe: AUROC on known labels, the mismatched pairs, and the probe end to end on a tiny model."""

import itertools
import json
import logging

import numpy as np
import pytest
from conftest import cpu_config
from datasets import Dataset

from selectit_trl import SelectiveSFTTrainer
from selectit_trl.data.rows import RatingSample
from selectit_trl.errors import SelectionConfigError
from selectit_trl.selection import probe
from selectit_trl.store.outputs import read_summary, selection_dir


def pairwise_auroc(scores, labels):
    """AUROC by its definition: over every (clean, mismatched) pair, 1 when clean scores higher, 1/2 on a tie."""
    clean = [s for s, y in zip(scores, labels) if y == 1]
    mismatched = [s for s, y in zip(scores, labels) if y == 0]
    wins = sum(1.0 if c > m else 0.5 if c == m else 0.0 for c, m in itertools.product(clean, mismatched))
    return wins / (len(clean) * len(mismatched))


def test_auroc_on_a_fixed_score_file_with_known_labels(tmp_path):
    path = tmp_path / "scores.json"
    # clean 0.9 0.5 0.5 against mismatched 0.5 0.1: wins 1 1 / .5 1 / .5 1 -> 5 of 6 pairs
    path.write_text(json.dumps({"scores": [0.9, 0.5, 0.5, 0.5, 0.1], "labels": [1, 1, 1, 0, 0]}))
    fixed = json.loads(path.read_text())
    assert probe.auroc(fixed["scores"], fixed["labels"]) == pytest.approx(5 / 6, abs=1e-15)
    assert probe.auroc([0.1, 0.2, 0.3, 0.4], [0, 0, 1, 1]) == 1.0
    assert probe.auroc([0.1, 0.2, 0.3, 0.4], [1, 1, 0, 0]) == 0.0
    assert probe.auroc([0.3] * 4, [1, 0, 1, 0]) == 0.5


def test_probe_rows_are_seeded_eligible_and_have_distinct_responses():
    samples = [RatingSample(f"q{i}", "same" if i % 3 == 0 else f"a{i}") for i in range(30)]
    eligible = [i != 4 for i in range(30)]
    rows = probe.probe_rows(samples, eligible, 12, seed=7)
    assert rows == probe.probe_rows(samples, eligible, 12, seed=7) != probe.probe_rows(samples, eligible, 12, seed=8)
    assert len(rows) == 12 and 4 not in rows
    assert len({samples[i].response for i in rows}) == 12  # at most one of the rows answering "same"
    # fewer rows when fewer qualify
    assert len(probe.probe_rows(samples, eligible, 100, seed=0)) == 30 - 1 - 9


def test_probe_rows_never_share_an_instruction():
    # rows 2k and 2k+1 answer the same instruction: a "mismatched" pair of the two would be a real row
    samples = [RatingSample(f"q{i // 2}", f"a{i}") for i in range(20)]
    rows = probe.probe_rows(samples, [True] * 20, 20, seed=3)
    assert len(rows) == 10 and len({samples[i].instruction for i in rows}) == 10
    real = set(samples)
    assert not real & set(probe.mismatched_pairs(samples, rows))


def test_mismatched_pairs_give_every_instruction_another_rows_response():
    samples = [RatingSample(f"q{i}", f"a{i}") for i in range(5)]
    pairs = probe.mismatched_pairs(samples, [3, 0, 4])
    assert pairs == [RatingSample("q3", "a0"), RatingSample("q0", "a4"), RatingSample("q4", "a3")]


def _rows(n):
    return [{"instruction": f"Question number {i}: what is {i} plus {i}?", "input": "",
             "output": f"The answer is {2 * i}." + " Indeed." * (i % 4)} for i in range(n)]


def test_probe_end_to_end_and_the_main_run_reuses_its_rows(tiny_llama, tmp_path, caplog):
    dataset = Dataset.from_list(_rows(24))
    args = cpu_config(tmp_path, selection_probe=True, selection_probe_size=8, selection_probe_threshold=1.0,
                      selection_ratio=0.25)
    trainer = SelectiveSFTTrainer(model=tiny_llama, args=args, train_dataset=dataset)
    with caplog.at_level(logging.WARNING, logger="selectit_trl"):
        result = trainer.probe()
    assert "barely tell" in caplog.text  # a threshold of 1.0 is never met

    written = json.loads((selection_dir(tmp_path) / probe.PROBE_FILE).read_text())
    assert written["pairs"] == result["pairs"] == 8
    assert written["labels"] == [1] * 8 + [0] * 8
    assert written["partners"] == written["rows"][1:] + written["rows"][:1]
    assert len(set(written["rows"])) == 8
    # each AUROC is what its per-pair scores give, counted pair by pair
    assert written["auroc"]["combined"] == pytest.approx(pairwise_auroc(written["scores"], written["labels"]), abs=1e-12)
    scores = written["sentence_scores"][tiny_llama]
    assert written["auroc"][tiny_llama] == pytest.approx(pairwise_auroc(scores, written["labels"]), abs=1e-12)
    assert scores == pytest.approx(written["scores"])  # one model: its score is the combined one
    assert written["below_threshold"] is True

    # The clean rows are stored like any others: the selection scores only the other 16 rows, and its numbers for
    # the probed rows are the probe's.
    selection = trainer.select()
    assert selection.summary.scored_this_run == {tiny_llama: 24 - 8}
    for row, score in zip(written["rows"], written["scores"][:8]):
        assert selection.scores[row] == pytest.approx(score, abs=1e-12)
    summary = read_summary(tmp_path)
    assert summary["probe"]["auroc"] == written["auroc"]  # the selection ran the probe again, from the store alone


def test_probe_is_skipped_when_turned_off_and_refused_on_a_single_row(tiny_llama, tmp_path):
    dataset = Dataset.from_list(_rows(10))
    trainer = SelectiveSFTTrainer(model=tiny_llama, args=cpu_config(tmp_path, selection_probe=False, selection_ratio=0.5),
                                  train_dataset=dataset)
    result = trainer.select()
    assert result.summary.probe is None and not (selection_dir(tmp_path) / probe.PROBE_FILE).exists()

    single = SelectiveSFTTrainer(model=tiny_llama, args=cpu_config(tmp_path / "one", selection_ratio=1.0),
                                 train_dataset=Dataset.from_list(_rows(1)))
    with pytest.raises(SelectionConfigError, match="at least two rows"):
        single.probe()
    assert single.select().summary.probe is None  # a selection goes on without it


def test_probe_under_zero3_uses_the_store_or_says_what_to_do(tiny_llama, tmp_path, zero3):
    dataset = Dataset.from_list(_rows(6))
    zero3(True)
    with pytest.raises(SelectionConfigError, match="cannot score under it"):
        SelectiveSFTTrainer(model=tiny_llama, args=cpu_config(tmp_path), train_dataset=dataset).probe()
    zero3(False)
    first = SelectiveSFTTrainer(model=tiny_llama, args=cpu_config(tmp_path), train_dataset=dataset).probe()
    zero3(True)
    again = SelectiveSFTTrainer(model=tiny_llama, args=cpu_config(tmp_path), train_dataset=dataset).probe()
    assert again["auroc"] == first["auroc"]


def test_probe_size_must_be_at_least_two(tmp_path):
    with pytest.raises(ValueError, match="selection_probe_size must be >= 2"):
        cpu_config(tmp_path, selection_probe_size=1)
    assert np.isclose(cpu_config(tmp_path).selection_probe_threshold, 0.6)
