"""Selection strategies: per-row measurements in, one value per row out, and the ranking of a weighted mix.

The public API for strategies of your own is `Strategy`, `Measurements` and `register_strategy`; installed
packages add theirs through the entry-point group `selectit_trl.strategies` (docs/strategies.md). The built-in
ones use the same API, one file each: `selectit`, `ifd` and `rifd` (difficulty.py), `length` and `random`
(baselines.py).
"""

# isort: skip_file
# The built-in strategies register in this order, which is the order errors and docs list them in.
from .base import (
    ENTRY_POINT_GROUP,
    MEASUREMENTS,
    Measurements,
    Strategy,
    get_strategy,
    register_strategy,
    strategy_names,
)
from .selectit import SelectIT
from .difficulty import InstructionFollowingDifficulty, ReverseInstructionFollowingDifficulty, ifd, rifd
from .baselines import Length, Random, random_values
from .mix import StrategyScores, needed_measurements, needs_instructions, parse_strategy, score, strategies_of

__all__ = [
    "ENTRY_POINT_GROUP", "MEASUREMENTS", "InstructionFollowingDifficulty", "Length", "Measurements", "Random",
    "ReverseInstructionFollowingDifficulty", "SelectIT", "Strategy", "StrategyScores", "get_strategy", "ifd",
    "needed_measurements", "needs_instructions", "parse_strategy", "random_values", "register_strategy", "rifd",
    "score", "strategies_of", "strategy_names",
]
