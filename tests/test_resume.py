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
from datasets import Dataset

from selectit_trl.data import formats

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
ROWS = 40
PROBE = 8  # the signal probe scores 8 rows and 8 mismatched pairs first; the main run then scores the other 32


def command(tmp_path, data, out):
    """The embedded model in fp32 with a small token budget: about one sample per batch, so a kill lands between
    batches of a run that lasts several seconds."""
    recipe = {
        "dataset_name": str(data), "output_dir": str(out), "use_cpu": True, "report_to": "none",
        "selection_num_prompts": 3, "selection_ratio": 0.25, "selection_max_batch_tokens": 256,
        "selection_probe_size": PROBE,
    }
    path = tmp_path / f"{out.name}.yaml"
    path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in recipe.items()), encoding="utf-8")
    return [sys.executable, "-m", "selectit_trl.cli", "score", "--config", str(path)]


def _interruptible():
    # A run started in the background by a non-interactive shell (`cmd &`, nohup) inherits SIGINT ignored, and
    # Python then rightly leaves it ignored. The run under test is the foreground one a user stops with Ctrl-C.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(args):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_interruptible)


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


def rows_among(records, data) -> int:
    """How many of the records are the dataset's rows, not the probe's mismatched pairs."""
    rows = Dataset.from_json(str(data))
    hashes = {s.content_hash for s in formats.rating_samples(rows, formats.resolve_format(rows, None))}
    return sum(r["sample"] in hashes for r in records)


def interrupt_after(args, out, sig, records) -> subprocess.Popen:
    """Start a scoring run and send `sig` once `records` records are stored."""
    process = start(args)
    deadline = time.monotonic() + 300
    while len(complete_records(out)) < records:
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
    # in the main run, a quarter of the way through its rows
    killed = interrupt_after(args, out, signal.SIGKILL, 2 * PROBE + (ROWS - PROBE) // 4)
    assert killed.returncode == -signal.SIGKILL
    stored = complete_records(out)
    assert 2 * PROBE + (ROWS - PROBE) // 4 <= len(stored) < ROWS + PROBE, "the kill did not land half way"
    assert not (out / "selection" / "scores.jsonl").exists()

    finish(args)
    summary = json.loads((out / "selection" / "summary.json").read_text())
    assert sum(summary["scored_this_run"].values()) == ROWS - rows_among(stored, data)  # nothing stored scored again
    records = complete_records(out)
    assert len(records) == ROWS + PROBE and len({r["tokens"] for r in records}) == ROWS + PROBE
    assert records[: len(stored)] == stored
    assert (out / "selection" / "scores.jsonl").read_bytes() == (uninterrupted / "selection" / "scores.jsonl").read_bytes()


@pytest.mark.parametrize(
    "sig, status, said",
    [(signal.SIGINT, 130, "selectit-trl score: interrupted."),
     # A scheduler's stop, `kill`, or a launcher stopping the other processes: handled as Ctrl-C is.
     (signal.SIGTERM, 143, "selectit-trl score: terminated (SIGTERM).")],
    ids=["sigint", "sigterm"],
)
def test_a_stop_signal_stops_cleanly_says_how_to_resume_and_resumes(tmp_path, data, uninterrupted, sig, status, said):
    out = tmp_path / "run"
    args = command(tmp_path, data, out)
    stopped = interrupt_after(args, out, sig, PROBE // 2)  # in the signal probe
    stderr = stopped.stderr.read()
    assert stopped.returncode == status, stderr[-3000:]
    assert "Traceback" not in stderr
    assert said in stderr.splitlines()
    assert "sample(s) of this run are saved in" in stderr
    assert "Run the same command again (without --overwrite) to resume" in stderr
    lines = store_lines(out)
    assert lines[-1] == b"", "SIGINT left a torn line"  # everything written is whole
    stored = complete_records(out)
    assert PROBE // 2 <= len(stored) < 2 * PROBE

    finish(args)
    summary = json.loads((out / "selection" / "summary.json").read_text())
    assert sum(summary["scored_this_run"].values()) == ROWS - rows_among(stored, data)
    assert len(complete_records(out)) == ROWS + PROBE
    assert (out / "selection" / "scores.jsonl").read_bytes() == (uninterrupted / "selection" / "scores.jsonl").read_bytes()
