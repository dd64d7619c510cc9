"""`selectit-trl compare`: strategies side by side, each subset training its own adapter, evaluated on held-out rows."""

import json
import math

import pytest
from test_cli import cli, write_recipe

from selectit_trl.errors import SelectionConfigError
from selectit_trl.evaluation.compare import mix_parts, parse_strategies

pytestmark = pytest.mark.slow


CHOICE_TASK = """\
task: tiny_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: multiple_choice
test_split: test
doc_to_text: "{{{{question}}}}\\nAnswer:"
doc_to_choice: ["yes", "no"]
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
"""


def write_choice_task(folder):
    """A four-question lm-evaluation-harness task on a local file, as a user's own task folder holds it."""
    folder.mkdir()
    data = folder / "choice.jsonl"
    questions = ["Is water wet?", "Is fire cold?", "Do birds fly?", "Is ice hot?"]
    data.write_text("".join(json.dumps({"question": q, "label": i % 2}) + "\n" for i, q in enumerate(questions)))
    (folder / "tiny_choice.yaml").write_text(CHOICE_TASK.format(data=data))
    return folder


def test_compare_trains_each_subset_evaluates_it_and_resumes(tiny_llama, demo_rows, tmp_path):
    pool, held_out = tmp_path / "pool.jsonl", tmp_path / "held_out.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in demo_rows[:24]), encoding="utf-8")
    held_out.write_text("".join(json.dumps(r) + "\n" for r in demo_rows[24:32]), encoding="utf-8")
    recipe = write_recipe(tmp_path, tiny_llama, pool, selection_ratio=0.25, selection_probe=False)
    tasks = write_choice_task(tmp_path / "tasks")
    command = ["compare", "--config", recipe, "--compare_strategies", "ifd,random,ifd+random,all",
               "--eval_dataset_name", held_out, "--lm_eval_tasks", "tiny_choice", "--lm_eval_include_path", tasks]
    done = cli(*command)
    assert done.returncode == 0, done.stderr[-3000:]
    folder = tmp_path / "out" / "compare"
    results = json.loads((folder / "results.json").read_text())
    assert sorted(results["runs"]) == ["all/seed0", "ifd+random/seed0", "ifd/seed0", "random/seed0"]
    runs = results["runs"]
    assert runs["all/seed0"]["rows_kept"] == 24 and runs["random/seed0"]["rows_kept"] == 6
    assert len({r["subset_sha256"] for r in runs.values()}) == 4  # each adapter trained on its own subset
    for key, run in runs.items():
        assert math.isfinite(run["eval_loss"]) and math.isfinite(run["train_loss"]) and run["steps"] == 2
        assert (folder / key / "adapter_model.safetensors").is_file()
        summary = json.loads((folder / key.split("/")[0] / "selection" / "summary.json").read_text())
        assert summary["selected_indices_sha256"] == run["subset_sha256"]
        assert list(run["lm_eval"]) == ["tiny_choice"]
        accuracy = run["lm_eval"]["tiny_choice"]["acc,none"]
        assert accuracy * 4 == round(accuracy * 4) and 0 <= accuracy <= 1  # right answers out of four
    # The mix ranks by both parts: its summary names each with half the weight.
    mix = json.loads((folder / "ifd+random" / "selection" / "summary.json").read_text())
    assert mix["strategy"] == {"ifd": 0.5, "random": 0.5}
    assert set(results["strategies"]) == {"ifd", "random", "ifd+random", "all"}
    assert set(results["strategies"]["all"]) >= {"eval_loss", "train_loss", "tiny_choice acc,none"}
    report = (folder / "report.md").read_text()
    assert "| all | 24 |" in report and (folder / "eval_loss.png").is_file()
    assert "## lm-evaluation-harness" in report and "tiny_choice acc,none" in report
    # A rerun trains nothing again: the results and the adapters stay as they were.
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("adapter_model.safetensors")}
    again = cli(*command)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((folder / "results.json").read_text())["runs"] == runs
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("adapter_model.safetensors")} == before
    # Runs made under other settings would not compare with these: a changed recipe is refused, nothing touched.
    changed = cli(*command, "--max_steps", "3")
    assert changed.returncode != 0
    assert "holds runs made with other settings (max_steps 2 -> 3)" in changed.stderr
    assert json.loads((folder / "results.json").read_text())["runs"] == runs


def test_an_unknown_lm_eval_task_is_refused_before_anything_trains(tiny_llama, demo_rows, tmp_path):
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in demo_rows[:8]), encoding="utf-8")
    recipe = write_recipe(tmp_path, tiny_llama, pool, selection_probe=False)
    tasks = write_choice_task(tmp_path / "tasks")
    done = cli("compare", "--config", recipe, "--eval_dataset_name", pool, "--lm_eval_tasks", "tiny_choise",
               "--lm_eval_include_path", tasks)
    assert done.returncode != 0
    assert "no task 'tiny_choise'" in done.stderr and "Did you mean 'tiny_choice'?" in done.stderr
    assert not (tmp_path / "out" / "compare").exists()


def test_parse_strategies_takes_even_mixes_joined_by_plus():
    assert parse_strategies("selectit, ifd+selectit ,all") == ["selectit", "ifd+selectit", "all"]
    assert mix_parts("ifd+selectit") == ["ifd", "selectit"]
    with pytest.raises(SelectionConfigError, match="even mix"):
        parse_strategies("selectit+nope")
    with pytest.raises(SelectionConfigError):
        parse_strategies("ifd,ifd")
