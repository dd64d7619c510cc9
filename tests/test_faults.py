"""Mistakes and faults a user meets, each through the real entry point: the CLI in a subprocess, or the Python API.

Each ends in one of two ways: one line that names the problem and the fix (non-zero exit, no traceback), or the
right result with a warning. Faults also leave the stored rows whole, and a rerun finishes them.
"""

import json
import logging
import os
import stat
import subprocess
from pathlib import Path

import pytest
from conftest import cpu_config
from datasets import Dataset, DatasetDict
from test_cli import cli, write_recipe
from test_trainer import make_trainer
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

from selectit_trl import SelectiveSFTTrainer
from selectit_trl.errors import DatasetError, OutputDirError, SelectionConfigError
from selectit_trl.store.ledger import read_store, store_dir
from selectit_trl.store.outputs import read_summary, selection_dir

pytestmark = pytest.mark.slow


def one_line_error(done: subprocess.CompletedProcess, *fragments: str) -> str:
    """The run failed with status 1, printed exactly one error line holding every fragment, and no traceback."""
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("selectit-trl") and ": error: " in line]
    assert len(errors) == 1, done.stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0]
    return errors[0]


def refuse_loading(monkeypatch):
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda *a, **k: pytest.fail("the model was loaded"))


@pytest.fixture
def data_file(tmp_path, demo_rows):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in demo_rows[:16]), encoding="utf-8")
    return path


@pytest.fixture
def tmpfs(tmp_path):
    """`tmpfs(name, options)` mounts a real tmpfs under tmp_path (unmounted afterwards); skips where mounting is
    not allowed (no root, or a container without the capability)."""
    mounted = []

    def mount(name: str, options: str) -> Path:
        point = tmp_path / name
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], check=False)


# ---- data files ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "name, content, reason",
    [
        ("bad.jsonl", b'{"instruction": "a", "output": "b"}\n{"instruction": "a", "output"\n',
         "cannot be read as JSON or JSON lines: JSON parse error: Missing a colon after a name of object member"),
        ("ragged.csv", b'instruction,input,output\n"a","","b"\n"c","d","e","f"\n',
         "cannot be read as CSV: Error tokenizing data. C error: Expected 3 fields in line 3, saw 4. Fix the file"),
        ("broken.parquet", b"not parquet at all", "cannot be read as Parquet: Parquet magic bytes not found in footer"),
        ("empty.jsonl", b"", "is an empty file: the training dataset has no rows."),
        ("nothing.json", b"[]", "holds no rows: the training dataset is empty."),
        ("header-only.csv", b"instruction,output\n", "holds no rows: the training dataset is empty."),
    ],
    ids=["json-syntax", "csv-ragged", "parquet-garbage", "empty-file", "empty-array", "csv-header-only"],
)
def test_a_data_file_that_cannot_be_read_is_one_line_before_anything_is_written(tiny_llama, tmp_path, name, content,
                                                                                reason):
    path = tmp_path / name
    path.write_bytes(content)
    done = cli("score", "--config", write_recipe(tmp_path, tiny_llama, path))
    one_line_error(done, f"dataset_name {str(path)!r}", reason)
    assert not (tmp_path / "out").exists()


