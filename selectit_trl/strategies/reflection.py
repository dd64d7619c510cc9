"""SelectIT's uncertainty-aware self-reflection, as pure array math.

Nothing here touches a model, a tokenizer or a file: the measurer hands in the raw probabilities of the score
tokens "1".."S", and everything from there to one score per sample happens in this module (which samples are
kept, from those scores, is `selection/ranking.py`'s). Keeping it pure is what lets the score store recompute a
selection for a new alpha, normalisation or set of model weights without a single forward pass.

Shapes used throughout:
    probs          [..., S]   raw full-vocabulary softmax values of the tokens "1".."S"
    token scores   [N, K]     one per sample and rating prompt
    sentence score [N]        one per sample, for one model
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

NORMALIZATIONS = ("paper", "reference")


def normalize(probs: np.ndarray, method: str = "paper") -> np.ndarray:
    """Turn the raw score-token probabilities into a distribution q over the ratings 1..S.

    Args:
        probs (`np.ndarray` of shape `[..., S]`):
            Probabilities of the tokens "1".."S" read from the full-vocabulary softmax.
        method (`str`, *optional*, defaults to `"paper"`):
            `"paper"` renormalises, q_r = p_r / sum_j p_j. `"reference"` reproduces the released SelectIT
            scripts, which apply a second softmax to the renormalised values: q = softmax(p / sum_j p_j).
    """
    p = np.asarray(probs, dtype=np.float64)
    total = p.sum(axis=-1, keepdims=True)
    # All-zero probabilities only happen on underflow. A uniform q then scores 0, which is the honest answer.
    renormalised = np.where(total > 0, p / np.where(total > 0, total, 1.0), 1.0 / p.shape[-1])
    if method == "paper":
        return renormalised
    if method == "reference":
        shifted = np.exp(renormalised - renormalised.max(axis=-1, keepdims=True))
        return shifted / shifted.sum(axis=-1, keepdims=True)
    raise ValueError(f"Unknown normalization {method!r}: use one of {', '.join(NORMALIZATIONS)}.")


def token_scores(q: np.ndarray) -> np.ndarray:
    """Token-level score: the argmax rating b, scaled by the mean gap between q_b and the other ratings.

    S_token = b * sum_i (q_b - q_i) / (S - 1), with b 1-based and ties resolved to the lowest rating.
    A uniform q gives 0 and a certain rating of S gives S.
    """
    q = np.asarray(q, dtype=np.float64)
    num_ratings = q.shape[-1]
    if num_ratings < 2:
        raise ValueError("A rating scale needs at least two values (selection_score_max >= 2).")
    best = q.argmax(axis=-1)  # numpy returns the first maximum, i.e. the lowest rating on ties
    q_best = np.take_along_axis(q, best[..., None], axis=-1)[..., 0]
    confidence = (q_best[..., None] - q).sum(axis=-1) / (num_ratings - 1)
    return (best + 1) * confidence


def sentence_scores(token_level: np.ndarray, alpha: float = 0.2) -> np.ndarray:
    """Sentence-level score: mean over the K prompts, discounted by their disagreement.

    S_sent = mean(S_token) / (1 + alpha * std(S_token)), with the population standard deviation.
    """
    if alpha < 0:
        raise ValueError(f"selection_alpha must be >= 0, got {alpha}.")
    t = np.asarray(token_level, dtype=np.float64)
    return t.mean(axis=-1) / (1.0 + alpha * t.std(axis=-1, ddof=0))


def model_weights(
    parameter_counts: Mapping[str, int], explicit: Mapping[str, float] | Sequence[float] | None = None
) -> dict[str, float]:
    """Weights w_m = theta_m / sum_j theta_j, or explicit weights (normalised to sum to 1).

    Args:
        parameter_counts: model id -> parameter count theta, in the order the models were scored.
        explicit: optional weights, either by model id or in the same order as `parameter_counts`.
    """
    ids = list(parameter_counts)
    if explicit is None:
        raw = [float(parameter_counts[m]) for m in ids]
    elif isinstance(explicit, Mapping):
        missing = [m for m in ids if m not in explicit]
        extra = [m for m in explicit if m not in parameter_counts]
        if missing or extra:
            raise ValueError(
                f"selection_model_weights must name every scoring model exactly: missing {missing}, unknown {extra}."
            )
        raw = [float(explicit[m]) for m in ids]
    else:
        if len(explicit) != len(ids):
            raise ValueError(
                f"selection_model_weights has {len(explicit)} values but {len(ids)} models score: {ids}."
            )
        raw = [float(w) for w in explicit]
    if any(w < 0 or not math.isfinite(w) for w in raw) or sum(raw) <= 0:
        raise ValueError(f"Model weights must be finite, non-negative and not all zero, got {raw}.")
    total = sum(raw)
    return {m: w / total for m, w in zip(ids, raw)}


def combine(sentence_by_model: Mapping[str, np.ndarray], weights: Mapping[str, float]) -> np.ndarray:
    """Model-level score: S_model = sum_m w_m * S_sent,m."""
    total = None
    for model_id, scores in sentence_by_model.items():
        term = weights[model_id] * np.asarray(scores, dtype=np.float64)
        total = term if total is None else total + term
    if total is None:
        raise ValueError("No model scores to combine.")
    return total


def score_samples(
    probs_by_model: Mapping[str, np.ndarray],
    weights: Mapping[str, float],
    normalization: str = "paper",
    alpha: float = 0.2,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]:
    """All three levels at once, from raw probabilities of shape [N, K, S] per model.

    Returns:
        `(token_scores_by_model [N, K], sentence_scores_by_model [N], model_level_scores [N])`
    """
    token_by_model = {m: token_scores(normalize(p, normalization)) for m, p in probs_by_model.items()}
    sentence_by_model = {m: sentence_scores(t, alpha) for m, t in token_by_model.items()}
    return token_by_model, sentence_by_model, combine(sentence_by_model, weights)
