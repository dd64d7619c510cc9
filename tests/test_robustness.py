"""Faults and unusual input while selecting: empty responses, long samples, NaN, out-of-memory, duplicates,
pickle weights, missing paths, a damaged store. Each test names what is survived and checks nothing is lost."""

import json
import logging
import shutil

import numpy as np
import pytest
import torch
from conftest import build_tiny_llama, cpu_config
from datasets import Dataset
from test_trainer import make_trainer
from transformers import AutoModelForCausalLM

from selectit_trl import SelectiveSFTTrainer
from selectit_trl.engine.prompts import (
    RatingSample,
    build_requests,
    load_prompts,
    score_token_ids,
    truncate_middle,
)
from selectit_trl.engine.scoring import SampleRequests, last_token_probs, score_requests
from selectit_trl.errors import (
    DatasetError,
    ModelSourceError,
    NonFiniteScoresError,
    RowFormatError,
    ScoringOutOfMemory,
)
from selectit_trl.store.outputs import read_scores, read_summary


def rows(demo_rows, n):
    return [{k: r[k] for k in ("instruction", "input", "output")} for r in demo_rows[:n]]


def test_empty_responses_are_scored_listed_and_never_kept(tiny_llama, demo_rows, tmp_path, caplog):
    data = rows(demo_rows, 10)
    # Blank, empty, and invisible only: zero-width spaces, and a byte-order mark, word joiner and soft hyphen.
    for i, text in {2: "  ", 5: "\u200b\u200b\u200b", 7: "", 8: "\ufeff \u2060\u00ad\n"}.items():
        data[i]["output"] = text
    with caplog.at_level(logging.WARNING, logger="selectit_trl.selection.pipeline"):
        result = make_trainer(tiny_llama, Dataset.from_list(data), tmp_path, selection_ratio=1.0).select()
    assert "4 row(s) have an empty response" in caplog.text
    assert sorted(result.selected_indices) == [0, 1, 3, 4, 6, 9]  # ratio 1.0 keeps everything else
    assert read_summary(tmp_path)["empty_responses"] == {"count": 4, "indices": [2, 5, 7, 8]}
    assert len(read_scores(tmp_path)) == 10


def test_a_dataset_whose_every_response_is_empty_is_refused_before_loading(tiny_llama, demo_rows, tmp_path, monkeypatch):
    data = [dict(row, output=["", " ", "\u200b\u200b", "\ufeff"][i % 4]) for i, row in enumerate(rows(demo_rows, 8))]
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(DatasetError, match=r"^Every one of the 8 rows has an empty response \(blank, or invisible "
                                           r"characters only\), so no row can be kept or trained on\."):
        make_trainer(tiny_llama, Dataset.from_list(data), tmp_path)


def test_strict_mode_stops_on_an_empty_response_before_loading(tiny_llama, demo_rows, tmp_path, monkeypatch):
    data = rows(demo_rows, 10)
    data[4]["output"] = ""
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(RowFormatError, match=r"^Row 4: the response is empty \(1 such row\(s\): 4\)"):
        make_trainer(tiny_llama, Dataset.from_list(data), tmp_path, selection_strict=True)


def test_truncate_middle_keeps_both_ends_and_every_request():
    prefix = np.arange(100, dtype=np.int32)
    suffixes = (np.array([1000, 1001], dtype=np.int32), np.array([2000, 2001, 2002], dtype=np.int32))
    short = SampleRequests(np.arange(5, dtype=np.int32), suffixes)
    out, cut = truncate_middle([SampleRequests(prefix, suffixes), short], max_positions=13)
    assert cut == [True, False]
    assert out[0].prefix.tolist() == [0, 1, 2, 3, 4, 95, 96, 97, 98, 99]  # 13 - 3 tokens: head 5, tail 5
    assert out[0].suffixes is suffixes and out[1] is short
    # prompt_first: whole requests lose their middle, keeping the rating prompt (start) and "The answer is:" (end).
    whole = SampleRequests(np.zeros(0, dtype=np.int32), (np.arange(20, dtype=np.int32), np.arange(4, dtype=np.int32)))
    out, cut = truncate_middle([whole], max_positions=7)
    assert cut == [True] and out[0].suffixes[0].tolist() == [0, 1, 2, 3, 17, 18, 19] and out[0].suffixes[1].tolist() == [0, 1, 2, 3]


