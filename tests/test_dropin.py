"""SelectiveSFTTrainer as a drop-in for SFTTrainer: every dataset shape TRL trains on is rated, selected and
trained, and TRL receives the user's own kept rows, byte for byte, every column included.

The rows TRL receives are read by wrapping the real `SFTTrainer._prepare_dataset` (it still runs): what it is
given in train() is exactly what TRL trains on.
"""

import json
from pathlib import Path

import pytest
import torch
import trl
from conftest import cpu_config
from datasets import Dataset
from peft import LoraConfig
from trl import SFTTrainer

from selectit_trl import SelectiveSFTTrainer
from selectit_trl.data.rows import RatingSample
from selectit_trl.errors import DatasetError, SelectionConfigError
from selectit_trl.store.outputs import read_scores

LORA = dict(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
ROWS = 10


@pytest.fixture
def prepared(monkeypatch):
    """Every (dataset name, dataset) that TRL's `_prepare_dataset` is given, in call order."""
    calls = []
    original = SFTTrainer._prepare_dataset

    def spy(self, dataset, processing_class, args, packing, formatting_func, dataset_name):
        calls.append((dataset_name, dataset))
        return original(self, dataset, processing_class, args, packing, formatting_func, dataset_name)

    monkeypatch.setattr(SFTTrainer, "_prepare_dataset", spy)
    return calls


def _facts(i: int) -> tuple[str, str]:
    return f"What is {i} plus {i}?", f"{i} plus {i} is {2 * i}."


def _text_rows(tokenizer):
    return [{"text": f"{q} {a}", "source": f"doc-{i}"} for i, (q, a) in enumerate(map(_facts, range(ROWS)))]


def _field_rows(tokenizer):
    return [{"body": f"{q} {a}", "n": i} for i, (q, a) in enumerate(map(_facts, range(ROWS)))]


def _own_columns(tokenizer):
    return [{"question": q, "answer": a, "n": i} for i, (q, a) in enumerate(map(_facts, range(ROWS)))]


def _tokenized_rows(tokenizer, mask: str | None = None):
    rows = []
    for q, a in map(_facts, range(ROWS)):
        prompt, answer = tokenizer(q)["input_ids"], tokenizer(" " + a)["input_ids"]
        row = {"input_ids": prompt + answer}
        if mask == "completion_mask":
            row[mask] = [0] * len(prompt) + [1] * len(answer)
        elif mask == "labels":
            row[mask] = [-100] * len(prompt) + answer
        rows.append(row)
    return rows


def _conversation_rows(tokenizer):
    """Multi-turn conversations with TRL's optional columns, which must reach TRL untouched."""
    rows = []
    for i, (q, a) in enumerate(map(_facts, range(ROWS))):
        rows.append({
            "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a},
                         {"role": "user", "content": "And doubled?"}, {"role": "assistant", "content": str(4 * i)}],
            "chat_template_kwargs": {"custom": f"value-{i}"},
        })
    return rows


def _prompt_completion_rows(tokenizer):
    return [{"prompt": q, "completion": a, "n": i} for i, (q, a) in enumerate(map(_facts, range(ROWS)))]


SHAPES = {
    "text": (_text_rows, {}, None),
    "dataset_text_field": (_field_rows, {"dataset_text_field": "body"}, None),
    "formatting_func": (_own_columns, {}, lambda row: f"Q: {row['question']}\nA: {row['answer']}"),
    "pretokenized": (_tokenized_rows, {}, None),
    "pretokenized_completion_mask": (lambda t: _tokenized_rows(t, "completion_mask"), {}, None),
    "pretokenized_labels": (lambda t: _tokenized_rows(t, "labels"), {}, None),
    "conversations_with_chat_template_kwargs": (_conversation_rows, {}, None),
    "prompt_completion": (_prompt_completion_rows, {}, None),
}


def _table(dataset: Dataset):
    return dataset.flatten_indices().data.table


