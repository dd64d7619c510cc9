"""SelectiveSFTTrainer end to end on a tiny random Llama: files, subset, which weights moved, resume."""

import json
import math

import pytest
import torch
from conftest import cpu_config
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM

from selectit_trl import SelectiveSFTTrainer
from selectit_trl.selection import pipeline as selection
from selectit_trl.store.outputs import read_scores, read_summary

LORA = dict(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])


def make_trainer(model_path, dataset, output_dir, **overrides):
    return SelectiveSFTTrainer(
        model=model_path, args=cpu_config(output_dir, **overrides), train_dataset=dataset, peft_config=LoraConfig(**LORA)
    )


def forbid_scoring(*args, **kwargs):
    raise AssertionError("scored again")


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_train_selects_scores_and_trains_lora_only(tiny_llama, demo_dataset, tmp_path):
    dataset = demo_dataset(30)
    trainer = make_trainer(tiny_llama, dataset, tmp_path, selection_ratio=0.3)
    before = snapshot(trainer.model)
    trainer.train()

    # the subset
    assert len(trainer.train_dataset) == math.floor(30 * 0.3) == 9
    records = read_scores(tmp_path)
    assert [r["index"] for r in records] == list(range(30))
    assert sum(r["selected"] for r in records) == 9
    kept = [r["index"] for r in records if r["selected"]]
    assert kept == trainer.selection_result.kept_indices

    # the contract's fields
    model_id = tiny_llama
    for r in records:
        assert set(r) >= {"index", "score", "selected", "sentence_scores", "token_scores", "probs"}
        assert list(r["sentence_scores"]) == [model_id]
        assert len(r["token_scores"][model_id]) == 3
        assert [len(row) for row in r["probs"][model_id]] == [5, 5, 5]
        assert r["score"] == r["sentence_scores"][model_id]
    threshold = min(r["score"] for r in records if r["selected"])
    assert all(r["score"] <= threshold for r in records if not r["selected"])

    summary = read_summary(tmp_path)
    assert summary["counts"] == {"total": 30, "selected": 9}
    assert summary["models"][0]["id"] == model_id and summary["models"][0]["weight"] == 1.0
    plain = AutoModelForCausalLM.from_pretrained(tiny_llama)
    assert summary["models"][0]["num_parameters"] == sum(p.numel() for p in plain.parameters())
    assert summary["scoring_seconds"] > 0
    assert summary["selected_indices_sha256"] == selection.indices_hash(kept)
    assert summary["selection_config"]["selection_ratio"] == 0.3

    # which weights moved
    after = dict(trainer.model.named_parameters())
    lora_changed = [n for n in before if "lora_" in n and not torch.equal(before[n], after[n])]
    base_changed = [n for n in before if "lora_" not in n and not torch.equal(before[n], after[n])]
    assert lora_changed and not base_changed
    assert len(lora_changed) == len([n for n in before if "lora_B" in n or "lora_A" in n])


def test_the_trained_rows_are_the_selected_rows(tiny_llama, demo_dataset, tmp_path, tokenizer):
    dataset = demo_dataset(20)
    trainer = make_trainer(tiny_llama, dataset, tmp_path, selection_max_samples=4)
    trainer.train()
    kept = trainer.selection_result.kept_indices
    assert len(kept) == 4 and kept != [0, 1, 2, 3]
    trained = [tokenizer.decode(ids) for ids in trainer.train_dataset["input_ids"]]
    assert len(trained) == 4
    for text, i in zip(trained, kept):
        assert dataset[i]["instruction"] in text and dataset[i]["output"] in text


def test_packing(tiny_llama, demo_dataset, tmp_path):
    trainer = make_trainer(tiny_llama, demo_dataset(20), tmp_path, packing=True, selection_ratio=0.5)
    trainer.train()
    assert trainer.state.global_step == 2
    assert read_summary(tmp_path)["counts"]["selected"] == 10
    # packed: the 10 kept rows are concatenated into fewer, longer training sequences
    assert len(trainer.train_dataset) < 10


