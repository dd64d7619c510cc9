"""From one score per sample to the kept samples: the order, the count, and the choice.

The same for every strategy and mix: higher scores are kept first, ties keep the dataset's order, a NaN is never
preferred, and the count follows `selection_ratio` or `selection_max_samples` as the released scripts count it.
"""

from __future__ import annotations

import math

import numpy as np


def rank(scores: np.ndarray) -> np.ndarray:
    """Indices ordered by score, highest first; equal scores keep their original order (lower index first)."""
    s = np.asarray(scores, dtype=np.float64)
    # NaN sorts last: a sample whose score could not be computed must never be preferred.
    key = np.where(np.isnan(s), -np.inf, s)
    return np.lexsort((np.arange(len(s)), -key))


def num_to_keep(num_samples: int, ratio: float | None = None, max_samples: int | None = None) -> int:
    """How many samples selection keeps: `max_samples` when given (capped at N), else floor(N * ratio)."""
    if max_samples is not None:
        if max_samples < 1:
            raise ValueError(f"selection_max_samples must be >= 1, got {max_samples}.")
        return min(int(max_samples), num_samples)
    if ratio is None or not 0 < ratio <= 1:
        raise ValueError(f"selection_ratio must be in (0, 1], got {ratio}.")
    # Plain floor of the float product, as the released scripts' int(N * ratio) does, so counts match theirs.
    return min(num_samples, math.floor(num_samples * ratio))


def select(
    scores: np.ndarray, ratio: float | None = None, max_samples: int | None = None, eligible: np.ndarray | None = None
) -> np.ndarray:
    """Indices of the kept samples, in rank order (best first).

    The count is taken over all N samples; samples outside `eligible` (a boolean mask) are never kept, so fewer
    than that count are kept when too few are eligible.
    """
    order = rank(scores)
    if eligible is not None:
        order = order[np.asarray(eligible, dtype=bool)[order]]
    return order[: num_to_keep(len(scores), ratio, max_samples)]
