"""The paper's baselines: `length`, the response's length in tokens, and `random`, a uniform draw fixed by the seed."""

from __future__ import annotations

import numpy as np

from ..engine.tokens import token_counts
from .base import Measurements, Strategy, register_strategy


def random_values(count: int, seed: int) -> np.ndarray:
    """The `random` strategy's draws: uniform on [0, 1), fixed by the seed and the number of samples."""
    return np.random.default_rng(seed).random(count)


@register_strategy("length")
class Length(Strategy):
    def values(self, samples, measurements: Measurements) -> np.ndarray:
        return token_counts(measurements.tokenizer, [s.response for s in samples]).astype(np.float64)


@register_strategy("random")
class Random(Strategy):
    def values(self, samples, measurements: Measurements) -> np.ndarray:
        return random_values(len(samples), measurements.config.seed)