def test_resume_reuses_the_selection_without_scoring(tiny_llama, demo_dataset, tmp_path, monkeypatch):
    dataset = demo_dataset(16)
    first = make_trainer(tiny_llama, dataset, tmp_path, save_strategy="steps", save_steps=1, max_steps=1, selection_ratio=0.5)
    first.train()
    scores_before = (tmp_path / "selection" / "scores.jsonl").read_bytes()

    def no_scoring(*args, **kwargs):
        raise AssertionError("scored again")

    monkeypatch.setattr("selectit_trl.measures.ratings.iter_score_batches", no_scoring)
    second = make_trainer(tiny_llama, dataset, tmp_path, save_strategy="steps", save_steps=1, max_steps=2, selection_ratio=0.5)
    second.train(resume_from_checkpoint=str(tmp_path / "checkpoint-1"))
    assert second.selection_result.reused
    assert second.state.global_step == 2
    assert (tmp_path / "selection" / "scores.jsonl").read_bytes() == scores_before


def test_resume_refuses_a_changed_selection(tiny_llama, demo_dataset, tmp_path):
    dataset = demo_dataset(12)
    make_trainer(tiny_llama, dataset, tmp_path, save_strategy="steps", save_steps=1, max_steps=1).train()
    changed = make_trainer(tiny_llama, dataset, tmp_path, max_steps=2, selection_ratio=0.5)
    with pytest.raises(selection.StoredSelectionMismatch, match="checkpoint was trained on"):
        changed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-1"))


def test_new_alpha_and_ratio_reuse_the_stored_probabilities(tiny_llama, demo_dataset, tmp_path, monkeypatch):
    dataset = demo_dataset(12)
    first = make_trainer(tiny_llama, dataset, tmp_path).select()
    monkeypatch.setattr("selectit_trl.measures.ratings.iter_score_batches", forbid_scoring)
    second = make_trainer(tiny_llama, dataset, tmp_path, selection_alpha=0.0, selection_ratio=0.5).select()
    assert second.reused and len(second.selected_indices) == 6
    records = read_scores(tmp_path)
    means = [sum(r["token_scores"][tiny_llama]) / 3 for r in records]
    assert [r["score"] for r in records] == pytest.approx(means, abs=1e-12)
    assert not first.reused


def test_scores_file_is_deterministic(tiny_llama, demo_dataset, tmp_path):
    dataset = demo_dataset(10)
    make_trainer(tiny_llama, dataset, tmp_path / "a").select()
    make_trainer(tiny_llama, dataset, tmp_path / "b").select()
    a = (tmp_path / "a" / "selection" / "scores.jsonl").read_bytes()
    assert a == (tmp_path / "b" / "selection" / "scores.jsonl").read_bytes()
    assert json.loads(a.splitlines()[0])["index"] == 0


def test_resume_refuses_a_subset_other_than_the_checkpoints(tiny_llama, demo_dataset, tmp_path):
    """A later re-selection in the same output_dir must not let a resumed run switch subsets."""
    dataset = demo_dataset(12)
    make_trainer(tiny_llama, dataset, tmp_path, save_strategy="steps", save_steps=1, max_steps=1).train()
    assert json.loads((tmp_path / "checkpoint-1" / "selection.json").read_text())["counts"]["selected"] == 2
    make_trainer(tiny_llama, dataset, tmp_path, selection_ratio=0.5).select()  # rewrites selection/ with ratio 0.5
    resumed = make_trainer(tiny_llama, dataset, tmp_path, max_steps=2, selection_ratio=0.5)
    with pytest.raises(selection.StoredSelectionMismatch, match="checkpoint was trained on"):
        resumed.train(resume_from_checkpoint=True)


