"""The `selectit-trl` command, run as a subprocess on a recipe, as a user runs it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def cli(*args, cwd=REPO):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run(
        [sys.executable, "-m", "selectit_trl.cli", *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def write_recipe(tmp_path, model_path, data_path, **extra):
    lines = {
        "model_name_or_path": model_path,
        "dataset_name": str(data_path),
        "use_peft": True,
        "lora_r": 4,
        "lora_alpha": 8,
        "lora_target_modules": ["q_proj", "v_proj"],
        "output_dir": str(tmp_path / "out"),
        "max_steps": 2,
        "per_device_train_batch_size": 2,
        "max_length": 128,
        "gradient_checkpointing": False,
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": True,
        "disable_tqdm": True,
        "selection_ratio": 0.25,
        "selection_num_prompts": 2,
        **extra,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in lines.items()), encoding="utf-8")
    return path


@pytest.fixture
def data_file(tmp_path, demo_rows):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in demo_rows[:16]), encoding="utf-8")
    return path


def test_train_then_report(tiny_llama, data_file, tmp_path):
    recipe = write_recipe(tmp_path, tiny_llama, data_file)
    done = cli("train", "--config", recipe, "--selection_ratio", "0.5")  # the flag overrides the recipe
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "out"
    assert "SelectIT kept 8 of 16 samples" in done.stdout
    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()
    summary = json.loads((out / "selection" / "summary.json").read_text())
    assert summary["counts"] == {"total": 16, "selected": 8}
    assert summary["selection_config"]["selection_ratio"] == 0.5
    assert (out / "selection" / "report.md").is_file()

    for plot in ("score_distribution", "prompt_agreement", "length"):
        (out / "selection" / f"{plot}.png").unlink()
    report = cli("report", out)
    assert report.returncode == 0, report.stderr[-3000:]
    assert "SelectIT kept 8 of 16 samples; cut-off score" in report.stdout
    assert "Signal probe AUROC" in report.stdout and "(3 plots)" in report.stdout
    for plot in ("score_distribution", "prompt_agreement", "length"):
        assert (out / "selection" / f"{plot}.png").stat().st_size > 10_000
    assert "## Highest-scored rows" in (out / "selection" / "report.md").read_text()
    # the model card says how its data was chosen
    card = (out / "README.md").read_text()
    assert "## Data selection" in card and summary["selected_indices_sha256"] in card


def test_probe_alone_prints_the_auroc_and_stores_its_rows(tiny_llama, data_file, tmp_path):
    recipe = write_recipe(tmp_path, tiny_llama, data_file)
    done = cli("probe", "--config", recipe, "--selection_probe_size", "5")
    assert done.returncode == 0, done.stderr[-3000:]
    probe = json.loads((tmp_path / "out" / "selection" / "probe.json").read_text())
    assert "Signal probe: 5 real pairs against 5 mismatched ones" in done.stdout
    assert f"combined{' ' * (len(tiny_llama) - len('combined'))}  AUROC {probe['auroc']['combined']:.3f}" in done.stdout
    assert not (tmp_path / "out" / "selection" / "summary.json").exists()  # a probe selects nothing

    scored = cli("score", "--config", recipe, "--selection_probe_size", "5")
    assert scored.returncode == 0, scored.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "selection" / "summary.json").read_text())
    assert summary["scored_this_run"] == {tiny_llama: 16 - 5}  # the probed rows came from the store
    assert summary["probe"]["auroc"] == probe["auroc"]


def test_score_writes_the_selection_only(tiny_llama, data_file, tmp_path):
    done = cli("score", "--config", write_recipe(tmp_path, tiny_llama, data_file))
    assert done.returncode == 0, done.stderr[-3000:]
    assert len((tmp_path / "out" / "selection" / "scores.jsonl").read_text().splitlines()) == 16
    assert not (tmp_path / "out" / "adapter_model.safetensors").exists()


@pytest.mark.parametrize("streaming", [False, True])
def test_the_subset_file_holds_the_kept_rows_as_the_user_gave_them(tiny_llama, demo_rows, tmp_path, streaming):
    """Every column (extra ones too), in dataset order, each line byte for byte the source file's line."""
    rows = [{"id": f"row-{i}", **r, "tags": [f"t{i}", "démo"], "meta": {"n": i, "w": i / 7}} for i, r in enumerate(demo_rows[:16])]
    lines = [json.dumps(row, ensure_ascii=False) + "\n" for row in rows]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(lines), encoding="utf-8")
    done = cli("score", "--config", write_recipe(tmp_path, tiny_llama, data, dataset_streaming=streaming))
    assert done.returncode == 0, done.stderr[-3000:]
    scores = [json.loads(line) for line in (tmp_path / "out" / "selection" / "scores.jsonl").read_text().splitlines()]
    kept = [r["index"] for r in scores if r["selected"]]
    assert len(kept) == 4
    subset = (tmp_path / "out" / "selection" / "subset.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    assert subset == [lines[i] for i in kept]


def test_a_csv_file_is_scored_like_the_same_rows_in_json_lines(tiny_llama, data_file, tmp_path):
    """A local file is read by its extension (parquet, csv, ... in tests/test_loading.py); CSV is the one where an
    empty `input` comes back as a missing value, and the scores must still be those of the JSON lines rows."""
    import csv

    rows = [json.loads(line) for line in data_file.read_text(encoding="utf-8").splitlines()]
    csv_file = tmp_path / "data.csv"
    with open(csv_file, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["instruction", "input", "output"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    scores = {}
    for name, path in (("jsonl", data_file), ("csv", csv_file)):
        (tmp_path / name).mkdir()
        done = cli("score", "--config", write_recipe(tmp_path / name, tiny_llama, path))
        assert done.returncode == 0, done.stderr[-3000:]
        scores[name] = [json.loads(line)["score"] for line in
                        (tmp_path / name / "out" / "selection" / "scores.jsonl").read_text().splitlines()]
    assert len(scores["csv"]) == 16 and scores["csv"] == scores["jsonl"]


def test_a_recipe_that_evaluates_takes_the_test_split_as_its_eval_set(tiny_llama, demo_rows, tmp_path):
    """As `trl sft`: with eval_strategy set, dataset_test_split of the same dataset (here a folder whose files
    name the splits) is the eval set, prepared as the training rows and evaluated."""
    from selectit_trl.cli import build_trainer, parse_args

    folder = tmp_path / "data"
    folder.mkdir()
    for split, part in (("train", demo_rows[:16]), ("test", demo_rows[16:21])):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part), encoding="utf-8")
    recipe = write_recipe(tmp_path, tiny_llama, folder, eval_strategy="steps", eval_steps=1, logging_strategy="steps",
                          logging_steps=1, selection_probe=False)
    trainer = build_trainer(*parse_args(["--config", str(recipe)]))
    assert len(trainer.eval_dataset) == 5 and len(trainer.rating_samples) == 16
    trainer.train()
    assert sum("eval_loss" in entry for entry in trainer.state.log_history) == 2


def test_a_local_file_cannot_give_an_eval_split(tiny_llama, data_file, tmp_path):
    evaluating = cli("score", "--config", write_recipe(tmp_path, tiny_llama, data_file, eval_strategy="steps"))
    assert evaluating.returncode == 1 and "Traceback" not in evaluating.stderr
    assert "dataset_name is a local file, which has no 'test' split" in evaluating.stderr


def test_a_streamed_recipe_selects_and_trains_on_the_rows_read_whole(tiny_llama, data_file, tmp_path):
    """dataset_streaming: the rows arrive as an IterableDataset, are rated in one pass, and the kept ones are
    trained on; the scores and the kept rows are those of the same file read whole."""
    selected = {}
    for name, streaming in (("whole", False), ("streamed", True)):
        (tmp_path / name).mkdir()
        done = cli("train", "--config", write_recipe(tmp_path / name, tiny_llama, data_file, dataset_streaming=streaming))
        assert done.returncode == 0, done.stderr[-3000:]
        assert (tmp_path / name / "out" / "adapter_model.safetensors").is_file()
        records = [json.loads(line) for line in (tmp_path / name / "out" / "selection" / "scores.jsonl").read_text().splitlines()]
        selected[name] = [(r["score"], r["selected"]) for r in records]
    assert len(selected["streamed"]) == 16 and selected["streamed"] == selected["whole"]


def test_a_datasets_mixture_is_loaded_by_trl_and_split_the_same_way_every_run(tiny_llama, demo_rows, tmp_path):
    """`datasets:` as `trl sft` reads it (TRL's get_dataset, with fraction and columns); test_split_size gives the
    eval set, split with the run's seed so that a rerun meets the same pool."""
    from selectit_trl.cli import build_trainer, parse_args

    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    first.write_text("".join(json.dumps(r) + "\n" for r in demo_rows[:20]), encoding="utf-8")
    second.write_text("".join(json.dumps(r) + "\n" for r in demo_rows[20:40]), encoding="utf-8")
    columns = ["instruction", "input", "output"]
    mixture = [{"path": "json", "data_files": str(first), "fraction": 0.5, "columns": columns},
               {"path": "json", "data_files": str(second), "fraction": 0.5, "columns": columns}]
    recipe = write_recipe(tmp_path, tiny_llama, "unused", datasets=mixture, test_split_size=0.25,
                          eval_strategy="steps", eval_steps=1, selection_probe=False)
    trainer = build_trainer(*parse_args(["--config", str(recipe)]))
    assert len(trainer.rating_samples) == 30 and len(trainer.eval_dataset) == 10
    rated = {(s.instruction, s.response) for s in trainer.rating_samples}
    pool = {(r["instruction"] + ("\n" + r["input"] if r["input"] else ""), r["output"]) for r in demo_rows[:40]}
    assert rated <= pool
    again = build_trainer(*parse_args(["--config", str(recipe)]))
    assert again.rating_samples == trainer.rating_samples
    trainer.train()
    assert sum("eval_loss" in entry for entry in trainer.state.log_history) == 2


def test_unknown_recipe_key_gets_a_one_line_hint(tiny_llama, data_file, tmp_path):
    done = cli("score", "--config", write_recipe(tmp_path, tiny_llama, data_file, selection_rato=0.3))
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "'selection_rato' (did you mean 'selection_ratio'?)" in done.stderr


def test_a_misspelt_flag_gets_a_one_line_hint_and_no_run(tiny_llama, data_file, tmp_path):
    recipe = write_recipe(tmp_path, tiny_llama, data_file)
    done = cli("score", "--config", recipe, "--selection_ration", "0.3", "--selection_ratio=0.5", "--lora_rr", "8")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "selectit-trl score: error: Unknown option(s): '--selection_ration' (did you mean '--selection_ratio'?), "
        "'--lora_rr' (did you mean '--lora_r'?). `selectit-trl COMMAND --help` lists them.")
    assert not (tmp_path / "out").exists()


