"""`selection_ifd_layout: released` gives the released scripts' own numbers, row for row.

`tests/fixtures/released_losses.json` holds the per-row losses that Cherry LLM's IFD scripts and
Reflection-Tuning's selection script gave on 60 Alpaca rows with the embedded model in fp32 (figures, not their
code; docs/strategies.md says how they were run). The selection here runs through the trainer, as a user runs it.
"""

import json
import math
from pathlib import Path

import pytest
from conftest import cpu_config
from datasets import Dataset

from selectit_trl import SelectiveSFTTrainer
from selectit_trl.store.outputs import read_scores

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "released_losses.json").read_text())


@pytest.fixture(scope="module")
def released_run(embedded_dir, shared_data_dir, tmp_path_factory):
    rows = json.loads((shared_data_dir / FIXTURE["data_file"]).read_text(encoding="utf-8"))
    dataset = Dataset.from_list([rows[i] for i in FIXTURE["rows"]])
    out = tmp_path_factory.mktemp("released")
    args = cpu_config(out, selection_strategy="ifd:0.5,rifd:0.5", selection_ifd_layout="released",
                      selection_ratio=0.25, model_init_kwargs={"dtype": "float32"})
    SelectiveSFTTrainer(model=embedded_dir, args=args, train_dataset=dataset).select()
    return dict(zip(FIXTURE["rows"], read_scores(out)))


@pytest.mark.parametrize("kind", ["ifd", "rifd"])
def test_released_layout_reproduces_the_released_scripts_losses(released_run, kind):
    expected = FIXTURE[kind]
    compared = 0
    for row, record in released_run.items():
        if row in expected["left_out"]:
            continue
        want = expected["losses"][str(row)]
        got = record["losses"][kind]
        assert all(abs(g - w) <= 1e-4 for g, w in zip(got, want)), (row, got, want)
        compared += 1
    assert compared == len(expected["losses"]) >= 40


def test_rows_the_released_scripts_leave_out_are_never_kept(released_run):
    left_out = set(FIXTURE["ifd"]["left_out"]) | set(FIXTURE["rifd"]["left_out"])
    assert len(left_out) == 5  # four rows over Cherry's 512 tokens, and one whose response would not fit its prompt
    for row, record in released_run.items():
        assert record["truncated"] == (row in left_out)
        if row in left_out:
            assert not record["selected"] and record["score"] == 0.0
            assert not math.isfinite(record["strategy_scores"]["ifd"])
    assert sum(r["selected"] for r in released_run.values()) == 15
