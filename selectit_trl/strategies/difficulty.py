"""`ifd` and `rifd`: how much an instruction and its response help the model being tuned predict each other.

* `ifd`: Instruction-Following Difficulty (Cherry LLM), IFD = L(A | Q) / L(A), the mean token loss of the
  response with its instruction over that without. Higher is kept first; a sample with IFD > 1 (the
  instruction makes its response harder to predict) is misaligned and never kept.
* `rifd`: reverse IFD (Selective Reflection-Tuning), r-IFD = PPL(Q | A) / PPL(Q), how much harder the
  instruction is to guess without its response than with it, inverted. Lower r-IFD is better: the response
  tells the model more about what it answers. Samples with r-IFD > 1 are never kept, and the ranking is
  1 / r-IFD, so that higher is kept first as for every strategy.
"""

from __future__ import annotations

import numpy as np

from .base import Measurements, Strategy, register_strategy


def ifd(losses: np.ndarray) -> np.ndarray:
    """IFD from losses [N, 2] = (L(A | Q), L(A)): their ratio."""
    losses = np.asarray(losses, dtype=np.float64)
    return losses[:, 0] / losses[:, 1]


def rifd(losses: np.ndarray) -> np.ndarray:
    """r-IFD from losses [N, 2] = (L(Q | A), L(Q)): PPL(Q | A) / PPL(Q) = exp(L(Q | A) - L(Q))."""
    losses = np.asarray(losses, dtype=np.float64)
    return np.exp(losses[:, 0] - losses[:, 1])


def _without_left_out(values: np.ndarray, measurements: Measurements, kind: str) -> np.ndarray:
    """NaN for the rows the released layout leaves out, which are then never kept (`_Ratio.barred`)."""
    left_out = measurements.left_out.get(kind)
    return values if left_out is None else np.where(left_out, np.nan, values)


class _Ratio(Strategy):
    """A ratio of two losses where above 1 means the pair is misaligned: never kept (NaN neither)."""

    needs_instructions = True

    def barred(self, values: np.ndarray) -> np.ndarray:
        return ~(np.asarray(values) <= 1.0)


@register_strategy("ifd")
class InstructionFollowingDifficulty(_Ratio):
    needs = ("ifd",)

    def values(self, samples, measurements: Measurements) -> np.ndarray:
        return _without_left_out(ifd(measurements.losses["ifd"]), measurements, "ifd")


@register_strategy("rifd")
class ReverseInstructionFollowingDifficulty(_Ratio):
    needs = ("rifd",)

    def values(self, samples, measurements: Measurements) -> np.ndarray:
        return _without_left_out(rifd(measurements.losses["rifd"]), measurements, "rifd")

    def ranking(self, values: np.ndarray) -> np.ndarray:
        return 1.0 / values
