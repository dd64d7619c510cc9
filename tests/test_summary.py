"""`Summary`, the typed `summary.json`: it writes the file's keys in their order, reads the files of every version
so far, and refuses a newer format rather than misread it."""

import pytest

from selectit_trl.errors import SelectionFilesError
from selectit_trl.store.summary import FORMAT_VERSION, Summary

# summary.json as this version writes it, abridged to one model; the key order is the contract's.
WRITTEN = {
    "format_version": 1,
    "selection_config": {"selection_ratio": 0.2, "selection_score_max": 5},
    "strategy": {"selectit": 0.5, "ifd": 0.5},
    "counts": {"total": 10, "selected": 2},
    "dataset_format": "alpaca",
    "empty_responses": {"count": 1, "indices": [3]},
    "barred": {"ifd": 1, "empty_instruction": 0},
    "truncated": {"count": 0, "indices": []},
    "duplicates": 0,
    "models": [{"id": "m", "num_parameters": 10, "weight": 1.0}],
    "prompts": ["How good is it?"],
    "rating_preamble": "Rate it from 1 to 5.",
    "scoring_key": {"dataset_sha256": "d", "num_samples": 10, "prompts_sha256": "p", "models": []},
    "scored_this_run": {"m": 10},
    "scoring_seconds": 1.5,
    "scoring_seconds_by_model": {"m": 1.5},
    "score_quantiles": {"0.0": 0.1, "0.5": 0.2, "1.0": 0.3},
    "selected_indices_sha256": "abc",
    "probe": None,
    "examples": {"top": [], "bottom": []},
    "clusters": 4,
}


def test_a_summary_round_trips_key_for_key_in_order():
    summary = Summary.from_json(WRITTEN)
    assert summary.label == "selectit 0.50 + ifd 0.50" and summary.rating_models == ["m"] and summary.clusters == 4
    assert list(summary.to_json().items()) == list(WRITTEN.items())
    assert "recycling" not in summary.to_json()  # optional keys only when set


def test_a_summary_from_before_strategies_reads_as_selectits():
    old = {k: v for k, v in WRITTEN.items() if k not in ("strategy", "barred", "truncated", "format_version",
                                                        "rating_preamble", "scoring_seconds_by_model", "clusters")}
    summary = Summary.from_json(old)
    assert summary.strategy == {"selectit": 1.0} and summary.label == "SelectIT"
    assert summary.truncated == {"count": 0, "indices": []} and summary.barred == {} and summary.format_version == 1


def test_a_newer_or_damaged_summary_is_refused_with_what_to_do():
    with pytest.raises(SelectionFilesError, match=rf"format version 2, written by a newer selectit-trl than this one "
                                                  rf"\(which reads up to {FORMAT_VERSION}\): upgrade selectit-trl"):
        Summary.from_json({**WRITTEN, "format_version": FORMAT_VERSION + 1})
    with pytest.raises(SelectionFilesError, match=r"lacks \['counts'\]: it was edited or cut short"):
        Summary.from_json({k: v for k, v in WRITTEN.items() if k != "counts"})