def test_help_version_and_report_help_exit_zero():
    from importlib.metadata import version

    done = cli("--version")
    assert done.returncode == 0 and done.stdout.startswith(f"selectit-trl {version('selectit-trl')} (trl {version('trl')}, ")
    for command in ("score", "train", "probe"):
        done = cli(command, "--help")
        assert done.returncode == 0, done.stderr[-2000:]
        lines = done.stdout.splitlines()
        assert lines[0] == f"usage: selectit-trl {command} --config RECIPE.yaml [--key value ...] [--num_processes N]"
        headings = [line for line in lines if line and not line.startswith(" ") and line.endswith(":")]
        assert headings[0].startswith("selection options") and headings[1].startswith("training, model and data options")
        first_options = [line.split()[0] for line in lines[lines.index(headings[0]) + 1:] if line.startswith("  --")][:3]
        assert all(option.startswith("--selection_") for option in first_options)
    assert "Select as `score` does" in cli("train", "--help").stdout
    done = cli("report", "--help")
    assert done.returncode == 0 and done.stdout.startswith("usage: selectit-trl report OUTPUT_DIR\n")


def test_missing_local_dataset_is_a_clear_error(tiny_llama, tmp_path):
    done = cli("score", "--config", write_recipe(tmp_path, tiny_llama, tmp_path / "nope.jsonl"))
    assert done.returncode == 1 and "does not exist" in done.stderr and "Traceback" not in done.stderr


