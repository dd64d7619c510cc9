"""Selection strategies as pure array math: per-sample measurements in, one ranking score per strategy out.

* `selectit`: the SelectIT model-level score (`reflection.py`).
* `ifd`: Instruction-Following Difficulty (Cherry LLM), IFD = L(A | Q) / L(A), the mean token loss of the
  response with its instruction over that without. Higher is kept first; a sample with IFD > 1 (the
  instruction makes its response harder to predict) is misaligned and never kept.
* `rifd`: reverse IFD (Selective Reflection-Tuning), r-IFD = PPL(Q | A) / PPL(Q), how much harder the
  instruction is to guess without its response than with it, inverted. Lower r-IFD is better: the response
  tells the model more about what it answers. Samples with r-IFD > 1 are never kept, and the ranking score is
  1 / r-IFD, so that higher is kept first as for every strategy.
* `length`: the response's length in tokens (the paper's length baseline).
* `random`: a uniform draw, fixed by the seed (the paper's random baseline).

A combination weighs strategies by rank: each sample's score is the weighted mean, over the strategies, of its
rank percentile under that strategy among the samples that may be kept, so that scores on different scales mix
evenly. A sample barred by any strategy in the combination is never kept, and scores 0.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

from .errors import SelectionConfigError

STRATEGIES = ("selectit", "ifd", "rifd", "length", "random")
# Which measurement each strategy needs from a model: rating probabilities, or the losses of one difficulty kind.
MEASUREMENT = {"selectit": "ratings", "ifd": "ifd", "rifd": "rifd"}


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
    unknown = [name for name in value if name not in STRATEGIES]
    if unknown:
        raise SelectionConfigError(f"Unknown selection_strategy {unknown}: use {', '.join(STRATEGIES)} or a weighted mix of them.")
    weights = {}
    for name, weight in value.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight <= 0:
            raise SelectionConfigError(f"selection_strategy: the weight of {name!r} must be a positive number, got {weight!r}.")
        weights[name] = float(weight)
    total = sum(weights.values())
    return {name: weight / total for name, weight in weights.items()}


def ifd(losses: np.ndarray) -> np.ndarray:
    """IFD from losses [N, 2] = (L(A | Q), L(A)): their ratio."""
    losses = np.asarray(losses, dtype=np.float64)
    return losses[:, 0] / losses[:, 1]


def rifd(losses: np.ndarray) -> np.ndarray:
    """r-IFD from losses [N, 2] = (L(Q | A), L(Q)): PPL(Q | A) / PPL(Q) = exp(L(Q | A) - L(Q))."""
    losses = np.asarray(losses, dtype=np.float64)
    return np.exp(losses[:, 0] - losses[:, 1])


@dataclass
class StrategyScores:
    """Every strategy's per-sample values, what selection ranks by, and which samples may be kept."""

    values: dict[str, np.ndarray]  # strategy -> [N] as reported: SelectIT score, IFD, r-IFD, tokens, draw
    ranking: np.ndarray  # [N] higher is kept first
    eligible: np.ndarray  # [N] bool
    barred: dict[str, int]  # ifd / rifd -> samples whose ratio exceeds 1


def _ranking_key(name: str, values: np.ndarray) -> np.ndarray:
    return 1.0 / values if name == "rifd" else values


def score(weights: Mapping[str, float], values: Mapping[str, np.ndarray], keepable: np.ndarray | None = None) -> StrategyScores:
    """Rank the samples under `weights` (from `parse_strategy`), given each strategy's values.

    One strategy ranks by its own value (1 / r-IFD for `rifd`). Several rank by the weighted mean of the rank
    percentiles among the samples that may be kept, in (0, 1], ties sharing their mean rank; the others
    score 0. Barred from keeping: samples outside `keepable` (empty responses, say) and samples whose IFD or
    r-IFD exceeds 1 when that strategy takes part.
    """
    n = len(next(iter(values.values())))
    eligible = np.ones(n, dtype=bool) if keepable is None else np.asarray(keepable, dtype=bool).copy()
    barred = {}
    for name in ("ifd", "rifd"):
        if name in weights:
            within = np.asarray(values[name]) <= 1.0  # NaN compares False: never kept
            barred[name] = int((~within).sum())
            eligible &= within
    keys = {name: _ranking_key(name, np.asarray(values[name], dtype=np.float64)) for name in weights}
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


def random_values(count: int, seed: int) -> np.ndarray:
    """The `random` strategy's draws: uniform on [0, 1), fixed by the seed and the number of samples."""
    return np.random.default_rng(seed).random(count)
