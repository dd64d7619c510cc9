"""Scoring interrupted for real: a `selectit-trl score` process killed with SIGKILL, or stopped with SIGINT,
half way through, then started again. Nothing stored is scored again, and the result equals an uninterrupted
run's, byte for byte."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
ROWS = 40


def command(tmp_path, data, out):
    """The embedded model in fp32 with a small token budget: about one sample per batch, so a kill lands between
    batches of a run that lasts several seconds."""
    recipe = {
        "dataset_name": str(data), "output_dir": str(out), "use_cpu": True, "report_to": "none",
        "selection_num_prompts": 3, "selection_ratio": 0.25, "selection_max_batch_tokens": 256,
    }
    path = tmp_path / f"{out.name}.yaml"
    path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in recipe.items()), encoding="utf-8")
    return [sys.executable, "-m", "selectit_trl.cli", "score", "--config", str(path)]


def start(args):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(args) -> subprocess.CompletedProcess:
    process = start(args)
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]
    return subprocess.CompletedProcess(args, process.returncode, stdout, stderr)


def store_lines(out) -> list[bytes]:
    path = out / "selection" / "store" / "rank0.jsonl"
    return path.read_bytes().split(b"\n") if path.exists() else []


def complete_records(out) -> list[dict]:
    records = []
    for line in store_lines(out):
        try:
            records.append(json.loads(line))
        except ValueError:
            pass  # empty, or torn by the kill
    return records


def interrupt_half_way(args, out, sig) -> subprocess.Popen:
    """Start a scoring run and send `sig` once a quarter of the rows are stored, well before the end."""
    process = start(args)
    deadline = time.monotonic() + 300
    while len(complete_records(out)) < ROWS // 4:
        assert process.poll() is None, process.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "scoring did not start"
        time.sleep(0.01)
    process.send_signal(sig)
    process.wait(timeout=120)
    return process


@pytest.fixture(scope="module")
def data(tmp_path_factory, demo_rows):
    path = tmp_path_factory.mktemp("data") / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in demo_rows[:ROWS]), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data):
    tmp = tmp_path_factory.mktemp("uninterrupted")
    out = tmp / "run"
    finish(command(tmp, data, out))
    return out


def test_sigkill_half_way_then_resume(tmp_path, data, uninterrupted):
    out = tmp_path / "run"
    args = command(tmp_path, data, out)
    killed = interrupt_half_way(args, out, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    stored = complete_records(out)
    assert ROWS // 4 <= len(stored) < ROWS, "the kill did not land half way"
    assert not (out / "selection" / "scores.jsonl").exists()

    finish(args)
    summary = json.loads((out / "selection" / "summary.json").read_text())
    assert sum(summary["scored_this_run"].values()) == ROWS - len(stored)  # nothing stored was scored again
    records = complete_records(out)
    assert len(records) == ROWS and len({r["tokens"] for r in records}) == ROWS
    assert records[: len(stored)] == stored
    assert (out / "selection" / "scores.jsonl").read_bytes() == (uninterrupted / "selection" / "scores.jsonl").read_bytes()


def test_sigint_stops_cleanly_says_how_to_resume_and_resumes(tmp_path, data, uninterrupted):
    out = tmp_path / "run"
    args = command(tmp_path, data, out)
    stopped = interrupt_half_way(args, out, signal.SIGINT)
    stderr = stopped.stderr.read()
    assert stopped.returncode == 130, stderr[-3000:]
    assert "interrupted" in stderr and "Run the same command again (without --overwrite) to resume" in stderr
    lines = store_lines(out)
    assert lines[-1] == b"", "SIGINT left a torn line"  # everything written is whole
    stored = complete_records(out)
    assert ROWS // 4 <= len(stored) < ROWS

    finish(args)
    summary = json.loads((out / "selection" / "summary.json").read_text())
    assert sum(summary["scored_this_run"].values()) == ROWS - len(stored)
    assert len(complete_records(out)) == ROWS
    assert (out / "selection" / "scores.jsonl").read_bytes() == (uninterrupted / "selection" / "scores.jsonl").read_bytes()
