"""`Plan`: what a run measures (the strategies of the mix and the measurements they declare) and how it turns
the measurements into every strategy's values and a ranking."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .. import strategies
from ..data.rows import RatingSample
from ..data.text import is_blank
from ..engine.prompts import load_prompts
from ..errors import SelectionConfigError
from ..measures.base import Rater
from ..measures.difficulty import Difficulty
from ..measures.measurer import Measured, Measurer
from ..measures.ratings import Ratings
from ..strategies import reflection

logger = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """Every strategy's values for a list of samples, with what they were computed from."""

    values: dict[str, np.ndarray]  # strategy -> [N]
    measured: dict[str, Measured]  # measurement kind -> each model's values
    selectit: tuple | None  # (token scores by model, sentence scores by model) when SelectIT is used


def rating_prompts(config):
    """The rating prompts the `selection_*` settings name (`prompts.load_prompts`); raises on a bad setting."""
    return load_prompts(
        config.selection_num_prompts,
        config.selection_score_max,
        config.selection_prompts,
        config.selection_prompts_file,
        config.selection_rating_preamble,
    )


class Plan:
    """What a run measures: the strategies and their weights, and the measurements they need."""

    def __init__(self, raters: Sequence[Rater], config):
        model_ids = [r.model_id for r in raters]
        if len(set(model_ids)) != len(model_ids):
            raise SelectionConfigError(f"Each scoring model must appear once, got {model_ids}.")
        self.config, self.raters = config, list(raters)
        self.weights = strategies.parse_strategy(config.selection_strategy)
        self.strategies = strategies.strategies_of(self.weights, config)
        kinds = strategies.needed_measurements(self.weights)
        self.measures = {kind: Ratings(rating_prompts(config), config, raters) if kind == "ratings"
                         else Difficulty(kind, config) for kind in kinds}
        if "ratings" not in self.measures and len(raters) > 1:
            logger.warning("selection_peer_models only rate for strategies that read ratings (selectit); %s does not.",
                           config.selection_strategy)
        self.model_weights = (
            reflection.model_weights({r.model_id: r.num_parameters for r in raters}, config.selection_model_weights)
            if "ratings" in self.measures else {raters[0].model_id: 1.0}
        )

    @property
    def ratings(self) -> Ratings | None:
        return self.measures.get("ratings")

    @property
    def needs_instructions(self) -> bool:
        """Whether a strategy of the mix compares contexts with and without the instruction (IFD, r-IFD), which an
        empty one makes equal."""
        return bool(strategies.needs_instructions(self.weights))

    def keepable(self, samples: Sequence[RatingSample]) -> np.ndarray:
        """Rows that may be kept whatever their scores: a response, and an instruction where the strategy needs one."""
        return np.array([not is_blank(s.response) and (not is_blank(s.instruction) or not self.needs_instructions)
                         for s in samples], dtype=bool)

    def models(self) -> list[Rater]:
        """The models whose measurements the strategy uses."""
        return self.raters if self.ratings else self.raters[:1]

    def rank(self, values: dict[str, np.ndarray], keepable: np.ndarray, only: str | None = None):
        """`strategies.score` under this plan's mix, or under one of its strategies alone."""
        weights = {only: 1.0} if only else self.weights
        return strategies.score(weights, values, keepable, self.strategies)

    def evaluate(self, measurer: Measurer, samples: Sequence[RatingSample], **collect_options) -> Evaluation:
        """Measure what the strategies need (from the store where it can) and compute every strategy's values."""
        measured = {kind: measurer.collect(measure, samples, **collect_options) for kind, measure in self.measures.items()}
        tuned = self.raters[0].model_id
        measurements = strategies.Measurements(
            ratings=measured["ratings"].values_by_model if "ratings" in measured else None,
            losses={kind: result.values_by_model[tuned] for kind, result in measured.items() if kind != "ratings"},
            tokenizer=self.raters[0].tokenizer, model_weights=self.model_weights, config=self.config,
            left_out={kind: result.truncated for kind, result in measured.items()
                      if kind != "ratings" and self.config.selection_ifd_layout == "released"},
        )
        # The API's promise: .instruction is a string, "" for a row rated as a whole text.
        rows = [s if s.instruction is not None else RatingSample("", s.response) for s in samples]
        values = {}
        for name, strategy in self.strategies.items():
            values[name] = np.asarray(strategy.values(rows, measurements), dtype=np.float64)
            if values[name].shape != (len(samples),):
                raise SelectionConfigError(
                    f"Strategy {name!r} gave values of shape {values[name].shape} for {len(samples)} samples: "
                    "`values` returns one float per sample.")
        selectit = getattr(self.strategies.get("selectit"), "by_model", None)
        return Evaluation(values, measured, selectit)