def test_a_sample_longer_than_the_context_is_truncated_and_marked(tokenizer, demo_rows, tmp_path):
    model_path = build_tiny_llama(tmp_path / "short-context", tokenizer, max_positions=512)
    data = rows(demo_rows, 6)
    data[3]["output"] = "word " * 1000  # far beyond 512 positions
    result = make_trainer(model_path, Dataset.from_list(data), tmp_path / "out").select()
    records = read_scores(tmp_path / "out")
    assert [r["truncated"] for r in records] == [False, False, False, True, False, False]
    assert read_summary(tmp_path / "out")["truncated"] == {"count": 1, "indices": [3]}
    assert np.isfinite(result.scores).all()


def test_samples_that_render_alike_are_scored_once_in_one_batch(tokenizer, demo_rows, tmp_path):
    """Two long responses that differ only in the middle are cut to the same tokens: one store key, so one place in
    one planned batch (two would make a resume replay one of them outside its batch)."""
    from selectit_trl.store.ledger import read_plans

    model_path = build_tiny_llama(tmp_path / "short-context", tokenizer, max_positions=512)
    data = rows(demo_rows, 6)
    for i, word in ((2, "alpha"), (4, "beta")):  # one instruction, two responses that differ only in the middle
        data[i].update(instruction=data[2]["instruction"], input=data[2]["input"],
                       output="word " * 500 + word + " word" * 500)
    result = make_trainer(model_path, Dataset.from_list(data), tmp_path / "out", selection_max_batch_tokens=1200).select()
    assert result.scores[2] == result.scores[4]
    assert len((tmp_path / "out" / "selection" / "store" / "rank0.jsonl").read_text().splitlines()) == 5
    (plan,) = read_plans(tmp_path / "out").values()
    planned = [key for _, keys in plan for key in keys]
    assert len(planned) == len(set(planned)) == 5


def test_nan_logits_stop_the_run_name_the_row_and_model_and_keep_the_store(tiny_llama, demo_dataset, tmp_path):
    dataset = demo_dataset(6)
    make_trainer(tiny_llama, dataset, tmp_path).select()

    def files():  # everything but the batch plans, which record the failed batch before it runs
        plans = tmp_path / "selection" / "store" / "plans"
        return {str(p.relative_to(tmp_path)): p.read_bytes() for p in (tmp_path / "selection").rglob("*")
                if p.is_file() and plans not in p.parents}

    before = files()
    broken = AutoModelForCausalLM.from_pretrained(tiny_llama)
    with torch.no_grad():
        broken.model.norm.weight.fill_(float("nan"))
    # Loaded from the same path, so the store's six rows are reused, and only the new seventh row is scored.
    trainer = SelectiveSFTTrainer(model=broken, args=cpu_config(tmp_path), train_dataset=demo_dataset(7))
    with pytest.raises(NonFiniteScoresError, match=r"gave row \d NaN or infinite rating probabilities") as error:
        trainer.select()
    assert str(error.value).startswith(tiny_llama) and "are kept in" in str(error.value)
    assert error.value.sample_index == 6  # the only row no earlier run planned, so planned and run alone
    assert files() == before  # the failed batch wrote nothing; the store and the last selection are as they were


class _OutOfMemoryAbove:
    """Fault injection: the model's forward raises CUDA's out-of-memory error on batches over `limit` tokens."""

    def __init__(self, model, limit):
        self.forward, self.limit, self.sizes = model.forward, limit, []

    def __call__(self, input_ids=None, **kwargs):
        # A padding-free pass reads the real tokens alone; its batch is the padded rows its attention lays out.
        layout = kwargs.get("row_layout")
        self.sizes.append(layout.rows * layout.width if layout is not None else input_ids.numel())
        if self.sizes[-1] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return self.forward(input_ids=input_ids, **kwargs)