def test_report_without_selection(tmp_path):
    done = cli("report", tmp_path)
    assert done.returncode == 1 and "No finished selection" in done.stderr


def test_quickstart_recipe_parses():
    from selectit_trl.cli import parse_args

    script_args, training_args, model_args, _ = parse_args(["--config", str(REPO / "recipes" / "quickstart.yaml")])
    assert model_args.model_name_or_path is None and model_args.load_in_4bit and model_args.use_peft
    assert training_args.selection_ratio == 0.2 and training_args.selection_num_prompts == 5
    assert script_args.dataset_name is None


def test_resume_with_changed_selection_is_refused_in_one_line(tiny_llama, data_file, tmp_path):
    recipe = write_recipe(tmp_path, tiny_llama, data_file, save_strategy="steps", save_steps=1, max_steps=1)
    assert cli("train", "--config", recipe).returncode == 0
    checkpoint = tmp_path / "out" / "checkpoint-1"
    done = cli("train", "--config", recipe, "--max_steps", "2", "--selection_ratio", "0.5", "--resume_from_checkpoint", checkpoint)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "checkpoint was trained on" in done.stderr
    resumed = cli("train", "--config", recipe, "--max_steps", "2", "--resume_from_checkpoint", checkpoint)
    assert resumed.returncode == 0, resumed.stderr[-3000:]