def test_another_model_scores_and_both_stay_in_the_store(tiny_llama, tokenizer, demo_dataset, tmp_path, tmp_path_factory):
    from conftest import build_tiny_llama

    dataset = demo_dataset(6)
    first = make_trainer(tiny_llama, dataset, tmp_path).select()
    other = build_tiny_llama(tmp_path_factory.mktemp("other"), tokenizer, seed=7)
    assert make_trainer(other, dataset, tmp_path).select().summary.scored_this_run == {other: 6}
    back = make_trainer(tiny_llama, dataset, tmp_path).select()  # the first model's probabilities are still stored
    assert back.reused and back.scores.tolist() == first.scores.tolist()

    overwritten = make_trainer(tiny_llama, dataset, tmp_path, selection_overwrite=True).select()
    assert overwritten.summary.scored_this_run == {tiny_llama: 6}
    assert overwritten.scores.tolist() == first.scores.tolist()
    set_aside = list((tmp_path / "selection").glob("store.replaced-*"))
    assert len(set_aside) == 1 and (set_aside[0] / "rank0.jsonl").is_file()  # moved aside, not deleted

    # an in-memory model with no name can never be recognised, so it always scores
    unnamed = AutoModelForCausalLM.from_pretrained(tiny_llama)
    unnamed.config._name_or_path = ""
    first = SelectiveSFTTrainer(model=unnamed, args=cpu_config(tmp_path / "u"), train_dataset=dataset, processing_class=tokenizer)
    assert not first.select().reused
    assert not first.select().reused


def test_changed_prompts_or_rows_score_only_what_they_touch(tiny_llama, demo_dataset, tmp_path):
    def scored(dataset, **overrides):
        return make_trainer(tiny_llama, dataset, tmp_path, **overrides).select().summary.scored_this_run

    dataset = demo_dataset(6)
    assert scored(dataset) == {tiny_llama: 6}
    assert scored(dataset) == {}
    assert scored(dataset, selection_num_prompts=2) == {tiny_llama: 6}  # other prompts: every request changes
    assert scored(demo_dataset(7)) == {tiny_llama: 1}  # one new row, under the first prompts
    assert scored(demo_dataset(7), selection_num_prompts=2) == {tiny_llama: 1}
    assert scored(demo_dataset(7), selection_num_prompts=2, selection_use_chat_template=False) == {tiny_llama: 7}
    # Alpha and ratio change nothing that was scored.
    assert scored(demo_dataset(7), selection_alpha=0.5, selection_ratio=0.5) == {}


def test_the_same_rows_in_another_order_reuse_every_score(tiny_llama, demo_dataset, tmp_path):
    dataset = demo_dataset(8)
    first = make_trainer(tiny_llama, dataset, tmp_path).select()
    order = [5, 2, 7, 0, 3, 6, 1, 4]
    shuffled = make_trainer(tiny_llama, dataset.select(order), tmp_path).select()
    assert shuffled.reused
    assert shuffled.scores.tolist() == first.scores[order].tolist()


def test_a_damaged_scores_file_is_rewritten_from_the_store(tiny_llama, demo_dataset, tmp_path):
    dataset = demo_dataset(6)
    clean = make_trainer(tiny_llama, dataset, tmp_path).select()
    scores = tmp_path / "selection" / "scores.jsonl"
    scores.write_text("".join(scores.read_text().splitlines(keepends=True)[:4]))  # two rows lost
    again = make_trainer(tiny_llama, dataset, tmp_path).select()
    assert again.reused  # scores.jsonl is an output; the probabilities live in the store
    assert again.scores.tolist() == clean.scores.tolist()
    assert len(read_scores(tmp_path)) == 6


def test_zero_kept_rows_and_empty_data_are_refused_before_loading(tiny_llama, demo_dataset, tmp_path):
    with pytest.raises(ValueError, match="= 0 rows"):
        make_trainer(tiny_llama, demo_dataset(4), tmp_path)
    with pytest.raises(ValueError, match="no rows"):
        make_trainer(tiny_llama, demo_dataset(0), tmp_path)
    with pytest.raises(ValueError, match="holds only 10 prompts"):
        make_trainer(tiny_llama, demo_dataset(5), tmp_path, selection_num_prompts=11)