@pytest.mark.parametrize("share_prefix", [True, False])
def test_out_of_memory_halves_the_budget_and_loses_nothing(tiny_llama, tokenizer, demo_rows, caplog, share_prefix):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32, attn_implementation="sdpa").eval()
    samples = [RatingSample(r["instruction"], r["output"]) for r in demo_rows[:12]]
    requests = build_requests(samples, load_prompts(2, 5), tokenizer)
    ids, pad = score_token_ids(tokenizer, 5), tokenizer.pad_token_id
    expected = score_requests(model, requests, ids, pad, max_batch_tokens=10**6, progress=False, share_prefix=share_prefix)
    fault = _OutOfMemoryAbove(model, limit=1000)
    model.forward = fault
    with caplog.at_level(logging.WARNING, logger="selectit_trl.engine.scoring"):
        got = score_requests(model, requests, ids, pad, max_batch_tokens=10**6, progress=False, share_prefix=share_prefix)
    assert "Out of memory on a batch of 12 samples; retrying with a budget of" in caplog.text
    assert np.abs(got - expected).max() < 1e-5
    assert max(fault.sizes) > 1000 and fault.sizes[-1] <= 1000


def test_out_of_memory_on_one_sample_gives_up_with_a_message(tiny_llama, tokenizer, demo_rows):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    requests = build_requests([RatingSample(r["instruction"], r["output"]) for r in demo_rows[:3]], load_prompts(2, 5), tokenizer)
    model.forward = _OutOfMemoryAbove(model, limit=1)
    with pytest.raises(ScoringOutOfMemory, match=r"Out of memory scoring sample \d+ \(\d+ tokens\) on its own"):
        score_requests(model, requests, score_token_ids(tokenizer, 5), tokenizer.pad_token_id, progress=False, share_prefix=False)


def test_duplicate_rows_are_scored_once_and_share_the_score(tiny_llama, demo_rows, tmp_path):
    data = rows(demo_rows, 5)
    data = data + [data[1], data[3], data[1]]  # rows 5 and 7 repeat row 1, row 6 repeats row 3
    trainer = make_trainer(tiny_llama, Dataset.from_list(data), tmp_path)
    passes = []

    def count_rows(module, args, kwargs):
        layout = kwargs.get("row_layout")  # a padding-free pass's rows are its attention's
        passes.append(layout.rows if layout is not None else kwargs["input_ids"].shape[0])

    trainer.model.register_forward_pre_hook(count_rows, with_kwargs=True)
    result = trainer.select()
    # After the preamble's pass and the two of the prefix-sharing check: one packed row per unique sample.
    assert sum(passes[3:]) == 5
    records = read_scores(tmp_path)
    for copy, original in ((5, 1), (6, 3), (7, 1)):
        assert records[copy]["probs"] == records[original]["probs"]
        assert result.scores[copy] == result.scores[original]
    assert read_summary(tmp_path)["duplicates"] == 3


def test_scores_match_a_run_without_duplicates(tiny_llama, demo_rows, tmp_path):
    data = rows(demo_rows, 5)
    alone = make_trainer(tiny_llama, Dataset.from_list(data), tmp_path / "a").select()
    doubled = make_trainer(tiny_llama, Dataset.from_list(data + data), tmp_path / "b").select()
    assert np.abs(doubled.scores[:5] - alone.scores).max() < 1e-9
    assert doubled.scores[5:].tolist() == doubled.scores[:5].tolist()


