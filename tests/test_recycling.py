"""Student-selected recycling: a teacher rewrites, the model being tuned keeps each version by IFD and r-IFD."""

import json

import numpy as np
import pytest
import torch
from conftest import cpu_config
from datasets import Dataset
from test_strategies import unbatched_loss
from transformers import AutoModelForCausalLM, AutoTokenizer

from selectit_trl import SelectiveSFTTrainer, strategies
from selectit_trl.data.formats import rating_samples, resolve_format
from selectit_trl.data.rows import RatingSample
from selectit_trl.engine import generation
from selectit_trl.engine.targets import build_target_requests
from selectit_trl.engine.tokens import turn_texts
from selectit_trl.errors import SelectionConfigError
from selectit_trl.measures.rewrites import TeacherRewrites
from selectit_trl.reporting.report import write_report
from selectit_trl.selection import recycling
from selectit_trl.store.ledger import read_plans, read_store
from selectit_trl.store.outputs import read_scores, read_summary

NEW_TOKENS = 6


def test_the_student_keeps_a_harder_instruction_and_a_more_telling_response():
    usable = np.array([True, True, False, True, True])
    assert recycling.choose_instruction(np.array([0.5, 0.9, 0.1, 0.7, 0.9]), np.array([0.6, 0.8, 0.9, 0.7, 1.2]),
                                        usable).tolist() == [True, False, False, False, False]
    # higher IFD wins; a tie, an unusable rewrite or a misaligned one (IFD > 1) keeps the original
    assert recycling.choose_response(np.array([0.5, 0.9, 0.9, 0.7, 1.5]), np.array([0.4, 1.0, 0.1, 0.7, 1.2]),
                                     usable).tolist() == [True, False, False, False, False]  # lower r-IFD wins, if <= 1
    assert TeacherRewrites.whole({"model": "m", "tokens": "t", "kind": "rewrite", "text": "A new instruction."})
    assert not TeacherRewrites.whole({"model": "m", "tokens": "t", "kind": "rewrite", "text": 3})


@pytest.fixture(scope="module")
def teacher(embedded_dir) -> str:
    """The embedded model as the teacher, in fp32: a random tiny model writes nothing but newlines."""
    return embedded_dir


def unbatched_generation(model, tokenizer, text: str) -> str:
    ids = torch.as_tensor(tokenizer(text, add_special_tokens=False)["input_ids"])[None]
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def test_batched_generation_matches_one_prompt_at_a_time(teacher):
    tokenizer = AutoTokenizer.from_pretrained(teacher)
    model = AutoModelForCausalLM.from_pretrained(teacher, dtype=torch.float32).eval()
    texts = ["Name a colour.", "Explain photosynthesis to a child in a few short and simple sentences.", "Add 2 and 3."]
    prompts = [np.asarray(tokenizer(turn_texts([t], tokenizer)[0], add_special_tokens=False)["input_ids"]) for t in texts]
    batched = generation.generate(model, tokenizer, prompts, NEW_TOKENS)
    assert batched == [unbatched_generation(model, tokenizer, turn_texts([t], tokenizer)[0]) for t in texts]


def expected_versions(student_dir, teacher_dir, samples):
    """Both stages recomputed one prompt and one sample at a time."""
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32).eval()
    student = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32).eval()
    student_tokenizer = AutoTokenizer.from_pretrained(student_dir)

    def write(request: str) -> str:
        return unbatched_generation(teacher, tokenizer, turn_texts([request], tokenizer)[0])

    def ratio(sample, kind):
        request = build_target_requests([sample], student_tokenizer, kind)[0]
        losses = np.array([[unbatched_loss(student, request.contexts[c], request.target) for c in range(2)]])
        return (strategies.ifd if kind == "ifd" else strategies.rifd)(losses)[0]

    versions, chosen = [], []
    for sample in samples:
        question = write(recycling.INSTRUCTION_REQUEST.format(instruction=sample.instruction, response=sample.response))
        rewrite = RatingSample(question, write(question))
        new_ifd = ratio(rewrite, "ifd") if rewrite.instruction and rewrite.response else None
        new_instruction = new_ifd is not None and ratio(sample, "ifd") < new_ifd <= 1
        current = rewrite if new_instruction else sample
        response = write(recycling.RESPONSE_REQUEST.format(instruction=current.instruction, response=current.response))
        candidate = RatingSample(current.instruction, response)
        new_response = bool(response) and ratio(candidate, "rifd") < ratio(current, "rifd") and ratio(candidate, "rifd") <= 1
        versions.append(recycling.VERSIONS[int(new_instruction) + 2 * int(new_response)])
        chosen.append(candidate if new_response else current)
    return versions, chosen