def test_rows_in_two_formats_are_named_as_such(tiny_llama, demo_rows, tmp_path):
    alpaca = [{k: r[k] for k in ("instruction", "input", "output")} for r in demo_rows[:8]]
    chats = [{"messages": [{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": r["output"]}]}
             for r in demo_rows[8:12]]
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in alpaca + chats), encoding="utf-8")
    done = cli("score", "--config", write_recipe(tmp_path, tiny_llama, path))
    one_line_error(done, "Row 8 is a messages row (its filled columns: ['messages']), but the dataset was read as "
                         "alpaca: its rows are in two formats. Convert them to one format")


def test_a_dataset_dict_is_refused_with_the_split_to_pass(tiny_llama, demo_dataset, tmp_path, monkeypatch):
    refuse_loading(monkeypatch)
    splits = DatasetDict({"train": demo_dataset(8), "test": demo_dataset(4)})
    with pytest.raises(DatasetError) as error:
        make_trainer(tiny_llama, splits, tmp_path)
    assert str(error.value) == ("train_dataset is a DatasetDict with the splits ['train', 'test']: pass one split, "
                                "such as train_dataset['train'].")


# ---- settings ------------------------------------------------------------------------------------------------------

def test_a_negative_model_weight_is_one_line_before_the_model_loads(tiny_llama, data_file, tmp_path):
    done = cli("score", "--config", write_recipe(tmp_path, tiny_llama, data_file, selection_model_weights=[-1.0]))
    one_line_error(done, "selection_model_weights must be finite and >= 0, not all zero, got [-1.0]")
    assert "Loading weights" not in done.stderr


def test_prompts_that_never_name_the_scale_are_warned_about(tiny_llama, demo_dataset, tmp_path, caplog):
    prompts = ["Rate the response.", "Rate it from 1 to {score_max}."]
    with caplog.at_level(logging.WARNING, logger="selectit_trl.training.trainer"):
        make_trainer(tiny_llama, demo_dataset(8), tmp_path, selection_prompts=prompts, selection_num_prompts=2)
    assert ("1 of the 2 rating prompts never name the scale's top (5), for example 'Rate the response.'"
            in caplog.text)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="selectit_trl.training.trainer"):
        make_trainer(tiny_llama, demo_dataset(8), tmp_path / "default")
    assert "never name the scale" not in caplog.text


# ---- quantized models ----------------------------------------------------------------------------------------------

def test_scoring_alone_in_4bit_needs_no_lora_and_its_scores_serve_a_lora_run(tiny_llama, data_file, tmp_path):
    done = cli("score", "--config", write_recipe(tmp_path, tiny_llama, data_file, load_in_4bit=True, use_peft=False,
                                                 selection_probe=False))
    assert done.returncode == 0, done.stderr[-3000:]
    scores = selection_dir(tmp_path / "out") / "scores.jsonl"
    first = scores.read_bytes()
    with_lora = write_recipe(tmp_path, tiny_llama, data_file, load_in_4bit=True, selection_probe=False)
    again = cli("score", "--config", with_lora)
    assert again.returncode == 0, again.stderr[-3000:]
    assert read_summary(tmp_path / "out")["scored_this_run"] == {}  # the adapters are off while scoring
    assert scores.read_bytes() == first
    bare = write_recipe(tmp_path, tiny_llama, data_file, load_in_4bit=True, use_peft=False)  # one recipe file each time
    refused = cli("train", "--config", bare)
    one_line_error(refused, "a quantized model trains only through LoRA adapters: set use_peft: true")


def test_training_a_quantized_model_without_lora_is_refused_before_loading(tiny_llama, demo_dataset, tmp_path,
                                                                           monkeypatch):
    refuse_loading(monkeypatch)
    with pytest.raises(SelectionConfigError, match="a quantized model trains only through LoRA adapters"):
        SelectiveSFTTrainer(model=tiny_llama, args=cpu_config(tmp_path), train_dataset=demo_dataset(8),
                            quantization_config=BitsAndBytesConfig(load_in_4bit=True))


# ---- the disk ------------------------------------------------------------------------------------------------------

def test_a_read_only_output_dir_is_refused_before_the_model_loads(tiny_llama, demo_dataset, data_file, tmp_path,
                                                                   tmpfs, monkeypatch):
    read_only = tmpfs("ro", "ro,size=1m")
    done = cli("score", "--config", write_recipe(tmp_path, tiny_llama, data_file, output_dir=str(read_only / "run")))
    one_line_error(done, f"output_dir {str(read_only / 'run')!r} cannot be written (Read-only file system). Choose "
                         "another output_dir")
    refuse_loading(monkeypatch)
    with pytest.raises(OutputDirError, match="cannot be written"):
        make_trainer(tiny_llama, demo_dataset(8), read_only)