def test_pickle_weights_are_refused_unless_opted_in(tiny_llama, tokenizer, demo_dataset, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    folder = tmp_path / "pickled"
    model.config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(ModelSourceError, match=r"holds only pickle weights \(pytorch_model\.bin\), which can run code"):
        make_trainer(str(folder), demo_dataset(5), tmp_path / "out")
    trainer = SelectiveSFTTrainer(
        model=str(folder), args=cpu_config(tmp_path / "out", model_init_kwargs={"use_safetensors": False}),
        train_dataset=demo_dataset(5),
    )
    assert trainer.select().scores.shape == (5,)


def test_a_missing_local_model_path_is_refused_before_loading(demo_dataset, tmp_path):
    with pytest.raises(ModelSourceError, match=r"Model path '.*/nope' does not exist"):
        make_trainer(str(tmp_path / "nope"), demo_dataset(5), tmp_path / "out")
    with pytest.raises(ModelSourceError, match="Model path './no/such/model' does not exist"):
        make_trainer("./no/such/model", demo_dataset(5), tmp_path / "out")


def test_a_torn_last_line_of_the_store_is_dropped_and_that_sample_scored_again(tiny_llama, demo_dataset, tmp_path, caplog):
    dataset = demo_dataset(6)
    clean = make_trainer(tiny_llama, dataset, tmp_path).select()
    store = tmp_path / "selection" / "store" / "rank0.jsonl"
    lines = store.read_text().splitlines(keepends=True)
    store.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])  # a write cut off mid-line
    with caplog.at_level(logging.WARNING, logger="selectit_trl.store.ledger"):
        again = make_trainer(tiny_llama, dataset, tmp_path).select()
    assert "Dropped 1 incomplete or damaged line" in caplog.text and "Cut a torn last line" in caplog.text
    assert again.summary.scored_this_run == {tiny_llama: 1}
    assert again.scores.tolist() == clean.scores.tolist()  # bit for bit: the sample ran in the same batch as before
    assert [json.loads(line)["tokens"] for line in store.read_text().splitlines()] == [
        json.loads(line)["tokens"] for line in lines
    ]


def test_a_record_of_the_wrong_shape_is_rejected(tiny_llama, demo_dataset, tmp_path):
    dataset = demo_dataset(6)
    clean = make_trainer(tiny_llama, dataset, tmp_path).select()
    store = tmp_path / "selection" / "store" / "rank0.jsonl"
    records = [json.loads(line) for line in store.read_text().splitlines()]
    records[2]["probs"] = records[2]["probs"][:1]  # one prompt's ratings instead of K
    records[4]["probs"][0][0] = float("nan")
    store.write_text("".join(json.dumps(r) + "\n" for r in records))
    again = make_trainer(tiny_llama, dataset, tmp_path).select()
    assert again.summary.scored_this_run == {tiny_llama: 2}
    assert again.scores.tolist() == clean.scores.tolist()


def test_unbatched_reference_is_unaffected_by_the_fault_wrapper(tiny_llama, tokenizer):
    """The out-of-memory wrapper passes every call below its limit through unchanged."""
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    sequence = [[tokenizer.bos_token_id or 1, 5, 6, 7]]
    ids = score_token_ids(tokenizer, 5)
    plain = last_token_probs(model, sequence, ids, 0)
    model.forward = _OutOfMemoryAbove(model, limit=100)
    assert np.array_equal(last_token_probs(model, sequence, ids, 0), plain)


def test_remote_code_is_off_unless_asked_for(tmp_path):
    assert cpu_config(tmp_path).trust_remote_code is False


def test_text_in_a_dataset_is_never_evaluated(tiny_llama, tokenizer, tmp_path):
    """Template syntax and Python in a row reach the model as the characters they are, and run nowhere."""
    marker = tmp_path / "ran"
    hostile = [
        {"instruction": "{{ raise_exception('template ran') }}{% for x in range(3) %}x{% endfor %}", "input": "",
         "output": f"__import__('pathlib').Path({str(marker)!r}).touch()"},
        {"instruction": "${HOME} $(touch " + str(marker) + ")", "input": "", "output": "eval('1+1')"},
    ] * 3
    result = make_trainer(tiny_llama, Dataset.from_list(hostile), tmp_path / "out").select()
    assert not marker.exists() and np.isfinite(result.scores).all()
    requests = build_requests([RatingSample(r["instruction"], r["output"]) for r in hostile[:2]], load_prompts(1, 5), tokenizer)
    rendered = tokenizer.decode(requests[0].prefix)
    assert hostile[0]["instruction"] in rendered and hostile[0]["output"] in rendered


