"""The signal probe run under a plan: its clean and mismatched pairs measured like any rows, their AUROC, and
`probe.json`. The pure parts (which rows, the pairs, the AUROC) are in `probe.py`."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from ..context import RunContext
from ..data.rows import RatingSample
from ..errors import SelectionConfigError, StoredSelectionMismatch
from ..measures.base import Rater
from ..measures.measurer import Measurer
from ..store import outputs
from . import probe
from .checks import empty_responses
from .plan import Evaluation, Plan

logger = logging.getLogger(__name__)


def measure_probe(plan: Plan, measurer: Measurer, samples: Sequence[RatingSample], empty: Sequence[int], write: bool,
           required: bool) -> tuple[dict | None, list[int], Evaluation | None]:
    """Measure the probe's clean and mismatched pairs, compute their AUROC, and say so.

    The AUROC is of the strategy's ranking, with the rows it would never keep (IFD > 1, say) ranked last; with
    SelectIT it is also given per model, and with several strategies per strategy. Returns what `summary.json`
    records of the probe (None when it could not run), the rows it measured, and its evaluation (clean rows,
    then mismatched pairs); `probe.json` gets the per-pair scores too. With `required`, a probe that cannot run
    is an error.
    """
    config = plan.config
    if any(s.is_text for s in samples):
        # Mismatched pairs join one row's instruction to another's response; whole texts have no instruction.
        message = ("The signal probe pairs instructions with other rows' responses, and this dataset's rows are whole "
                   "texts with no instruction.")
        if required:
            raise SelectionConfigError(message + " Set selection_dataset_format if the rows do hold instruction pairs.")
        logger.info("%s Skipping it.", message)
        return None, [], None
    eligible = np.ones(len(samples), dtype=bool)
    eligible[list(empty)] = False
    rows = probe.probe_rows(samples, eligible, config.selection_probe_size, seed=config.seed)
    if len(rows) < 2:
        message = (f"The signal probe needs at least two rows with different instructions and different, non-empty "
                   f"responses, and this dataset has {len(rows)}: its rows repeat each other, or their responses are "
                   "empty.")
        if required:
            raise SelectionConfigError(message)
        logger.warning("%s Skipping it (summary.json records probe: null).", message)
        return None, [], None
    if len(rows) < probe.MIN_PAIRS:
        logger.warning(
            "The signal probe has only %d pair(s) of each kind, fewer than %d: its AUROC is uncertain by about +/-%.2f "
            "(95%%), so read it as a rough sign only. Raise selection_probe_size, or give it more distinct rows.",
            len(rows), probe.MIN_PAIRS, probe.auroc_uncertainty(len(rows)),
        )
    pairs = [samples[i] for i in rows] + probe.mismatched_pairs(samples, rows)
    labels = np.array([1] * len(rows) + [0] * len(rows))
    try:
        evaluation = plan.evaluate(measurer, pairs, label="Probe: ", row_word="probe pair")
    except StoredSelectionMismatch:
        if required:
            raise
        logger.info("The signal probe's pairs are not all in the store, and this run may not measure: skipping it.")
        return None, [], None
    keepable = plan.keepable(pairs)
    ranked = plan.rank(evaluation.values, keepable)
    combined = probe.bottom_barred(ranked.ranking, ranked.eligible)
    aurocs = {}
    if evaluation.selectit:
        aurocs.update({m: probe.auroc(scores, labels) for m, scores in evaluation.selectit[1].items()})
    aurocs["combined"] = probe.auroc(combined, labels)
    by_strategy = {}
    if len(plan.weights) > 1:
        for name in plan.weights:
            alone = plan.rank(evaluation.values, keepable, only=name)
            by_strategy[name] = probe.auroc(probe.bottom_barred(alone.ranking, alone.eligible), labels)
    threshold = config.selection_probe_threshold
    result = {
        "pairs": len(rows),
        "auroc": aurocs,
        **({"auroc_by_strategy": by_strategy} if by_strategy else {}),
        "threshold": threshold,
        "below_threshold": aurocs["combined"] < threshold,
        "scoring_seconds": sum(sum(r.seconds.values()) for r in evaluation.measured.values()),
    }
    per_pair = {
        "rows": rows,
        "partners": rows[1:] + rows[:1],
        "labels": labels.tolist(),
        "scores": combined.tolist(),
        "strategy_scores": {name: values.tolist() for name, values in evaluation.values.items()},
        "sentence_scores": {m: s.tolist() for m, s in (evaluation.selectit[1].items() if evaluation.selectit else [])},
    }
    if write:
        outputs.write_json(outputs.selection_dir(measurer.output_dir) / probe.PROBE_FILE, {**result, **per_pair})
    listed = ", ".join(f"{m} {value:.3f}" for m, value in {**aurocs, **by_strategy}.items() if m != "combined")
    detail = f"; {listed}" if listed else ""
    if result["below_threshold"]:
        logger.warning(
            "Signal probe: AUROC %.3f on %d real pairs against %d mismatched ones (0.5 is chance%s). These scores "
            "barely tell this dataset's good pairs from bad ones, so the selection will be close to random. A larger "
            "model as a peer (selection_peer_models), or selection_strategy: ifd, usually carries far more signal.",
            aurocs["combined"], len(rows), len(rows), detail,
        )
    else:
        logger.info("Signal probe: AUROC %.3f on %d real pairs against %d mismatched ones (0.5 is chance%s).",
                    aurocs["combined"], len(rows), len(rows), detail)
    return result, rows, evaluation


def run_probe(samples: Sequence[RatingSample], raters: Sequence[Rater], config, context: RunContext) -> dict:
    """The signal probe on its own (`selectit-trl probe`): measure `config.selection_probe_size` clean rows and
    as many mismatched pairs, and return the AUROC of clean against mismatched.

    Its measurements go to the store, so a selection run afterwards does not compute the clean rows again. It
    never sets the store aside: `selection_overwrite` applies to selections only. Without the context's
    `allow_scoring` everything must come from the store (`StoredSelectionMismatch` otherwise).
    """
    empty = empty_responses(samples, strict=False)
    plan = Plan(raters, config)
    return measure_probe(plan, Measurer(raters, config, context), samples, empty, context.is_main, required=True)[0]
