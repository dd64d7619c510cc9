"""`accelerate launch` with two processes on the CPU: they share the scoring and agree with one process."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
ROWS = 24
PROBE = 6  # the signal probe's rows: it scores them and as many mismatched pairs first
# Two processes on this CPU. accelerate 1.15's `--cpu` starts several processes only through MPI; without it,
# `--cpu --num_processes 2` runs one. `--multi_gpu` on a machine without GPUs starts two processes through
# torchrun, and accelerate joins them over gloo on the CPU.
ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]


def recipe(tmp_path, model, data, out, **extra):
    settings = {
        "model_name_or_path": model, "dataset_name": str(data), "output_dir": str(out), "use_cpu": True,
        "report_to": "none", "disable_tqdm": True, "selection_num_prompts": 3, "selection_ratio": 0.25,
        "selection_max_batch_tokens": 256, "selection_probe_size": PROBE, "use_peft": True, "lora_r": 4, "lora_alpha": 8,
        "lora_target_modules": ["q_proj", "v_proj"], "max_steps": 2, "per_device_train_batch_size": 2,
        "max_length": 128, "save_strategy": "no", "logging_strategy": "no", **extra,
    }
    path = tmp_path / f"{out.name}.yaml"
    path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in settings.items()), encoding="utf-8")
    return path


def run(args):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def launch(*args):
    return run([*ACCELERATE, "-m", "selectit_trl.cli", *args])


@pytest.fixture(scope="module")
def data(tmp_path_factory, demo_rows):
    path = tmp_path_factory.mktemp("data") / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in demo_rows[:ROWS]), encoding="utf-8")
    return path


def test_two_processes_share_the_scoring_and_equal_one(tiny_llama, data, tmp_path):
    single, double = tmp_path / "single", tmp_path / "double"
    # One sample per batch, so that rank 0 runs the 3 batches after which a bar prints its estimate in both phases
    # (the probe's 12 samples and the other 18), however short the rows are.
    small = {"selection_max_batch_tokens": 64}
    run([sys.executable, "-m", "selectit_trl.cli", "score", "--config", str(recipe(tmp_path, tiny_llama, data, single, **small))])
    done = launch("score", "--config", str(recipe(tmp_path, tiny_llama, data, double, disable_tqdm=False, **small)))

    shards = {p.name: [json.loads(line) for line in p.read_text().splitlines()]
              for p in (double / "selection" / "store").glob("*.jsonl")}
    assert set(shards) == {"rank0.jsonl", "rank1.jsonl"}
    assert all(shards.values()), "each process scored a share"
    tokens = [r["tokens"] for records in shards.values() for r in records]
    assert len(tokens) == len(set(tokens)) == ROWS + PROBE  # every sample once, by one process
    # One bar per model and phase, drawn by rank 0 alone, counting both processes' samples to the end.
    bars = done.stderr.replace("\r", "\n")
    assert f"Probe: Scoring with {tiny_llama}: 100%" in bars and f"| {2 * PROBE}/{2 * PROBE} samples" in bars
    assert f"| {ROWS - PROBE}/{ROWS - PROBE} samples" in bars
    assert bars.count(" in all for ") == 2  # the up-front estimate, once per bar: rank 1 draws nothing
    # Each sample ran in the same batch as in one process, so its probabilities are the same numbers.
    assert (double / "selection" / "scores.jsonl").read_bytes() == (single / "selection" / "scores.jsonl").read_bytes()
    one, two = (json.loads((d / "selection" / "summary.json").read_text()) for d in (single, double))
    assert one["selected_indices_sha256"] == two["selected_indices_sha256"]


def test_two_processes_share_ifd_losses_too(tiny_llama, data, tmp_path):
    single, double = tmp_path / "single", tmp_path / "double"
    mix = {"selection_strategy": "selectit:0.5,ifd:0.5"}
    run([sys.executable, "-m", "selectit_trl.cli", "score", "--config", str(recipe(tmp_path, tiny_llama, data, single, **mix))])
    launch("score", "--config", str(recipe(tmp_path, tiny_llama, data, double, **mix)))
    records = [json.loads(line) for p in (double / "selection" / "store").glob("*.jsonl") for line in p.read_text().splitlines()]
    for kind in ("ratings", "ifd"):
        tokens = [r["tokens"] for r in records if r.get("kind", "ratings") == kind]
        assert len(tokens) == len(set(tokens)) == ROWS + PROBE  # every row once, and each mismatched pair once
    assert (double / "selection" / "scores.jsonl").read_bytes() == (single / "selection" / "scores.jsonl").read_bytes()


def test_two_processes_share_a_teachers_rewrites(tiny_llama, embedded_dir, data, tmp_path):
    single, double = tmp_path / "single", tmp_path / "double"
    teacher = {"selection_teacher_model": json.dumps({"model": embedded_dir, "load_in_4bit": False, "dtype": "float32"}),
               "selection_teacher_max_new_tokens": 4, "selection_teacher_batch_size": 4, "selection_probe": False}
    run([sys.executable, "-m", "selectit_trl.cli", "score", "--config", str(recipe(tmp_path, tiny_llama, data, single, **teacher))])
    done = launch("score", "--config", str(recipe(tmp_path, tiny_llama, data, double, disable_tqdm=False, **teacher)))
    rewrites = {p.name: [json.loads(line)["tokens"] for line in p.read_text().splitlines() if '"kind": "rewrite"' in line]
                for p in (double / "selection" / "store").glob("*.jsonl")}
    assert set(rewrites) == {"rank0.jsonl", "rank1.jsonl"} and all(rewrites.values())  # each process wrote a share
    tokens = [t for share in rewrites.values() for t in share]
    assert len(tokens) == len(set(tokens)) >= 2 * ROWS  # each text once, by one process
    # Rank 0's bar of each generation phase ends at that phase's texts from both processes, not its own share.
    bars = done.stderr.replace("\r", "\n")
    phases = ("Rewriting instructions", "Answering the new instructions", "Rewriting responses")
    ends = [re.findall(rf"{phase} with {re.escape(embedded_dir)}: 100%\|[^|]*\| (\d+)/(\d+) samples", bars)
            for phase in phases]
    assert all(ends) and all(n == total for found in ends for n, total in found)
    assert sum(int(found[-1][1]) for found in ends) == len(tokens)
    assert (double / "selection" / "scores.jsonl").read_bytes() == (single / "selection" / "scores.jsonl").read_bytes()
    one, two = (json.loads((d / "selection" / "summary.json").read_text())["scored_this_run"] for d in (single, double))
    assert one[f"rewrite:{embedded_dir}"] == two[f"rewrite:{embedded_dir}"] == len(tokens)  # both processes' texts


def test_num_processes_launches_the_command_through_accelerate(tiny_llama, data, tmp_path):
    """As `trl sft --num_processes 2` does: one command, two processes, the same selection as one process makes."""
    single, double = tmp_path / "single", tmp_path / "double"
    run([sys.executable, "-m", "selectit_trl.cli", "score", "--config", str(recipe(tmp_path, tiny_llama, data, single))])
    run([sys.executable, "-m", "selectit_trl.cli", "score", "--config", str(recipe(tmp_path, tiny_llama, data, double)),
         "--num_processes", "2"])
    assert sorted(p.name for p in (double / "selection" / "store").glob("*.jsonl")) == ["rank0.jsonl", "rank1.jsonl"]
    assert (double / "selection" / "scores.jsonl").read_bytes() == (single / "selection" / "scores.jsonl").read_bytes()


TRAIN_AND_REPORT = """
import gc, json, sys
from pathlib import Path
from torch.nn.parallel import DistributedDataParallel
from selectit_trl.cli import build_trainer, leave_process_group, parse_args