def test_a_selection_from_an_earlier_version_is_scored_again(tiny_llama, demo_dataset, tmp_path):
    """Version 0.1 kept its probabilities in scores.jsonl only, keyed by the whole dataset; there is no store to
    reuse, so everything is scored again, and the old files are replaced by complete new ones."""
    dataset = demo_dataset(6)
    clean = make_trainer(tiny_llama, dataset, tmp_path).select()
    shutil.rmtree(tmp_path / "selection" / "store")
    summary_path = tmp_path / "selection" / "summary.json"
    summary = json.loads(summary_path.read_text())
    summary["scoring_key"]["models"] = [m["id"] for m in summary["scoring_key"]["models"]]  # the 0.1 layout: bare ids
    summary_path.write_text(json.dumps(summary))
    again = make_trainer(tiny_llama, dataset, tmp_path).select()
    assert again.summary.scored_this_run == {tiny_llama: 6}
    assert again.scores.tolist() == clean.scores.tolist()


def test_a_garbled_summary_is_replaced_from_the_store(tiny_llama, demo_dataset, tmp_path, caplog):
    dataset = demo_dataset(6)
    clean = make_trainer(tiny_llama, dataset, tmp_path).select()
    (tmp_path / "selection" / "summary.json").write_text('{"format_version": 1, "scoring_key": {"data')
    with caplog.at_level(logging.WARNING, logger="selectit_trl.store.outputs"):
        assert read_summary(tmp_path) is None
    assert "cannot be read" in caplog.text
    again = make_trainer(tiny_llama, dataset, tmp_path).select()
    assert again.reused and again.scores.tolist() == clean.scores.tolist()
    assert read_summary(tmp_path)["counts"] == {"total": 6, "selected": 1}


def test_a_whole_last_record_without_its_newline_is_not_trusted_and_scored_again(tiny_llama, demo_dataset, tmp_path):
    """A kill between a record's last byte and its newline: readers and the writer must agree to drop it."""
    dataset = demo_dataset(6)
    clean = make_trainer(tiny_llama, dataset, tmp_path).select()
    store = tmp_path / "selection" / "store" / "rank0.jsonl"
    store.write_bytes(store.read_bytes()[:-1])
    again = make_trainer(tiny_llama, dataset, tmp_path).select()
    assert again.summary.scored_this_run == {tiny_llama: 1}
    assert again.scores.tolist() == clean.scores.tolist()
    assert store.read_bytes().endswith(b"\n") and len(store.read_text().splitlines()) == 6


def test_damaged_records_that_parse_are_dropped_not_fatal(tmp_path):
    from selectit_trl.measures.ratings import Ratings
    from selectit_trl.store.ledger import read_store

    folder = tmp_path / "selection" / "store"
    folder.mkdir(parents=True)
    good = {"model": "m", "tokens": "t0", "probs": [[0.5, 0.25]]}
    damaged = [
        {"model": ["m"], "tokens": "t1", "probs": [[0.5, 0.25]]},  # an unhashable key
        {"model": "m", "tokens": "t2", "probs": [[10**400, 0.25]]},  # a number too large for a float
        {"model": "m", "tokens": "t3", "probs": [[True, 0.25]]},  # a boolean is no probability
        {"model": "m", "tokens": "t4", "probs": [[0.5], [0.5, 0.5]]},  # ragged
    ]
    lines = [json.dumps(good)] + [json.dumps(r) for r in damaged] + ["[" * 100_000]
    (folder / "rank0.jsonl").write_text("\n".join(lines) + "\n")
    assert list(read_store(tmp_path, whole=Ratings.whole)) == [("m", "t0")]