def test_the_quickstart_recipe_itself_runs(tmp_path):
    """recipes/quickstart.yaml as shipped (embedded model in 4-bit, bundled data), shortened by flags only."""
    done = cli(
        "train", "--config", REPO / "recipes" / "quickstart.yaml",
        "--output_dir", tmp_path / "quick", "--selection_num_prompts", "1", "--max_steps", "1", "--disable_tqdm", "true",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "SelectIT kept 30 of 150 samples" in done.stdout
    out = tmp_path / "quick"
    assert (out / "adapter_model.safetensors").is_file()
    summary = json.loads((out / "selection" / "summary.json").read_text())
    assert summary["models"][0]["id"] == "SmolLM2-135M-Instruct (embedded)"
    assert (out / "selection" / "report.md").read_text().startswith("# Selection report")
    assert (out / "selection" / "score_distribution.png").is_file()
    assert summary["probe"]["pairs"] == 64 and "Signal probe AUROC" in done.stdout
    # The card names the embedded model by its Hub id, and the data (a local file) nowhere in its metadata.
    from huggingface_hub import ModelCard

    card = ModelCard.load(out / "README.md")
    meta = card.data.to_dict()
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and "datasets" not in meta
    assert {"qlora", "lora", "base_model:adapter:HuggingFaceTB/SmolLM2-135M-Instruct"} <= set(meta["tags"])
    assert not [tag for tag in meta["tags"] if "/" in tag and not tag.endswith("HuggingFaceTB/SmolLM2-135M-Instruct")]
    assert "A LoRA adapter (QLoRA: the base model in 4-bit NF4) fine-tuned from [HuggingFaceTB/SmolLM2-135M-Instruct]" in card.text


def test_a_malformed_row_stops_the_run_in_one_line(tiny_llama, demo_rows, tmp_path):
    rows = [dict(r) for r in demo_rows[:6]]
    rows[3]["output"] = None
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    done = cli("score", "--config", write_recipe(tmp_path, tiny_llama, data))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "error: Row 3: output is missing. Fill it in or drop that row." in done.stderr
    assert not (tmp_path / "out" / "selection").exists()
