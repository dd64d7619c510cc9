"""A selection leaves its run: `selection_from` trains another model on it, and `export` makes it a dataset."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import build_tiny_llama, cpu_config
from datasets import load_dataset

from selectit_trl import SelectiveSFTTrainer
from selectit_trl.errors import StoredSelectionMismatch
from selectit_trl.reporting.report import write_report
from selectit_trl.store.outputs import read_scores, read_summary

REPO = Path(__file__).resolve().parents[1]


def forbid(*args, **kwargs):
    raise AssertionError("a forward pass ran for the selection")


@pytest.fixture
def first_run(tiny_llama, demo_dataset, tmp_path):
    """A selection by the tiny model: ifd + selectit, 12 rows, 3 kept."""
    dataset = demo_dataset(12)
    out = tmp_path / "small"
    args = cpu_config(out, selection_strategy="selectit:0.5,ifd:0.5", selection_ratio=0.25,
                      selection_dataset_name="tatsu-lab/alpaca")
    SelectiveSFTTrainer(model=tiny_llama, args=args, train_dataset=dataset).select()
    return dataset, out


def test_selection_from_trains_another_model_on_exactly_that_subset(first_run, tokenizer, tmp_path, monkeypatch):
    dataset, small = first_run
    other = build_tiny_llama(tmp_path / "other-model", tokenizer, seed=3, hidden_size=96, layers=3)
    monkeypatch.setattr("selectit_trl.measures.ratings.iter_score_batches", forbid)
    monkeypatch.setattr("selectit_trl.measures.difficulty.iter_loss_batches", forbid)
    out = tmp_path / "large"
    args = cpu_config(out, selection_from=str(small), selection_dataset_name="tatsu-lab/alpaca")
    trainer = SelectiveSFTTrainer(model=other, args=args, train_dataset=dataset)
    trainer.train()
    trainer.save_model()
    first, second = read_summary(small), read_summary(out)
    assert second["selected_indices_sha256"] == first["selected_indices_sha256"]
    assert second["selection_from"] == str(small.resolve()) and second["scored_this_run"] == {}
    kept = [r["index"] for r in read_scores(small) if r["selected"]]
    assert [r["index"] for r in read_scores(out) if r["selected"]] == kept
    # The rows trained on are the kept rows, in dataset order.
    trained = [tokenizer.decode(ids) for ids in trainer.train_dataset["input_ids"]]
    assert len(trained) == len(kept)
    for text, i in zip(trained, kept):
        assert dataset[i]["output"] in text
    assert (out / "selection" / "subset.jsonl").read_bytes() == (small / "selection" / "subset.jsonl").read_bytes()
    card = (out / "README.md").read_text(encoding="utf-8")
    from huggingface_hub import ModelCard

    meta = ModelCard.load(out / "README.md").data.to_dict()
    assert meta["datasets"] == ["tatsu-lab/alpaca"] and meta["library_name"] == "transformers"
    assert "A model fine-tuned from a local model" in card and "Fine-tuning | full fine-tuning" in card
    assert f"| Selection made by another run | `{small.resolve()}` |" in card
    write_report(out)
    assert f"Selection made by another run: `{small.resolve()}`" in (out / "selection" / "report.md").read_text()


def test_selection_from_refuses_another_dataset_before_the_model_loads(first_run, tokenizer, tmp_path):
    dataset, small = first_run
    edited = dataset.map(lambda row, i: {"output": row["output"] + " (edited)" if i == 5 else row["output"]},
                         with_indices=True)
    args = cpu_config(tmp_path / "again", selection_from=str(small))
    with pytest.raises(StoredSelectionMismatch, match=r"same 12 rows in number .* not the same rows"):
        SelectiveSFTTrainer(model="no/such-model-is-loaded", args=args, train_dataset=edited, processing_class=tokenizer)
    with pytest.raises(StoredSelectionMismatch, match=r"selected from 12 rows, and this dataset has 11"):
        SelectiveSFTTrainer(model="no/such-model-is-loaded", args=args, train_dataset=dataset.select(range(11)),
                            processing_class=tokenizer)


def cli(*args):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, "-m", "selectit_trl.cli", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def test_export_writes_a_dataset_that_load_dataset_reads_with_its_card(first_run, tmp_path):
    dataset, small = first_run
    assert cli("report", small).returncode == 0  # the figures go with the export
    target = tmp_path / "exported"
    done = cli("export", small, "--to", target)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = load_dataset(str(target), split="train")
    kept = [r["index"] for r in read_scores(small) if r["selected"]]
    assert rows.to_list() == [dataset[i] for i in kept]
    card = (target / "README.md").read_text(encoding="utf-8")
    front = card.split("---\n")[1]
    import yaml

    meta = yaml.safe_load(front)
    assert meta["source_datasets"] == ["tatsu-lab/alpaca"] and "selectit-trl" in meta["tags"]
    assert meta["configs"][0]["data_files"][0] == {"split": "train", "path": "data/train.jsonl"}
    assert "The 3 rows (25.0%) of `tatsu-lab/alpaca` that selectit 0.50 + ifd 0.50 kept, out of 12" in card
    assert "![score distribution](figures/score_distribution.png)" in card
    assert (target / "figures" / "score_distribution.png").is_file()
    # Offline, the push says so in one line, and the folder stays written.
    done = cli("export", small, "--to", target, "--push_to_hub", "someone/selected")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("selectit-trl export: error: Cannot push to someone/selected: HF_HUB_OFFLINE is set.")
    assert (target / "data" / "train.jsonl").is_file()
    # A folder holding other things is not written over.
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    done = cli("export", small, "--to", tmp_path / "busy")
    assert done.returncode == 1 and "already holds other files (notes.txt)" in done.stderr
