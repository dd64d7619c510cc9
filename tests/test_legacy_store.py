"""A score store written by an earlier version resumes: every record is found again and nothing is measured twice.

`tests/fixtures/legacy_store/` was written by selectit-trl 0.1.0 (commit d61dfbc), before the measures were
reorganised, with `tests/fixtures/write_legacy_store.py`. It holds all four kinds of record (rating
probabilities, IFD and reverse-IFD losses, a teacher's rewrites) and their batch plans.
"""

import json
import shutil
import sys
from pathlib import Path

import pytest

FIXTURE = Path(__file__).parent / "fixtures" / "legacy_store"
sys.path.insert(0, str(FIXTURE.parent))

import write_legacy_store as legacy  # noqa: E402

from selectit_trl.store.outputs import read_scores, read_summary  # noqa: E402
from selectit_trl.training import model_init  # noqa: E402


def per_model(value):
    """A per-model column's values in model order: the model id is a local path, which differs between machines."""
    return list(value.values()) if isinstance(value, dict) else value


@pytest.mark.parametrize("ratio", [0.5, 0.25])
def test_a_store_from_an_earlier_version_resumes_without_measuring(embedded_dir, tmp_path, monkeypatch, ratio, caplog):
    monkeypatch.setattr(model_init, "model_fingerprint", legacy.fixed_fingerprint)
    shutil.copytree(FIXTURE / "store", tmp_path / "selection" / "store")
    before = sorted(p.read_bytes() for p in (tmp_path / "selection" / "store").rglob("*.jsonl"))
    monkeypatch.setitem(legacy.SETTINGS, "selection_ratio", ratio)

    result = legacy.trainer_for(tmp_path, embedded_dir).select()

    assert result.reused, "every measurement and every rewrite should come from the old store"
    # Each measure judges only its own records: the others' are not "damaged" to it.
    assert not [r for r in caplog.records if "damaged" in r.getMessage()]
    assert read_summary(tmp_path)["scored_this_run"] == {}
    # Nothing was appended: the store's files are byte for byte the fixture's.
    assert sorted(p.read_bytes() for p in (tmp_path / "selection" / "store").rglob("*.jsonl")) == before
    old = [json.loads(line) for line in (FIXTURE / "scores.jsonl").read_text().splitlines()]
    new = read_scores(tmp_path)
    for column in ("index", "score", "strategy_scores", "losses", "version", "recycled", "truncated", "response_chars",
                   "probs", "sentence_scores"):
        assert [per_model(r.get(column)) for r in new] == [per_model(r.get(column)) for r in old], column
    kept = sorted(range(len(old)), key=lambda i: (-old[i]["score"], i))[: int(len(old) * ratio)]
    assert [r["selected"] for r in new] == [i in kept for i in range(len(old))]
