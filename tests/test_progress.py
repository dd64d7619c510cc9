"""Live progress: counts across processes through the store files, a token-based ETA, one estimate up front."""

import io
import json
import re

import pytest

from selectit_trl import progress as progress_module
from selectit_trl.progress import ScoringProgress
from selectit_trl.store.ledger import StoreFollower, StoreWriter, store_dir


def record(model, key):
    return {"model": model, "tokens": key, "probs": [[0.5, 0.5]]}


def test_follower_counts_other_ranks_records_from_where_they_stood(tmp_path):
    with StoreWriter(tmp_path, rank=1) as writer:
        writer.append([record("m", "old")])
    # a torn tail the owner will cut: the follower starts before it
    with open(store_dir(tmp_path) / "rank1.jsonl", "ab") as handle:
        handle.write(b'{"model": "m", "tok')
    follower = StoreFollower(tmp_path, own_rank=0)
    assert follower.take("m") == []

    with StoreWriter(tmp_path, rank=1) as writer:  # cuts the torn tail, then appends where the follower waits
        writer.append([record("m", "k1"), record("other", "x")])
    with StoreWriter(tmp_path, rank=0) as writer:  # this process's own file is not followed
        writer.append([record("m", "mine")])
    with StoreWriter(tmp_path, rank=2) as writer:  # a file that did not exist when following began
        writer.append([record("m", "k2")])
    with open(store_dir(tmp_path) / "rank2.jsonl", "ab") as handle:
        handle.write(json.dumps(record("m", "k3")).encode()[:10])  # still being written: read on a later poll
    assert sorted(follower.take("m")) == ["k1", "k2"]
    assert follower.take("other") == ["x"]  # kept for its own model until asked for
    assert follower.take("m") == []


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_progress_counts_every_process_and_takes_its_eta_from_tokens(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(progress_module.time, "perf_counter", clock)
    stream = io.StringIO()
    monkeypatch.setattr(progress_module.sys, "stderr", stream)
    elsewhere = [[], [5, 6], [7, 99], [], [4]]  # 99 is not pending: ignored
    bar = ScoringProgress("Scoring with m", finished_elsewhere=lambda: elsewhere.pop(0) if elsewhere else [])
    # samples 0-3 are this process's, 4-7 the others'; 0 and 1 are long, so tokens and samples disagree
    tokens = [400, 400, 50, 50, 50, 50, 50, 50]
    bar.start(range(8), tokens)
    assert bar.total_tokens == 1100

    clock.now = 10.0
    bar.advance([0, 1])  # 800 tokens in 10 s: 80 tokens/s, 300 left -> 3.75 s
    assert bar.bar.n == 2 and "80 tokens/s, ETA 00:04" in bar.bar.postfix
    clock.now = 11.0
    bar.advance([2])  # and the others finished 5 and 6
    assert bar.bar.n == 5 and bar.tokens_done == 950
    assert "in all" not in stream.getvalue()
    clock.now = 12.0
    bar.advance([3])  # and the others finished 7; after three batches, the estimate: 1100 tokens at 1050/12 tokens/s
    assert "about 00:13 in all for 8 samples (1.1k tokens at 88 tokens/s over the first 7)" in stream.getvalue()
    assert not bar.finished
    bar.wait_for_others(poll_seconds=0)
    assert bar.finished and bar.bar.n == 8
    bar.close()
    assert len(re.findall(r"about .* in all", stream.getvalue())) == 1


def test_a_disabled_bar_draws_nothing_but_still_counts(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(progress_module.sys, "stderr", stream)
    bar = ScoringProgress("x", enabled=False)
    bar.start([0, 1], [3, 4])
    bar.advance([0, 1])
    bar.close()
    assert bar.finished and bar.tokens_done == 7 and stream.getvalue() == ""


@pytest.mark.parametrize("seconds,text", [(5, "00:05"), (75, "01:15"), (3725, "1:02:05")])
def test_durations_read_like_clocks(seconds, text):
    assert progress_module._duration(seconds) == text