def test_a_full_disk_stops_scoring_with_what_is_stored_and_a_rerun_finishes_byte_identical(tiny_llama, demo_rows,
                                                                                          tmp_path, tmpfs):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in demo_rows[:48]), encoding="utf-8")
    settings = dict(selection_probe=False, selection_max_batch_tokens=256)
    whole = tmp_path / "whole"
    done = cli("score", "--config", write_recipe(tmp_path, tiny_llama, data, output_dir=str(whole), **settings))
    assert done.returncode == 0, done.stderr[-3000:]

    # 16 KiB: the batch plan and a third or so of the records fit, then the disk is full.
    disk = tmpfs("small", "size=16k")
    out = disk / "run"
    recipe = write_recipe(tmp_path, tiny_llama, data, output_dir=str(out), **settings)
    full = cli("score", "--config", recipe)
    line = one_line_error(full, "(No space left on device)", "sample(s) of this run are safely stored in",
                          "no line is left torn", "run the same command again: it resumes from them.")
    saved = int(line.split(" sample(s) of this run are safely stored")[0].rsplit(" ", 1)[1])
    store_file = store_dir(out) / "rank0.jsonl"
    assert store_file.read_bytes().endswith(b"\n")  # no torn line
    stored = read_store(out)
    assert 0 < len(stored) == saved < 48

    subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
    resumed = cli("score", "--config", recipe)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert sum(read_summary(out)["scored_this_run"].values()) == 48 - saved
    assert (selection_dir(out) / "scores.jsonl").read_bytes() == (selection_dir(whole) / "scores.jsonl").read_bytes()


def test_output_files_follow_the_umask(tiny_llama, demo_dataset, tmp_path):
    old = os.umask(0o027)
    try:
        make_trainer(tiny_llama, demo_dataset(12), tmp_path, selection_probe=True, selection_probe_size=4).select()
    finally:
        os.umask(old)
    for name in ("scores.jsonl", "summary.json", "probe.json"):
        assert stat.S_IMODE((selection_dir(tmp_path) / name).stat().st_mode) == 0o640, name


# ---- the probe -----------------------------------------------------------------------------------------------------

def test_the_probe_says_why_it_skips_and_when_it_has_too_few_pairs(tiny_llama, demo_rows, tmp_path, caplog):
    row = {k: demo_rows[0][k] for k in ("instruction", "input", "output")}
    with caplog.at_level(logging.WARNING, logger="selectit_trl.selection.pipeline"):
        make_trainer(tiny_llama, Dataset.from_list([row] * 6), tmp_path / "same", selection_probe=True,
                     selection_ratio=0.5).select()
    assert ("The signal probe needs at least two rows with different instructions and different, non-empty "
            "responses, and this dataset has 1: its rows repeat each other, or their responses are empty. Skipping it"
            in caplog.text)
    assert read_summary(tmp_path / "same")["probe"] is None
    caplog.clear()
    rows = [{k: r[k] for k in ("instruction", "input", "output")} for r in demo_rows[:3]]
    with caplog.at_level(logging.WARNING, logger="selectit_trl.selection.pipeline"):
        make_trainer(tiny_llama, Dataset.from_list(rows), tmp_path / "three", selection_probe=True,
                     selection_ratio=1.0).select()
    # 1.96 * sqrt((2 * 3 + 1) / (12 * 3 ** 2)) = 0.4990...
    assert ("The signal probe has only 3 pair(s) of each kind, fewer than 50: its AUROC is uncertain by about "
            "+/-0.50 (95%)" in caplog.text)
    assert read_summary(tmp_path / "three")["probe"]["pairs"] == 3


# ---- the selection's files -----------------------------------------------------------------------------------------

def test_report_on_a_damaged_or_deleted_scores_file_says_how_to_rebuild_it(tiny_llama, data_file, tmp_path):
    recipe = write_recipe(tmp_path, tiny_llama, data_file, selection_probe=False)
    assert cli("score", "--config", recipe).returncode == 0
    out = tmp_path / "out"
    scores = selection_dir(out) / "scores.jsonl"
    whole = scores.read_bytes()
    rebuild = "Run `selectit-trl score` again with the same recipe: it writes the file again from the score store"

    scores.write_bytes(whole[: len(whole) // 2])  # cut in mid-line
    one_line_error(cli("report", out), f"{scores} is damaged at line ", rebuild)
    lines = whole.splitlines(keepends=True)
    scores.write_bytes(b"".join(lines[:10]))  # cut at a line's end
    one_line_error(cli("report", out), f"{scores} holds 10 records, and summary.json counts 16 rows", rebuild)
    scores.unlink()
    one_line_error(cli("report", out), f"{scores} is missing. {rebuild}")

    rebuilt = cli("score", "--config", recipe)
    assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
    assert read_summary(out)["scored_this_run"] == {}  # from the store, no forward pass
    assert scores.read_bytes() == whole
    assert cli("report", out).returncode == 0
