"""`selection_strategy` read as weights, and the ranking of the rows under one strategy or a weighted mix.

A mix weighs strategies by rank: each sample's score is the weighted mean, over the strategies, of its rank
percentile under that strategy among the samples that may be kept, so that values on different scales mix
evenly. A sample barred by any strategy in the mix is never kept, and scores 0.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

from ..errors import SelectionConfigError
from .base import MEASUREMENTS, Strategy, get_strategy, strategy_names


def parse_strategy(value: str | Mapping[str, float]) -> dict[str, float]:
    """`selection_strategy` as {strategy: weight}, the weights summing to 1.

    Takes one name ("ifd"), a mapping ({"selectit": 0.5, "ifd": 0.5}, as YAML gives it), or the same as text:
    "selectit:0.5,ifd:0.5" or a JSON object (the command line).
    """
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            try:
                value = json.loads(text)
            except ValueError as error:
                raise SelectionConfigError(f"selection_strategy {value!r} is not valid JSON: {error}.") from None
        elif ":" in text or "," in text:
            value = {}
            for part in filter(None, (p.strip() for p in text.split(","))):
                name, _, weight = part.partition(":")
                try:
                    value[name.strip()] = float(weight) if weight.strip() else 1.0
                except ValueError:
                    raise SelectionConfigError(f"selection_strategy: {part!r} has no numeric weight.") from None
        else:
            value = {text: 1.0}
    if not isinstance(value, Mapping) or not value:
        raise SelectionConfigError(f"selection_strategy must be a strategy name or a mapping of them to weights, got {value!r}.")
    known = strategy_names()
    unknown = [name for name in value if name not in known]
    if unknown:
        raise SelectionConfigError(f"Unknown selection_strategy {unknown}: use {', '.join(known)} or a weighted mix of them.")
    weights = {}
    for name, weight in value.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight <= 0:
            raise SelectionConfigError(f"selection_strategy: the weight of {name!r} must be a positive number, got {weight!r}.")
        weights[name] = float(weight)
    total = sum(weights.values())
    return {name: weight / total for name, weight in weights.items()}


def strategies_of(weights: Mapping[str, float], config=None) -> dict[str, Strategy]:
    """An instance of each strategy in a mix, by name."""
    return {name: get_strategy(name)(config) for name in weights}


@dataclass
class StrategyScores:
    """Every strategy's per-sample values, what selection ranks by, and which samples may be kept."""

    values: dict[str, np.ndarray]  # strategy -> [N] as reported: SelectIT score, IFD, r-IFD, tokens, draw
    ranking: np.ndarray  # [N] higher is kept first
    eligible: np.ndarray  # [N] bool
    barred: dict[str, int]  # strategy that bars rows (ifd, rifd) -> how many it bars


def score(weights: Mapping[str, float], values: Mapping[str, np.ndarray], keepable: np.ndarray | None = None,
          strategies: Mapping[str, Strategy] | None = None) -> StrategyScores:
    """Rank the samples under `weights` (from `parse_strategy`), given each strategy's values.

    One strategy ranks by its own `ranking` of its values (1 / r-IFD for `rifd`). Several rank by the weighted
    mean of the rank percentiles among the samples that may be kept, in (0, 1], ties sharing their mean rank;
    the others score 0. Barred from keeping: samples outside `keepable` (empty responses, say) and samples a
    strategy of the mix bars (IFD or r-IFD above 1).
    """
    strategies = strategies or strategies_of(weights)
    n = len(next(iter(values.values())))
    eligible = np.ones(n, dtype=bool) if keepable is None else np.asarray(keepable, dtype=bool).copy()
    barred = {}
    for name in weights:
        mask = strategies[name].barred(np.asarray(values[name], dtype=np.float64))
        if mask is not None:
            barred[name] = int(np.count_nonzero(mask))
            eligible &= ~np.asarray(mask, dtype=bool)
    keys = {name: np.asarray(strategies[name].ranking(np.asarray(values[name], dtype=np.float64)), dtype=np.float64)
            for name in weights}
    if len(weights) == 1:
        ranking = next(iter(keys.values()))
    else:
        # Percentiles among the keepable rows only: barred rows (the highest IFDs, often) would otherwise take
        # the top ranks of a strategy and shrink its weight in the mix.
        ranking = np.zeros(n)
        count = int(eligible.sum())
        for name, weight in weights.items():
            ranking[eligible] += weight * rankdata(np.nan_to_num(keys[name][eligible], nan=-np.inf)) / max(count, 1)
    return StrategyScores({name: np.asarray(values[name], dtype=np.float64) for name in weights}, ranking, eligible, barred)


def needed_measurements(weights: Mapping[str, float]) -> list[str]:
    """The measurements a mix reads, in the order they are measured."""
    wanted = {kind for name in weights for kind in get_strategy(name).needs}
    return [kind for kind in MEASUREMENTS if kind in wanted]


def needs_instructions(weights: Mapping[str, float]) -> list[str]:
    """The strategies of a mix that never keep a row without an instruction."""
    return [name for name in weights if get_strategy(name).needs_instructions]
