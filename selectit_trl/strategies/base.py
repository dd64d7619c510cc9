"""The strategy API: what a selection strategy is, what it may read, and how it is found by name.

A strategy turns per-row measurements into one float per row; selection keeps the rows with the highest values
first. It declares the measurements it needs (`needs`), which the selection takes from the score store or has
the models compute, and it may bar rows that must never be kept. Strategies are found by name in a registry
that `register_strategy` fills, and that pip-installed packages extend through the entry-point group
`selectit_trl.strategies` (docs/strategies.md, "Your own strategy").
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, ClassVar

import numpy as np

from ..errors import SelectionConfigError

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "selectit_trl.strategies"
# The measurements selectit-trl computes, in the order they are measured and recorded: SelectIT's rating
# probabilities (every scoring model), and the two-context losses of the model being tuned that IFD and reverse
# IFD are made of (engine/targets.build_target_requests says which contexts).
MEASUREMENTS = ("ratings", "ifd", "rifd")


@dataclass(frozen=True)
class Measurements:
    """What a strategy's `values` may read, each row in the order of the samples it is given.

    Attributes:
        ratings: model id -> rating probabilities [N, K, S] (K prompts, ratings 1..S); only when a strategy needs
            "ratings".
        losses: "ifd" -> [N, 2] mean token losses of the response after (instruction, nothing); "rifd" -> [N, 2]
            of the instruction after (response, nothing). The model being tuned; only the kinds needed.
        tokenizer: the tokenizer of the model being tuned.
        model_weights: model id -> its share of a multi-model score (SelectIT's model level).
        config: the run's `SelectiveSFTConfig` (seed, `selection_*` settings).
        left_out: "ifd" / "rifd" -> [N] bool: with `selection_ifd_layout: released`, the rows the released scripts
            leave out (over their token limits), which IFD and r-IFD never keep.
    """

    ratings: dict[str, np.ndarray] | None = None
    losses: dict[str, np.ndarray] = field(default_factory=dict)
    tokenizer: Any = None
    model_weights: dict[str, float] = field(default_factory=dict)
    config: Any = None
    left_out: dict[str, np.ndarray] = field(default_factory=dict)


class Strategy:
    """Base class of a selection strategy. Subclass it, decorate the subclass with `@register_strategy("name")`,
    and the name works wherever `selection_strategy` does: alone, in a weighted mix, in the probe and the report.

    Class attributes:
        needs: the measurements `values` reads, from `MEASUREMENTS`.
        needs_instructions: rows with an empty instruction (whole texts) are never kept, and a dataset of whole
            texts is refused.
    """

    name: ClassVar[str] = ""
    needs: ClassVar[tuple[str, ...]] = ()
    needs_instructions: ClassVar[bool] = False

    def __init__(self, config=None):
        self.config = config

    def values(self, samples: Sequence, measurements: Measurements) -> np.ndarray:
        """One float per sample, as the report shows it. Each sample has `.instruction` and `.response` strings;
        `.instruction` is "" for a row rated as a whole text."""
        raise NotImplementedError

    def ranking(self, values: np.ndarray) -> np.ndarray:
        """What rows are ranked by, higher kept first: the values themselves unless a strategy says otherwise."""
        return values

    def barred(self, values: np.ndarray) -> np.ndarray | None:
        """A mask of the rows never to keep, whatever their rank; None when the strategy bars none."""
        return None


_REGISTRY: dict[str, type[Strategy]] = {}
_entry_points_loaded = False


def register_strategy(name: str):
    """Class decorator: make `name` a `selection_strategy`."""

    def register(cls: type[Strategy]) -> type[Strategy]:
        if not (isinstance(cls, type) and issubclass(cls, Strategy)):
            raise TypeError(f"register_strategy({name!r}) decorates a subclass of Strategy, not {cls!r}.")
        if not name or not name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"A strategy name is letters, digits, '_' and '-', got {name!r}.")
        unknown = [kind for kind in cls.needs if kind not in MEASUREMENTS]
        if unknown:
            raise ValueError(f"Strategy {name!r} needs {unknown}; selectit-trl measures {', '.join(MEASUREMENTS)}.")
        if _REGISTRY.get(name, cls) is not cls:
            raise ValueError(f"A strategy named {name!r} is already registered ({_REGISTRY[name].__module__}).")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return register


def _load_entry_points() -> None:
    """Import the strategies that installed packages declare, once. A plugin that fails to import is skipped with
    a warning: it must not stop runs that do not use it."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = point.load()
        except Exception as error:  # a third party's import error, whatever its kind
            logger.warning("The strategy %r from %s could not be loaded (%s: %s); it is not available.",
                           point.name, point.value, type(error).__name__, error)
            continue
        if isinstance(loaded, type) and issubclass(loaded, Strategy) and loaded not in _REGISTRY.values():
            register_strategy(point.name)(loaded)


def strategy_names() -> tuple[str, ...]:
    """Every registered strategy, built-in ones first."""
    _load_entry_points()
    return tuple(_REGISTRY)


def get_strategy(name: str) -> type[Strategy]:
    _load_entry_points()
    if name not in _REGISTRY:
        raise SelectionConfigError(
            f"Unknown selection_strategy {name!r}: use {', '.join(_REGISTRY)} or a weighted mix of them. A strategy "
            f"of your own registers with @register_strategy, or through the entry-point group {ENTRY_POINT_GROUP!r}."
        )
    return _REGISTRY[name]