def test_recycling_end_to_end(tiny_llama, teacher, demo_dataset, tmp_path, monkeypatch):
    dataset = demo_dataset(8)
    spec = {"model": teacher, "load_in_4bit": False, "dtype": "float32"}
    args = cpu_config(tmp_path, selection_strategy="ifd", selection_ratio=0.5, selection_teacher_model=spec,
                      selection_teacher_max_new_tokens=NEW_TOKENS, selection_teacher_batch_size=3)
    trainer = SelectiveSFTTrainer(model=tiny_llama, train_dataset=dataset, args=args)
    trainer.train()
    samples = rating_samples(dataset, resolve_format(dataset, None))
    versions, chosen = expected_versions(tiny_llama, teacher, samples)
    assert len(set(versions)) > 1, "the data should exercise more than one version"
    records = read_scores(tmp_path)
    assert [r["version"] for r in records] == versions
    for record, sample, version in zip(records, chosen, versions):
        if version == "original":
            assert "recycled" not in record
        else:
            assert record["recycled"] == {"instruction": sample.instruction, "response": sample.response}
    summary = read_summary(tmp_path)
    assert summary["recycling"]["versions"] == {v: versions.count(v) for v in recycling.VERSIONS}
    kept = [i for i, r in enumerate(records) if r["selected"]]
    assert summary["recycling"]["kept_versions"] == {v: [versions[i] for i in kept].count(v) for v in recycling.VERSIONS}
    report = write_report(tmp_path) and (tmp_path / "selection" / "report.md").read_text()
    assert f"Recycled with the teacher {teacher}: the rows took {versions.count('original')} original" in report
    # Three texts per row: new instruction, its answer, new response; all in the store.
    rewrites = [r for r in read_store(tmp_path).values() if r.get("kind") == "rewrite"]
    assert len(rewrites) == 3 * 8 and summary["scored_this_run"][f"rewrite:{teacher}"] == 3 * 8
    # The subset trained on holds each kept row's chosen version.
    tokenizer = trainer.processing_class
    trained = [tokenizer.decode(ids) for ids in trainer.train_dataset["input_ids"]]
    for text, i in zip(trained, kept):
        assert chosen[i].response in text and chosen[i].instruction in text

    def forbidden(*a, **k):
        raise AssertionError("ran again")

    real_generate = generation.generate

    monkeypatch.setattr(generation, "generate", forbidden)
    monkeypatch.setattr("selectit_trl.measures.difficulty.iter_loss_batches", forbidden)
    again = SelectiveSFTTrainer(model=tiny_llama, train_dataset=dataset, args=args).select()
    assert again.reused and again.selected_indices == trainer.selection_result.selected_indices
    assert sorted(again.recycled) == [i for i, v in enumerate(versions) if v != "original"]

    # A text lost from the store (a torn line) is generated again in the batch its plan gave it, whole, so that
    # greedy decoding sees the same padding and comes out the same; only that text is stored again.
    store = tmp_path / "selection" / "store" / "rank0.jsonl"
    lines = store.read_text().splitlines(keepends=True)
    lost = next(n for n, line in enumerate(lines) if '"kind": "rewrite"' in line)
    lost_key = json.loads(lines[lost])["tokens"]
    store.write_text("".join(lines[:lost] + lines[lost + 1:]))
    ((fingerprint, _, _), plan), = [(g, b) for g, b in read_plans(tmp_path).items() if g[1] == "rewrite"]
    (planned,) = [keys for _, keys in plan if lost_key in keys]
    calls = []
    monkeypatch.setattr(generation, "generate", lambda model, tok, prompts, n: calls.append(prompts) or real_generate(model, tok, prompts, n))
    again = SelectiveSFTTrainer(model=tiny_llama, train_dataset=dataset, args=args).select()
    assert [len(c) for c in calls] == [len(planned)] and len(planned) > 1
    restored = store.read_text().splitlines(keepends=True)
    assert sorted(restored) == sorted(lines) and again.selected_indices == trainer.selection_result.selected_indices


def test_recycling_needs_single_turn_rows(tiny_llama, teacher, tmp_path):
    rows = Dataset.from_list([{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
                              for i in range(4)])
    with pytest.raises(SelectionConfigError, match="selection_teacher_model rewrites single-turn"):
        SelectiveSFTTrainer(model=tiny_llama, train_dataset=rows, args=cpu_config(tmp_path, selection_teacher_model=teacher))
    with pytest.raises(SelectionConfigError, match="selection_teacher_model entry"):
        cpu_config(tmp_path, selection_teacher_model={"model": teacher, "colour": "red"})
