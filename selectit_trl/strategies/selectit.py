"""`selectit`: the SelectIT model-level score (Liu et al., 2024), from every scoring model's rating probabilities.

The token, sentence and model levels are `reflection.score_samples`; this file only plugs them in.
"""

from __future__ import annotations

import numpy as np

from . import reflection
from .base import Measurements, Strategy, register_strategy


@register_strategy("selectit")
class SelectIT(Strategy):
    needs = ("ratings",)

    def values(self, samples, measurements: Measurements) -> np.ndarray:
        config = measurements.config
        token, sentence, combined = reflection.score_samples(
            measurements.ratings, measurements.model_weights, config.selection_normalization, config.selection_alpha)
        # The per-model levels go into scores.jsonl and the report; they are kept from the last call.
        self.by_model = (token, sentence)
        return combined
