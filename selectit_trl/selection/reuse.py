"""`selection_from`: train on the rows an earlier run kept, on the same dataset, with no scoring.

The earlier run's `summary.json` says how many rows it scored and their content hash (`scoring_key.dataset_sha256`,
over the rows as rated), and its `scores.jsonl` which it kept. A dataset that differs in either is refused, so a
subset never lands on other rows. This run's selection files are the earlier run's, with `selection_from` naming
it, so that the report and the model card say whose selection it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..context import RunContext
from ..data.rows import RatingSample
from ..errors import SelectionFilesError, StoredSelectionMismatch
from ..store import outputs
from ..store.summary import Summary
from .pipeline import SelectionResult, dataset_hash, indices_hash


def read_source(source_dir) -> tuple[Summary, list[dict]]:
    """The earlier run's summary and score records; refuses a folder without a whole selection."""
    raw = outputs.read_summary(source_dir)
    if raw is None:
        raise SelectionFilesError(f"selection_from: {source_dir} holds no finished selection (no readable "
                                  "selection/summary.json). Name the output_dir of a run that scored.")
    return Summary.from_json(raw, source=f"{source_dir}/selection/summary.json"), outputs.read_scores(source_dir)


def check_same_dataset(source_dir, summary: Summary, samples: Sequence[RatingSample]) -> None:
    """Refuse a dataset other than the one the earlier run scored: another row count, or other content."""
    scored = summary.counts["total"]
    if scored != len(samples):
        raise StoredSelectionMismatch(
            f"selection_from: {source_dir} selected from {scored:,} rows, and this dataset has {len(samples):,}. "
            "Train on the dataset it scored, or score this one.")
    expected = summary.scoring_key.get("dataset_sha256")
    if expected is None:
        raise SelectionFilesError(f"selection_from: {source_dir}'s summary.json does not record its dataset's hash "
                                  "(scoring_key.dataset_sha256), so this dataset cannot be checked against it.")
    if dataset_hash(samples) != expected:
        raise StoredSelectionMismatch(
            f"selection_from: this dataset has the same {len(samples):,} rows in number as the one {source_dir} scored, "
            "but not the same rows (their content hash differs): edited, reordered or another split. Train on the "
            "dataset it scored, or score this one.")


def reuse_selection(source_dir, samples: Sequence[RatingSample], context: RunContext,
                    expected_indices_sha256: str | None = None) -> SelectionResult:
    """The earlier run's selection for these samples, written as this run's selection files."""
    summary, records = read_source(source_dir)
    check_same_dataset(source_dir, summary, samples)
    selected = [r["index"] for r in records if r.get("selected")]
    if indices_hash(selected) != summary.selected_indices_sha256:
        raise SelectionFilesError(f"selection_from: {source_dir}'s scores.jsonl does not hold the rows its summary.json "
                                  f"says were kept: {outputs.REBUILD_SCORES}")
    if expected_indices_sha256 is not None and summary.selected_indices_sha256 != expected_indices_sha256:
        raise StoredSelectionMismatch(
            "The checkpoint being resumed was trained on another subset than the one selection_from names. Resume "
            "with the selection_from it started with, or start a fresh output_dir.")
    summary.selection_from = str(Path(source_dir).resolve())
    summary.scored_this_run, summary.scoring_seconds, summary.scoring_seconds_by_model = {}, 0.0, {}
    path = (outputs.write_selection(context.output_dir, records, summary.to_json()) if context.is_main
            else outputs.selection_dir(context.output_dir))
    recycled = {r["index"]: RatingSample(r["recycled"]["instruction"], r["recycled"]["response"])
                for r in records if r.get("selected") and r.get("recycled")}
    scores = np.array([r["score"] for r in records], dtype=np.float64)
    # The selection order of a ranked run is its score order; ties keep the dataset's order.
    order = sorted(selected, key=lambda i: (-scores[i], i))
    return SelectionResult(order, scores, summary, path, reused=True, recycled=recycled)
