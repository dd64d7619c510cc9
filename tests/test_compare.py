"""`selectit-trl compare`: strategies side by side, each subset training its own adapter, evaluated on held-out rows."""

import json
import math

import pytest
from test_cli import cli, write_recipe

pytestmark = pytest.mark.slow


def test_compare_trains_each_subset_evaluates_it_and_resumes(tiny_llama, demo_rows, tmp_path):
    pool, held_out = tmp_path / "pool.jsonl", tmp_path / "held_out.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in demo_rows[:24]), encoding="utf-8")
    held_out.write_text("".join(json.dumps(r) + "\n" for r in demo_rows[24:32]), encoding="utf-8")
    recipe = write_recipe(tmp_path, tiny_llama, pool, selection_ratio=0.25, selection_probe=False)
    command = ["compare", "--config", recipe, "--compare_strategies", "ifd,random,all",
               "--eval_dataset_name", held_out]
    done = cli(*command)
    assert done.returncode == 0, done.stderr[-3000:]
    folder = tmp_path / "out" / "compare"
    results = json.loads((folder / "results.json").read_text())
    assert sorted(results["runs"]) == ["all/seed0", "ifd/seed0", "random/seed0"]
    runs = results["runs"]
    assert runs["all/seed0"]["rows_kept"] == 24 and runs["random/seed0"]["rows_kept"] == 6
    assert len({r["subset_sha256"] for r in runs.values()}) == 3  # each adapter trained on its own subset
    for key, run in runs.items():
        assert math.isfinite(run["eval_loss"]) and math.isfinite(run["train_loss"]) and run["steps"] == 2
        assert (folder / key / "adapter_model.safetensors").is_file()
        summary = json.loads((folder / key.split("/")[0] / "selection" / "summary.json").read_text())
        assert summary["selected_indices_sha256"] == run["subset_sha256"]
    assert set(results["strategies"]) == {"ifd", "random", "all"}
    report = (folder / "report.md").read_text()
    assert "| all | 24 |" in report and (folder / "eval_loss.png").is_file()
    # A rerun trains nothing again: the results and the adapters stay as they were.
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("adapter_model.safetensors")}
    again = cli(*command)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((folder / "results.json").read_text())["runs"] == runs
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("adapter_model.safetensors")} == before
