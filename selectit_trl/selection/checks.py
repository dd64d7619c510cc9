"""The selection's inputs checked before any model loads: rows that could not be kept, and strategies that cannot
work on the rows given."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from .. import strategies
from ..data.rows import RatingSample
from ..data.text import is_blank
from ..errors import DatasetError, RowFormatError, SelectionConfigError
from . import ranking

logger = logging.getLogger(__name__)


def check_keeps_rows(num_samples: int, config) -> None:
    """Refuse a ratio that would keep nothing: training on zero rows fails deep inside the Trainer."""
    if ranking.num_to_keep(num_samples, config.selection_ratio, config.selection_max_samples) == 0:
        raise SelectionConfigError(
            f"selection_ratio={config.selection_ratio} keeps floor({num_samples} x {config.selection_ratio}) = 0 "
            "rows: raise selection_ratio or set selection_max_samples."
        )


def _without_instructions() -> str:
    """The strategies that work on rows without instructions, for messages."""
    return ", ".join(name for name in strategies.strategy_names() if not strategies.get_strategy(name).needs_instructions)


def check_instructions(samples: Sequence[RatingSample], config) -> None:
    """IFD and reverse IFD compare a response read with and without its instruction: whole texts have none, and
    a dataset with no instruction at all would keep nothing."""
    needing = strategies.needs_instructions(strategies.parse_strategy(config.selection_strategy))
    if needing and any(s.is_text for s in samples):
        usable = _without_instructions()
        raise SelectionConfigError(
            f"selection_strategy uses {' and '.join(needing)}, which need an instruction for each response, and this "
            f"dataset's rows are whole texts (a text column, a formatting_func's output, or token ids with no mask). "
            f"Use one of {usable}, or give rows with instructions (prompt/completion, messages, alpaca)."
        )
    if needing and samples and all(is_blank(s.instruction) for s in samples):
        raise DatasetError(
            f"selection_strategy uses {' and '.join(needing)}, which never keeps a row with an empty instruction, and "
            f"every one of the {len(samples)} rows has one. Fill in the instructions, or use one of {_without_instructions()}."
        )


def empty_responses(samples: Sequence[RatingSample], strict: bool, refuse_all_empty: bool = True) -> list[int]:
    """Indices of the rows whose response is empty or blank: never kept, or an error with `strict`. A dataset whose
    every response is empty is refused (unless `refuse_all_empty` is False): nothing could be kept."""
    empty = [i for i, s in enumerate(samples) if is_blank(s.response)]
    if refuse_all_empty and samples and len(empty) == len(samples):
        raise DatasetError(
            f"Every one of the {len(samples)} rows has an empty response (blank, or invisible characters only), so "
            "no row can be kept or trained on. Check that the response column (output, completion, the assistant "
            "turn) is the one filled in."
        )
    if empty and strict:
        listed = ", ".join(map(str, empty[:10])) + (" ..." if len(empty) > 10 else "")
        raise RowFormatError(
            f"Row {empty[0]}: the response is empty ({len(empty)} such row(s): {listed}). Fill them in or drop them, "
            "or set selection_strict: false to score them and never keep them."
        )
    return empty
