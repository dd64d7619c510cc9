"""The signal probe: does this scorer tell good pairs from bad ones on this dataset at all?

A few rows are taken as they are (clean) and again with each instruction given another row's response
(mismatched). Both are scored like any other sample, and the area under the ROC curve of clean against
mismatched says how much signal the scores carry: 0.5 is chance, 1.0 a perfect split. A 135M model's
self-ratings come out close to 0.5; a 7B model's do not. It costs 2n samples per model, so it runs before the
full scoring, where an hour of scoring can still be saved.

Pure functions: the probe's samples are scored by `probing.run_probe`, into the same store as the rest, so
the clean rows are not scored again by the main run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import roc_auc_score

from ..data.rows import RatingSample

PROBE_FILE = "probe.json"
# Below this many pairs of each kind the probe warns that its AUROC says little. With n clean and n mismatched
# pairs, an AUROC near 0.5 has a standard error of about sqrt((2n + 1) / (12 n^2)) (Hanley and McNeil, 1982): 0.25
# at 3 pairs, where any value from chance to perfect is within reach, and 0.058 at 50, where a 95% interval of
# +/-0.11 still tells a useful scorer (0.7 and up) from chance.
MIN_PAIRS = 50


def auroc_uncertainty(pairs: int) -> float:
    """Half the width of a 95% interval around an AUROC of 0.5 from `pairs` clean and as many mismatched pairs."""
    return 1.96 * math.sqrt((2 * pairs + 1) / (12 * pairs * pairs))


def probe_rows(samples: Sequence[RatingSample], eligible: Sequence[bool], size: int, seed: int) -> list[int]:
    """`size` rows drawn at random (fixed by `seed`) among the eligible ones, no two with the same instruction
    or the same response.

    That makes sure every mismatched pair really pairs an instruction with a response written for something
    else: with a shared instruction, a "mismatched" pair could be another real row. Fewer rows are returned
    when fewer qualify.
    """
    order = np.random.default_rng(seed).permutation(len(samples))
    chosen, instructions, responses = [], set(), set()
    for i in order.tolist():
        sample = samples[i]
        if eligible[i] and sample.response not in responses and sample.instruction not in instructions:
            chosen.append(i)
            instructions.add(sample.instruction)
            responses.add(sample.response)
            if len(chosen) == size:
                break
    return chosen


def mismatched_pairs(samples: Sequence[RatingSample], rows: Sequence[int]) -> list[RatingSample]:
    """Row rows[j]'s instruction with row rows[j+1]'s response (the last takes the first's): no row keeps its own."""
    return [
        RatingSample(samples[row].instruction, samples[rows[(j + 1) % len(rows)]].response)
        for j, row in enumerate(rows)
    ]


def auroc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Area under the ROC curve: the chance that a random positive (label 1) outscores a random negative, ties
    counting one half."""
    return float(roc_auc_score(np.asarray(labels, dtype=int), np.asarray(scores, dtype=np.float64)))


def bottom_barred(ranking: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """The ranking with the rows a strategy would never keep (IFD > 1, say) moved below every other row."""
    ranking = np.asarray(ranking, dtype=np.float64)
    floor = np.nanmin(ranking[eligible]) - 1.0 if eligible.any() else 0.0
    return np.where(eligible & ~np.isnan(ranking), ranking, floor)