@pytest.mark.parametrize("shape", SHAPES)
def test_each_shape_trl_trains_on_is_selected_and_trl_gets_the_kept_rows_unchanged(shape, tiny_llama, tokenizer,
                                                                                    tmp_path, prepared):
    make_rows, settings, formatting_func = SHAPES[shape]
    dataset = Dataset.from_list(make_rows(tokenizer))
    trainer = SelectiveSFTTrainer(tiny_llama, cpu_config(tmp_path, **settings), train_dataset=dataset,
                                  peft_config=LoraConfig(**LORA), formatting_func=formatting_func)
    lora_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
    trainer.train()

    kept = trainer.selection_result.kept_indices
    assert len(kept) == int(ROWS * trainer.args.selection_ratio) > 0  # the default ratio
    assert [r["index"] for r in read_scores(tmp_path) if r["selected"]] == kept
    # What TRL was given to train on: the user's kept rows, the same Arrow table, every column.
    trained = [d for name, d in prepared if name == "train"][-1]
    assert trained.column_names == dataset.column_names
    assert _table(trained).equals(_table(dataset.select(kept)))
    assert len(trainer.train_dataset) == len(kept)
    assert any(not torch.equal(before, trainer.model.get_parameter(n)) for n, before in lora_before.items())


def test_rows_with_no_instruction_are_rated_as_whole_texts(tiny_llama, tokenizer, tmp_path):
    dataset = Dataset.from_list(_text_rows(tokenizer))
    trainer = SelectiveSFTTrainer(tiny_llama, cpu_config(tmp_path), train_dataset=dataset)
    assert trainer.dataset_format == "text"
    assert trainer.rating_samples == [RatingSample(None, row["text"]) for row in _text_rows(tokenizer)]
    named = SelectiveSFTTrainer(tiny_llama, cpu_config(tmp_path / "named", selection_dataset_format="prompt_completion",
                                                       completion_only_loss=False),
                                train_dataset=Dataset.from_list(_own_columns(tokenizer)).rename_columns(
                                    {"question": "prompt", "answer": "completion"}),
                                formatting_func=lambda row: row["prompt"] + row["completion"])
    # A named format says how the rows are rated, while TRL still formats them with the function.
    assert named.rating_samples[3] == RatingSample(*_facts(3))


@pytest.mark.parametrize("strategy", ["ifd", "rifd", "selectit:0.5,ifd:0.5"])
def test_ifd_needs_instructions_and_whole_texts_have_none(strategy, tiny_llama, tokenizer, tmp_path):
    dataset = Dataset.from_list(_text_rows(tokenizer))
    with pytest.raises(SelectionConfigError, match=r"need an instruction.*Use one of selectit, length, random"):
        SelectiveSFTTrainer(tiny_llama, cpu_config(tmp_path, selection_strategy=strategy), train_dataset=dataset)


def test_the_pool_is_prepared_once_on_the_kept_rows_unless_it_is_read_first(tiny_llama, tokenizer, tmp_path, prepared):
    dataset = Dataset.from_list(_text_rows(tokenizer))
    trainer = SelectiveSFTTrainer(tiny_llama, cpu_config(tmp_path), train_dataset=dataset)
    # At construction TRL prepares one row only, so that its checks of the data run as early as SFTTrainer's.
    assert [(name, len(d)) for name, d in prepared] == [("train", 1)]
    trainer.train()
    kept = trainer.selection_result.kept_indices
    assert [(name, len(d)) for name, d in prepared] == [("train", 1), ("train", len(kept))]

    # Read before train(), train_dataset is the whole pool prepared, as SFTTrainer gives it.
    prepared.clear()
    reader = SelectiveSFTTrainer(tiny_llama, cpu_config(tmp_path / "read"), train_dataset=dataset)
    assert len(reader.train_dataset) == ROWS and "input_ids" in reader.train_dataset.column_names
    assert [(name, len(d)) for name, d in prepared] == [("train", 1), ("train", ROWS)]