class _ShapeLog:
    """Records the shape of every forward pass's input ids, and passes the call through unchanged."""

    def __init__(self, model):
        self.forward, self.shapes = model.forward, []

    def __call__(self, input_ids=None, **kwargs):
        self.shapes.append(tuple(input_ids.shape))
        return self.forward(input_ids=input_ids, **kwargs)


@pytest.mark.parametrize("share_prefix", [True, False])
def test_a_missing_sample_runs_again_in_the_very_batch_width_and_row_its_plan_gave_it(
        tiny_llama, tokenizer, demo_rows, tmp_path, share_prefix):
    """On CPUs without AMX the floats of a forward pass depend on the batch's shape, so exactness on resume needs
    the batch itself again: the rows, their order and the padded width that the first plan gave them."""
    from selectit_trl.engine.scoring import iter_score_batches
    from selectit_trl.measures.measurer import StorePlanBook
    from selectit_trl.measures.ratings import token_hashes
    from selectit_trl.store.ledger import read_plans

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32, attn_implementation="sdpa").eval()
    log = model.forward = _ShapeLog(model)
    samples = [RatingSample(r["instruction"], r["output"]) for r in demo_rows[:26]]
    requests = build_requests(samples, load_prompts(2, 5), tokenizer)
    ids, pad = score_token_ids(tokenizer, 5), tokenizer.pad_token_id
    keys = token_hashes(requests, ids)

    def run(count, done):
        book = StorePlanBook(tmp_path, 0, "fingerprint", "ratings", keys[:count], read_plans(tmp_path))
        log.shapes.clear()
        batches = list(iter_score_batches(model, requests[:count], ids, pad, max_batch_tokens=700 if share_prefix else 2000,
                                          progress=False, done=done, plan_book=book, share_prefix=share_prefix))
        # The batches' own passes come last: the preamble and the check of prefix sharing run first.
        return ([b for b, _ in batches], {i: v for b, values in batches for i, v in zip(b, values)},
                log.shapes[len(log.shapes) - len(batches):])

    full, values, shapes = run(24, None)
    assert len(full) > 2 and all(len(b) > 2 for b in (full[0], full[-1])), full
    done = np.ones(24, dtype=bool)
    done[[full[0][1], full[-1][-1]]] = False  # a sample of the first batch and one of the last, as a torn line leaves
    again, again_values, again_shapes = run(24, done)
    assert again == [full[0], full[-1]]  # whole batches, rows in the same order
    assert again_shapes == [shapes[0], shapes[-1]]  # at the same padded width
    assert all(np.array_equal(again_values[i], values[i]) for b in again for i in b)

    # Rows new to the data are no plan's: they are planned among themselves, not with the rows already scored.
    added, _, _ = run(26, np.arange(26) < 24)
    assert sorted(i for b in added for i in b) == [24, 25]


def test_a_planned_batch_over_the_budget_now_is_planned_again_unless_part_of_it_is_stored(tiny_llama, tokenizer,
                                                                                            demo_rows, tmp_path):
    """A lower budget (after running out of memory, or on another device) holds for a resumed run too, except where
    a batch is partly stored: its missing samples are exact only in that batch."""
    from selectit_trl.engine.batching import bucket_width
    from selectit_trl.engine.preamble import common_leading_tokens
    from selectit_trl.engine.scoring import iter_score_batches, packed_width
    from selectit_trl.measures.measurer import StorePlanBook
    from selectit_trl.measures.ratings import token_hashes
    from selectit_trl.store.ledger import read_plans

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32, attn_implementation="sdpa").eval()
    requests = build_requests([RatingSample(r["instruction"], r["output"]) for r in demo_rows[:12]], load_prompts(2, 5),
                              tokenizer)
    ids, keys = score_token_ids(tokenizer, 5), token_hashes(requests, score_token_ids(tokenizer, 5))
    preamble = common_leading_tokens([r.prefix for r in requests])  # cached once; the rows hold what follows it
    width = [bucket_width(packed_width(r.without_leading(preamble))) for r in requests]

    def run(budget, done, store):
        book = StorePlanBook(store, 0, "fingerprint", "ratings", keys, read_plans(store))
        return [b for b, _ in iter_score_batches(model, requests, ids, tokenizer.pad_token_id, max_batch_tokens=budget,
                                                 progress=False, done=done, plan_book=book)]

    planned = run(2000, None, tmp_path / "a")  # recorded; say the run was killed before it stored anything
    large = max(planned, key=len)
    assert len(large) * max(width[i] for i in large) > 400
    again = run(400, None, tmp_path / "a")
    assert sorted(i for b in again for i in b) == list(range(12))
    assert all(len(b) == 1 or len(b) * max(width[i] for i in b) <= 400 for b in again)

    assert run(2000, None, tmp_path / "b") == planned
    partly = np.ones(12, dtype=bool)
    partly[large[1:]] = False  # the large batch's first sample was stored before the kill
    assert run(400, partly, tmp_path / "b") == [large]