trainer = build_trainer(*parse_args(sys.argv[1:]))
trainer.train()
rank = trainer.accelerator.process_index
rows = [trainer.processing_class.decode(ids) for ids in trainer.train_dataset["input_ids"]]
Path(trainer.args.output_dir, f"rank{rank}-subset.json").write_text(json.dumps(rows))
assert any(isinstance(o, DistributedDataParallel) for o in gc.get_objects())
# As the CLI ends, and as docs/scaling.md asks of a script: without it, gloo can abort the process at exit.
del trainer
leave_process_group()
assert not any(isinstance(o, DistributedDataParallel) for o in gc.get_objects()), "the DDP wrapper outlived the trainer"
"""


def test_training_under_accelerate_selects_once_and_every_rank_trains_on_the_subset(tiny_llama, data, tmp_path):
    out = tmp_path / "ddp"
    script = tmp_path / "train_and_report.py"
    script.write_text(TRAIN_AND_REPORT, encoding="utf-8")
    run([*ACCELERATE, str(script), "--config", str(recipe(tmp_path, tiny_llama, data, out))])
    summary = json.loads((out / "selection" / "summary.json").read_text())
    assert summary["counts"] == {"total": ROWS, "selected": 6}
    assert sum(summary["scored_this_run"].values()) == ROWS  # scored once, shared between the two processes
    assert {p.name for p in (out / "selection" / "store").glob("*.jsonl")} == {"rank0.jsonl", "rank1.jsonl"}
    subsets = [json.loads((out / f"rank{r}-subset.json").read_text()) for r in (0, 1)]
    assert len(subsets[0]) == 6 and subsets[0] == subsets[1]  # both ranks hold the same kept rows
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    kept = [i for i, r in enumerate(json.loads(line) for line in (out / "selection" / "scores.jsonl").read_text().splitlines())
            if r["selected"]]
    for text, i in zip(subsets[0], kept):
        assert rows[i]["output"] in text


def test_zero3_trains_on_stored_scores_and_explains_what_to_do_without_them(tiny_llama, demo_dataset, tmp_path, zero3):
    """DeepSpeed is not installed here; its ZeRO-3 switch is flipped the way transformers reports it."""
    from conftest import cpu_config

    from selectit_trl import SelectiveSFTTrainer
    from selectit_trl.errors import SelectionConfigError

    dataset = demo_dataset(8)
    zero3(True)
    with pytest.raises(SelectionConfigError, match="Score first without ZeRO-3"):
        SelectiveSFTTrainer(model=tiny_llama, args=cpu_config(tmp_path), train_dataset=dataset).select()
    zero3(False)
    scored = SelectiveSFTTrainer(model=tiny_llama, args=cpu_config(tmp_path), train_dataset=dataset).select()
    zero3(True)
    again = SelectiveSFTTrainer(model=tiny_llama, args=cpu_config(tmp_path), train_dataset=dataset)
    again.train()
    assert again.selection_result.reused and again.selection_result.selected_indices == scored.selected_indices


def _model_with_a_poisoned_token(source: str, target: Path, word: str) -> str:
    """`source` with NaN in the input embedding of the last token of `word`, and the output layer untied from it, so
    that only a sample holding that token gets NaN logits, in whichever process scores it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source)
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(model.get_input_embeddings().weight.detach().clone())
    with torch.no_grad():
        model.get_input_embeddings().weight[tokenizer(word, add_special_tokens=False).input_ids[-1]] = float("nan")
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return str(target)