def test_an_iterable_dataset_is_rated_in_one_pass_and_filtered_to_the_kept_rows_in_a_second(tiny_llama, tokenizer,
                                                                                              tmp_path, prepared):
    rows = _text_rows(tokenizer)
    complete_passes = []

    def generate():
        yield from rows
        complete_passes.append(1)

    iterable = Dataset.from_list(rows).to_iterable_dataset()  # same rows, to compare the scores with
    streamed = SelectiveSFTTrainer(tiny_llama, cpu_config(tmp_path / "stream"), train_dataset=iterable)
    in_memory = SelectiveSFTTrainer(tiny_llama, cpu_config(tmp_path / "memory"), train_dataset=Dataset.from_list(rows))
    assert streamed.rating_samples == in_memory.rating_samples
    streamed.train()
    in_memory.train()
    kept = streamed.selection_result.kept_indices
    assert kept == in_memory.selection_result.kept_indices
    trained = [d for name, d in prepared if name == "train"][-1]  # filtered, before TRL's own preparation
    assert list(trained) == [rows[i] for i in kept]

    from datasets import IterableDataset

    generated = IterableDataset.from_generator(generate)
    SelectiveSFTTrainer(tiny_llama, cpu_config(tmp_path / "gen"), train_dataset=generated)
    # Construction reads the whole stream once; TRL's and the format's checks read its first row only.
    assert len(complete_passes) == 1


def test_an_iterable_dataset_must_give_the_same_rows_on_its_second_pass(tiny_llama, tokenizer, tmp_path):
    rows = _text_rows(tokenizer)
    shuffled = Dataset.from_list(rows).to_iterable_dataset().shuffle(seed=0, buffer_size=4)
    with pytest.raises(DatasetError, match="iterable train_dataset is shuffled"):
        SelectiveSFTTrainer(tiny_llama, cpu_config(tmp_path), train_dataset=shuffled)

    from datasets import IterableDataset

    passes = []

    def changing():  # a source that gives other rows each time it is read
        passes.append(1)
        yield from (rows if len(passes) <= 3 else rows[::-1])

    trainer = SelectiveSFTTrainer(tiny_llama, cpu_config(tmp_path / "changing", max_steps=1),
                                  train_dataset=IterableDataset.from_generator(changing))
    with pytest.raises(DatasetError, match="gave another row at position"):
        trainer.train()

    once = iter(rows)  # a one-shot source: the second pass finds it exhausted

    def one_shot():
        yield from once

    with pytest.raises(DatasetError, match="cannot be iterated twice: .* reading it again gave nothing"):
        SelectiveSFTTrainer(tiny_llama, cpu_config(tmp_path / "once"), train_dataset=IterableDataset.from_generator(one_shot))


def test_tool_call_conversations_select_and_train_with_their_tools(tiny_llama, tokenizer, tmp_path, prepared):
    rows = []
    for i, (q, a) in enumerate(map(_facts, range(ROWS))):
        call = {"type": "function", "function": {"name": "add", "arguments": {"a": i, "b": i}}}
        rows.append({
            "messages": [{"role": "user", "content": q}, {"role": "assistant", "tool_calls": [call]},
                         {"role": "tool", "name": "add", "content": str(2 * i)}, {"role": "assistant", "content": a}],
            "tools": json.dumps([{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]),
        })
    dataset = Dataset.from_list(rows)
    # A template that renders tool calls, given as SFTTrainer takes one.
    template = Path(trl.__file__).parent / "chat_templates" / "qwen2_5.jinja"
    trainer = SelectiveSFTTrainer(tiny_llama, cpu_config(tmp_path, chat_template_path=str(template)), train_dataset=dataset)
    assert trainer.rating_samples[2].response == _facts(2)[1]
    assert '"name": "add"' in trainer.rating_samples[2].instruction
    trainer.train()
    trained = [d for name, d in prepared if name == "train"][-1]
    assert _table(trained).equals(_table(dataset.select(trainer.selection_result.kept_indices)))