def test_conversational_and_prompt_completion_rows(tiny_llama, demo_rows, tmp_path):
    rows = demo_rows[:10]
    messages = Dataset.from_list([
        {"messages": [{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": r["output"]}]}
        for r in rows
    ])
    pairs = Dataset.from_list([{"prompt": r["instruction"], "completion": r["output"]} for r in rows])
    for name, dataset in (("messages", messages), ("pairs", pairs)):
        trainer = make_trainer(tiny_llama, dataset, tmp_path / name, selection_ratio=0.5)
        trainer.train()
        assert trainer.rating_samples[3].instruction == rows[3]["instruction"]
        assert trainer.rating_samples[3].response == rows[3]["output"]
        assert len(trainer.train_dataset) == 5 and trainer.state.global_step == 2


def test_the_signature_is_sfttrainers_in_its_order():
    """A call written for SFTTrainer, positional arguments included, means the same here."""
    import inspect

    from trl import SFTTrainer

    ours = inspect.signature(SelectiveSFTTrainer.__init__).parameters
    theirs = inspect.signature(SFTTrainer.__init__).parameters
    assert list(ours) == list(theirs)
    for name, parameter in theirs.items():
        if parameter.default is not inspect.Parameter.empty:
            assert ours[name].default == parameter.default, name
    assert ours["model"].default is None  # ours alone may leave the model out: the embedded one


def test_plain_training_arguments_are_taken_positionally_with_selection_defaults(tiny_llama, demo_dataset, tmp_path):
    from transformers import TrainingArguments

    from selectit_trl import SelectiveSFTConfig

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, max_steps=2, per_device_train_batch_size=2,
                             report_to="none", save_strategy="no", disable_tqdm=True, learning_rate=1e-2)
    before = args.to_dict()
    # Made before the trainer: a config sets up the process's accelerator state anew when it is created.
    defaults = SelectiveSFTConfig(output_dir=str(tmp_path))
    # SFTTrainer's order: model, args, data_collator, train_dataset, eval_dataset, processing_class, ...
    trainer = SelectiveSFTTrainer(tiny_llama, args, None, demo_dataset(10))
    assert isinstance(trainer.args, SelectiveSFTConfig)
    assert trainer.args.max_steps == 2 and trainer.args.learning_rate == 1e-2
    assert trainer.args.selection_ratio == defaults.selection_ratio
    assert trainer.args.selection_strategy == defaults.selection_strategy
    trainer.train()
    assert trainer.state.global_step == 2
    assert len(trainer.train_dataset) == math.floor(10 * defaults.selection_ratio)
    assert args.to_dict() == before and type(args) is TrainingArguments  # the caller's object is as it was


def test_the_callers_config_is_never_changed(tiny_llama, demo_dataset, tmp_path):
    config = cpu_config(tmp_path, model_init_kwargs={"dtype": "auto"})
    before = config.to_dict()
    SelectiveSFTTrainer(model=tiny_llama, args=config, train_dataset=demo_dataset(10))
    assert config.to_dict() == before and config.model_init_kwargs == {"dtype": "auto"}


def test_a_missing_train_dataset_is_refused_as_sfttrainer_refuses_it(tiny_llama, tmp_path):
    with pytest.raises(ValueError, match="^`train_dataset` is required"):
        SelectiveSFTTrainer(tiny_llama, cpu_config(tmp_path))


def test_an_alpaca_eval_set_is_prepared_as_the_train_set_and_evaluated(tiny_llama, demo_dataset, tmp_path):
    """Alpaca eval rows next to Alpaca train rows: once a KeyError 'text' in TRL, now evaluated each step, a dict
    of eval sets too."""
    from datasets import DatasetDict

    train, held_out = demo_dataset(20), demo_dataset(26).select(range(20, 26))
    args = cpu_config(tmp_path, eval_strategy="steps", eval_steps=1, logging_strategy="steps", logging_steps=1,
                      per_device_eval_batch_size=2, selection_ratio=0.5)
    trainer = SelectiveSFTTrainer(
        model=tiny_llama, args=args, train_dataset=train, peft_config=LoraConfig(**LORA),
        eval_dataset=DatasetDict({"held_out": held_out, "seen": train.select(range(4))}),
    )
    trainer.train()
    logged = [set(entry) for entry in trainer.state.log_history]
    assert sum("eval_held_out_loss" in keys for keys in logged) == 2
    assert sum("eval_seen_loss" in keys for keys in logged) == 2
    # the rows TRL evaluated are the eval rows in the training shape, one for one
    assert len(trainer.eval_dataset["held_out"]) == 6 and "input_ids" in trainer.eval_dataset["held_out"].column_names