def test_the_latest_plan_of_a_sample_wins_and_a_batch_that_lost_a_sample_is_not_replayed(tmp_path):
    from selectit_trl.store.ledger import append_plan, read_plans

    append_plan(tmp_path, 0, "m", "ratings", "whole-rows", [(64, ("a", "b", "c")), (32, ("d", "e"))])
    append_plan(tmp_path, 1, "m", "ratings", "whole-rows", [(64, ("c",))])  # c planned again, alone (out of memory)
    append_plan(tmp_path, 0, "m", "ifd", "target-rows", [(16, ("a",))])
    (tmp_path / "selection" / "store" / "plans" / "rank1.jsonl").open("a").write('{"model": "m", "kind": "rat')
    assert read_plans(tmp_path) == {
        ("m", "ratings", "whole-rows"): [(32, ("d", "e")), (64, ("c",))],
        ("m", "ifd", "target-rows"): [(16, ("a",))],
    }
    assert read_plans(tmp_path, {"other"}) == {}


def test_two_writers_on_one_store_file_are_refused(tmp_path):
    from selectit_trl.errors import StoreBusy
    from selectit_trl.store.ledger import StoreWriter

    with StoreWriter(tmp_path):
        with pytest.raises(StoreBusy, match="two runs share this output_dir"):
            StoreWriter(tmp_path)
    with StoreWriter(tmp_path) as writer:  # released with the first
        writer.append([{"model": "m", "tokens": "t", "probs": [[0.5, 0.5]]}])


def test_overwrite_sets_the_store_aside_once_for_select_then_train(tiny_llama, demo_dataset, tmp_path):
    dataset = demo_dataset(8)
    make_trainer(tiny_llama, dataset, tmp_path).select()
    trainer = make_trainer(tiny_llama, dataset, tmp_path, selection_overwrite=True)
    assert trainer.select().summary.scored_this_run == {tiny_llama: 8}
    trainer.train()
    assert trainer.selection_result.reused  # train() reuses what select() just scored
    assert len(list((tmp_path / "selection").glob("store.replaced-*"))) == 1


def test_pre_tokenized_rows_that_decode_to_nothing_are_taken_as_sft_trainer_takes_them(tiny_llama, tokenizer,
                                                                                          tmp_path):
    """Their rating view is decoded text, which special tokens alone leave empty; SFTTrainer still trains such rows,
    so construction accepts them, and only a selection that could keep none of them is refused when it starts."""
    special = tokenizer.eos_token_id
    rows = Dataset.from_list([{"input_ids": [special] * 4, "completion_mask": [0, 0, 1, 1]}] * 4)
    trainer = make_trainer(tiny_llama, rows, tmp_path, selection_ratio=0.5)
    assert [s.response for s in trainer.rating_samples] == [""] * 4
    with pytest.raises(DatasetError, match=r"^Every one of the 4 rows has an empty response"):
        trainer.select()
    assert not (tmp_path / "selection" / "scores.jsonl").exists()