def test_a_failing_process_stops_the_other_at_once_and_a_rerun_resumes(tiny_llama, demo_rows, tmp_path):
    word = " \u9f98"  # a character no other row holds
    rows = [dict(r, instruction=f"{r['instruction']} ({i})") for i, r in enumerate(demo_rows[:ROWS])]
    rows[5]["output"] += word
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    model = _model_with_a_poisoned_token(tiny_llama, tmp_path / "poisoned", word)
    out = tmp_path / "run"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    args = [*ACCELERATE, "-m", "selectit_trl.cli", "score", "--config",
            str(recipe(tmp_path, model, data, out, selection_probe=False))]
    # Waiting for the failed process at a barrier would last the process-group timeout (30 minutes): the
    # subprocess timeout would end the test as failed.
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.startswith("selectit-trl score (process ")]
    assert len(lines) == 2, done.stderr[-4000:]
    failed = next(line for line in lines if "NaN or infinite" in line and "stopped because" not in line)
    rank = int(re.match(r"selectit-trl score \(process (\d)\)", failed).group(1))
    other = next(line for line in lines if line != failed)
    cause = failed.split(": error: ", 1)[1].rstrip(".")
    assert other == (f"selectit-trl score (process {1 - rank}): error: stopped because process {rank} failed: {cause}. "
                     "What every process stored before it is kept in selection/store/: fix that, then run the same "
                     "command again to resume.")
    assert "Traceback" not in "".join(line for line in done.stderr.splitlines() if line.startswith("[rank"))

    # Every stored record is whole, and a rerun without the poisoned row measures only what is missing.
    store = out / "selection" / "store"
    assert all(path.read_bytes().endswith(b"\n") for path in store.glob("*.jsonl") if path.stat().st_size)
    from selectit_trl.store.ledger import read_store

    stored = len(read_store(out))
    assert 0 < stored < ROWS - 1
    data.write_text("".join(json.dumps(r) + "\n" for i, r in enumerate(rows) if i != 5), encoding="utf-8")
    run([*args])
    summary = json.loads((out / "selection" / "summary.json").read_text())
    assert sum(summary["scored_this_run"].values()) == ROWS - 1 - stored
