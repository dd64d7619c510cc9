"""The method's math against values worked out by hand."""

import math

import numpy as np
import pytest

from selectit_trl.selection import ranking
from selectit_trl.strategies import reflection as rf


def test_paper_normalisation_renormalises():
    q = rf.normalize(np.array([0.05, 0.1, 0.15, 0.1, 0.1]), "paper")
    assert q == pytest.approx([0.1, 0.2, 0.3, 0.2, 0.2], abs=1e-15)


def test_reference_normalisation_is_softmax_of_renormalised():
    p = [0.05, 0.1, 0.15, 0.1, 0.1]  # renormalised: 0.1 0.2 0.3 0.2 0.2
    e = [math.exp(0.1), math.exp(0.2), math.exp(0.3), math.exp(0.2), math.exp(0.2)]
    expected = [x / sum(e) for x in e]
    assert rf.normalize(np.array(p), "reference") == pytest.approx(expected, abs=1e-15)


def test_unknown_normalisation_is_refused():
    with pytest.raises(ValueError, match="paper, reference"):
        rf.normalize(np.ones(5), "softmax")


def test_token_score_by_hand():
    # b = 3; gaps to 0.3 sum to 0.2 + 0.1 + 0 + 0.1 + 0.1 = 0.5; 3 * 0.5 / 4 = 0.375
    assert rf.token_scores(np.array([0.1, 0.2, 0.3, 0.2, 0.2])) == pytest.approx(0.375, abs=1e-15)


def test_uniform_rating_scores_zero():
    assert rf.token_scores(rf.normalize(np.full(5, 0.013))) == pytest.approx(0.0, abs=1e-15)


def test_certain_top_rating_scores_s():
    assert rf.token_scores(np.array([0.0, 0.0, 0.0, 0.0, 1.0])) == 5.0
    assert rf.token_scores(np.array([0.0, 0.0, 1.0])) == 3.0


def test_certain_lowest_rating_scores_one():
    assert rf.token_scores(np.array([1.0, 0.0, 0.0, 0.0, 0.0])) == 1.0


def test_argmax_ties_go_to_the_lowest_rating():
    # S = 3, q = [0.4, 0.4, 0.2]: b = 1, gaps 0 + 0 + 0.2, / (3 - 1) = 0.1
    assert rf.token_scores(np.array([0.4, 0.4, 0.2])) == pytest.approx(0.1, abs=1e-15)


def test_scale_of_two():
    # S = 2, q = [0.25, 0.75]: b = 2, gaps 0.5 + 0, / 1 -> 2 * 0.5 = 1.0
    assert rf.token_scores(np.array([0.25, 0.75])) == pytest.approx(1.0, abs=1e-15)


def test_scale_of_seven():
    q = np.array([0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.4])  # b = 7; gaps 6 * 0.3 = 1.8; / 6 = 0.3; 7 * 0.3 = 2.1
    assert rf.token_scores(q) == pytest.approx(2.1, abs=1e-14)


def test_scale_of_one_is_refused():
    with pytest.raises(ValueError, match="at least two"):
        rf.token_scores(np.array([1.0]))


def test_sentence_score_by_hand():
    # mean 2, population std sqrt(2/3)
    expected = 2.0 / (1.0 + 0.2 * math.sqrt(2.0 / 3.0))
    assert rf.sentence_scores(np.array([[1.0, 2.0, 3.0]]), 0.2) == pytest.approx([expected], abs=1e-15)


def test_sentence_score_with_one_prompt_has_no_penalty():
    assert rf.sentence_scores(np.array([[2.5], [0.7]]), 0.2).tolist() == [2.5, 0.7]


def test_sentence_score_alpha_zero_is_the_mean():
    assert rf.sentence_scores(np.array([[1.0, 4.0]]), 0.0).tolist() == [2.5]


def test_weights_from_parameter_counts():
    w = rf.model_weights({"7b": 7_000_000_000, "13b": 13_000_000_000})
    assert w == pytest.approx({"7b": 0.35, "13b": 0.65}, abs=1e-15)


def test_explicit_weights_are_normalised():
    assert rf.model_weights({"a": 1, "b": 1}, [1, 3]) == {"a": 0.25, "b": 0.75}
    assert rf.model_weights({"a": 1, "b": 1}, {"a": 2.0, "b": 2.0}) == {"a": 0.5, "b": 0.5}


def test_weights_must_match_the_models():
    with pytest.raises(ValueError, match="2 models"):
        rf.model_weights({"a": 1, "b": 1}, [1.0])
    with pytest.raises(ValueError, match="unknown"):
        rf.model_weights({"a": 1}, {"a": 1.0, "z": 1.0})


def test_model_level_combination():
    combined = rf.combine({"a": np.array([1.0, 2.0]), "b": np.array([3.0, 0.0])}, {"a": 0.25, "b": 0.75})
    assert combined.tolist() == [2.5, 0.5]


def test_rank_breaks_ties_by_original_index():
    assert ranking.rank(np.array([1.0, 3.0, 3.0, 2.0, 3.0])).tolist() == [1, 2, 4, 3, 0]


def test_rank_puts_nan_last():
    assert ranking.rank(np.array([np.nan, 1.0, 2.0])).tolist() == [2, 1, 0]


def test_number_kept_is_floor_of_n_times_ratio():
    assert ranking.num_to_keep(10, 0.25) == 2
    assert ranking.num_to_keep(150, 0.2) == 30
    assert ranking.num_to_keep(7, 1.0) == 7
    # floor of the float product, as the released scripts compute it: 100 * 0.29 is 28.999999999999996
    assert ranking.num_to_keep(100, 0.29) == 28


def test_absolute_count_takes_precedence_and_is_capped():
    assert ranking.num_to_keep(100, 0.2, max_samples=5) == 5
    assert ranking.num_to_keep(3, 0.2, max_samples=50) == 3


@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.5])
def test_bad_ratio_is_refused(ratio):
    with pytest.raises(ValueError, match="selection_ratio"):
        ranking.num_to_keep(10, ratio)


def test_select_returns_best_first():
    assert ranking.select(np.array([0.1, 0.9, 0.5, 0.9]), ratio=0.5).tolist() == [1, 3]


def test_score_samples_all_levels():
    probs = np.array([[[0.0, 0.0, 0.0, 0.0, 1.0], [0.2, 0.2, 0.2, 0.2, 0.2]]])  # N=1, K=2, S=5
    tokens, sentences, scores = rf.score_samples({"m": probs}, {"m": 1.0}, "paper", 0.2)
    assert tokens["m"].tolist() == [[5.0, 0.0]]
    expected = 2.5 / (1 + 0.2 * 2.5)
    assert sentences["m"] == pytest.approx([expected], abs=1e-15)
    assert scores == pytest.approx([expected], abs=1e-15)
