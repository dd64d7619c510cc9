"""Every dataset format: detection, the (instruction, response) that is rated, the training view, and bad rows.

Rows made here pin the exact renderings; rows taken from ../shared/data (skipped when it is absent) check that
real files in each shape go through whole.
"""

import json

import pytest
from datasets import Dataset, Features, Translation, load_dataset

from selectit_trl.data.formats import FORMATS, detect_format, rating_samples, translation_prompt
from selectit_trl.data.loading import load_translation_directions, parse_direction
from selectit_trl.data.rows import RatingSample
from selectit_trl.data.training_view import training_dataset
from selectit_trl.errors import DatasetError, RowFormatError

ROWS = {
    "alpaca": {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
    "instruction_output": {"instruction": "Name a prime.", "output": "7"},
    "messages": {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]},
    "prompt_completion": {"prompt": "Capital of France?", "completion": "Paris."},
    "sharegpt": {"conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello."}]},
    "translation": {"translation": {"de": "Guten Morgen.", "en": "Good morning."}},
    "text": {"text": "A whole text."},
}

EXPECTED = {
    "alpaca": RatingSample("Add the numbers.\n2 and 3", "5"),
    "instruction_output": RatingSample("Name a prime.", "7"),
    "messages": RatingSample("Hi?", "Hello."),
    "prompt_completion": RatingSample("Capital of France?", "Paris."),
    "sharegpt": RatingSample("Hi?", "Hello."),
    "translation": RatingSample("Translate this from German to English:\nGerman: Guten Morgen.\nEnglish:", "Good morning."),
    "text": RatingSample(None, "A whole text."),
}


# Pre-tokenized rows need a tokenizer; test_pretokenized_rows_are_decoded_and_split_where_the_mask_starts has them.
@pytest.mark.parametrize("fmt", [fmt for fmt in FORMATS if fmt != "tokenized"])
def test_each_format_is_detected_and_rated_exactly(fmt):
    dataset = Dataset.from_list([ROWS[fmt]])
    assert detect_format(dataset.column_names) == fmt
    assert rating_samples(dataset) == [EXPECTED[fmt]]
    assert rating_samples(dataset, fmt) == [EXPECTED[fmt]]


def test_no_matching_format_names_the_columns_and_the_formats():
    with pytest.raises(ValueError) as error:
        detect_format(["question", "answer"])
    message = str(error.value)
    assert "['answer', 'question']" in message
    assert all(fmt in message for fmt in FORMATS)


def test_a_named_format_must_find_its_columns():
    with pytest.raises(ValueError, match=r"sharegpt.*\['conversations'\].*\['instruction', 'output'\]"):
        rating_samples(Dataset.from_list([ROWS["instruction_output"]]), "sharegpt")


def test_multi_turn_rows_rate_the_last_assistant_turn_against_everything_before():
    turns = [("system", "Be brief."), ("human", "2+2?"), ("gpt", "4"), ("human", "Times 3?"), ("gpt", "12")]
    sharegpt = {"conversations": [{"from": f, "value": v} for f, v in turns]}
    roles = {"system": "system", "human": "user", "gpt": "assistant"}
    messages = {"messages": [{"role": roles[f], "content": v} for f, v in turns]}
    expected = RatingSample("System: Be brief.\n\nUser: 2+2?\n\nAssistant: 4\n\nUser: Times 3?", "12")
    assert rating_samples(Dataset.from_list([sharegpt])) == [expected]
    assert rating_samples(Dataset.from_list([messages])) == [expected]


def test_translation_direction_column_and_other_languages():
    rows = [
        {"translation": {"cs": None, "de": "Danke.", "en": "Thanks."}, "direction": "en-de"},
        {"translation": {"cs": "Ahoj.", "de": None, "en": "Hello."}, "direction": "cs-en"},
    ]
    assert rating_samples(Dataset.from_list(rows)) == [
        RatingSample("Translate this from English to German:\nEnglish: Thanks.\nGerman:", "Danke."),
        RatingSample("Translate this from Czech to English:\nCzech: Ahoj.\nEnglish:", "Hello."),
    ]
    assert translation_prompt("zh", "en", "你好") == "Translate this from Chinese to English:\nChinese: 你好\nEnglish:"


BAD_ROWS = [
    # (format, the rows, the start of the message): the bad row is the last one.
    ("alpaca", [ROWS["alpaca"], ROWS["alpaca"], {"instruction": "Q", "input": "", "output": None}],
     "Row 2: output is missing"),
    ("instruction_output", [{"instruction": 5, "output": "A"}], "Row 0: instruction must be a string, got int"),
    ("messages", [ROWS["messages"], ROWS["messages"], {"messages": [{"role": "user", "content": "Q"}]}],
     "Row 2: the conversation needs a user turn followed by an assistant turn"),
    ("sharegpt", [ROWS["sharegpt"], ROWS["sharegpt"],
                  {"conversations": [{"from": "human", "value": "Q"}, {"from": "robot", "value": "A"}]}],
     "Row 2: turn 1 is from 'robot'"),
    ("sharegpt", [ROWS["sharegpt"], ROWS["sharegpt"], {"conversations": [{"from": "human"}, {"from": "gpt", "value": "A"}]}],
     "Row 2: turn 0 value is missing"),
    ("messages", [{"messages": [{"role": "system", "content": "S"}, {"role": "assistant", "content": "A"}]}],
     "Row 0: the conversation needs a user turn followed by an assistant turn"),
    ("messages", [{"messages": [{"role": "user", "content": None}, {"role": "assistant", "content": "A"}]}],
     "Row 0: turn 0 content is missing"),
    ("prompt_completion", [ROWS["prompt_completion"], {"prompt": "Q", "completion": None}], "Row 1: completion is missing"),
    ("translation", [ROWS["translation"], {"translation": {"de": "a", "en": None}}],
     "Row 1: translation holds the languages ['de']"),
    ("translation", [{"translation": {"de": "a", "en": "b"}, "direction": "de-xx"}], "Row 0: unknown language code 'xx'"),
    ("translation", [{"translation": {"de": "a", "en": "b"}, "direction": "de-fr"}], "Row 0: translation has no 'fr' text"),
    ("translation", [{"translation": "de: a"}], "Row 0: translation must be a {language: text} mapping, got str"),
]


@pytest.mark.parametrize("fmt, rows, message", BAD_ROWS)
def test_a_malformed_row_is_named_by_index_with_what_is_wrong(fmt, rows, message):
    with pytest.raises(RowFormatError) as error:
        rating_samples(Dataset.from_list(rows), fmt)
    assert str(error.value).startswith(message)


def test_translation_rows_whose_direction_cannot_be_told_are_refused():
    two_pairs = Dataset.from_list([ROWS["translation"], {"translation": {"cs": "Ahoj.", "en": "Hello."}}])
    with pytest.raises(ValueError, match=r"hold 3 languages \(de, en, cs\) and no 'direction' column"):
        rating_samples(two_pairs)
    # datasets' Translation feature sorts its languages: zh-en rows would read as en -> zh.
    sorted_languages = Dataset.from_dict(
        {"translation": [{"zh": "你好", "en": "Hello"}]}, features=Features({"translation": Translation(["zh", "en"])})
    )
    with pytest.raises(ValueError, match="Translation feature, which sorts its languages"):
        rating_samples(sorted_languages)


def test_a_conversation_is_rated_on_its_last_answer_and_trains_on_every_turn():
    turns = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}, {"role": "user", "content": "Thanks"}]
    dataset = Dataset.from_list([{"messages": turns, "id": 7}])
    assert rating_samples(dataset) == [RatingSample("Q", "A")]
    # TRL's own shape: the same object, every turn and column as given.
    assert training_dataset(dataset, conversational=True) is dataset
    sharegpt = Dataset.from_list([{"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"},
                                                      {"from": "human", "value": "Thanks"}], "id": 7}])
    assert training_dataset(sharegpt, conversational=True)[0] == {"messages": turns, "id": 7}


def test_converted_rows_keep_every_column_they_do_not_read():
    row = {**ROWS["alpaca"], "source": "web", "tools": "[]"}
    trained = training_dataset(Dataset.from_list([row]), conversational=False)[0]
    assert trained == {"source": "web", "tools": "[]", "prompt": f"Instruction:\n{EXPECTED['alpaca'].instruction}\n\nResponse:\n",
                       "completion": ROWS["alpaca"]["output"]}
    translation = training_dataset(Dataset.from_list([{**ROWS["translation"], "direction": "de-en"}]), conversational=True)
    assert translation.column_names == ["direction", "prompt", "completion"]


def test_text_rows_are_rated_as_whole_texts_and_train_unchanged():
    dataset = Dataset.from_list([{"text": "One whole text.", "id": 1}, {"text": "Another.", "id": 2}])
    assert detect_format(dataset.column_names) == "text"
    assert rating_samples(dataset) == [RatingSample(None, "One whole text."), RatingSample(None, "Another.")]
    assert training_dataset(dataset, conversational=True) is dataset
    # dataset_text_field names the column, as for SFTTrainer.
    body = Dataset.from_list([{"body": "Some text."}])
    assert detect_format(body.column_names, text_field="body") == "text"
    assert rating_samples(body, text_field="body") == [RatingSample(None, "Some text.")]
    with pytest.raises(DatasetError, match="dataset_text_field"):
        detect_format(body.column_names)


def test_a_formatting_func_output_is_what_is_rated():
    dataset = Dataset.from_list([{"chosen": "Yes", "rejected": "No"}])
    samples = rating_samples(dataset, formatting_func=lambda row: f"{row['chosen']} > {row['rejected']}")
    assert samples == [RatingSample(None, "Yes > No")]
    with pytest.raises(RowFormatError, match="Row 0: formatting_func's output must be a string"):
        rating_samples(dataset, formatting_func=lambda row: [row["chosen"]])


def test_pretokenized_rows_are_decoded_and_split_where_the_mask_starts(tokenizer):
    prompt, answer = tokenizer("Name a prime.")["input_ids"], tokenizer(" Seven.")["input_ids"]
    ids = prompt + answer
    mask = [0] * len(prompt) + [1] * len(answer)
    labels = [-100] * len(prompt) + answer
    expected = RatingSample(tokenizer.decode(prompt), tokenizer.decode(answer))
    for column, value in (("completion_mask", mask), ("assistant_masks", mask), ("labels", labels)):
        dataset = Dataset.from_list([{"input_ids": ids, column: value}])
        assert detect_format(dataset.column_names) == "tokenized"
        assert rating_samples(dataset, tokenizer=tokenizer) == [expected], column
        assert training_dataset(dataset, conversational=True) is dataset
    bare = Dataset.from_list([{"input_ids": ids, "attention_mask": [1] * len(ids)}])
    assert rating_samples(bare, tokenizer=tokenizer) == [RatingSample(None, "Name a prime. Seven.")]
    with pytest.raises(RowFormatError, match="Row 0: completion_mask has 1 entries for"):
        rating_samples(Dataset.from_list([{"input_ids": ids, "completion_mask": [1]}]), tokenizer=tokenizer)


def test_tool_calls_are_rated_as_their_json():
    call = {"type": "function", "function": {"name": "start_timer", "arguments": {"duration": 600}}}
    turns = [{"role": "user", "content": "Set a timer."}, {"role": "assistant", "tool_calls": [call]},
             {"role": "tool", "name": "start_timer", "content": "600"}, {"role": "assistant", "content": "Done."}]
    # Through Arrow every turn carries every key, the missing ones None, as in TRL's toolcall dataset.
    dataset = Dataset.from_list([{"messages": turns, "tools": ["start_timer"]}, {"messages": turns[:2], "tools": []}])
    first, second = rating_samples(dataset)
    assert first.response == "Done."
    assert first.instruction.split("\n\n")[1] == "Assistant: " + json.dumps(call)
    assert second == RatingSample("Set a timer.", json.dumps(call))
    assert training_dataset(dataset, conversational=True) is dataset


def test_prompt_completion_turns_become_text_without_a_chat_template():
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": "Q"}], "completion": [{"role": "assistant", "content": "A"}]}])
    assert training_dataset(dataset, conversational=True)[0] == dataset[0]
    assert training_dataset(dataset, conversational=False)[0] == {"prompt": "Instruction:\nQ\n\nResponse:\n", "completion": "A"}
    strings = Dataset.from_list([ROWS["prompt_completion"]])
    assert training_dataset(strings, conversational=False)[0] == ROWS["prompt_completion"]


def test_training_view_of_each_format():
    translation = training_dataset(Dataset.from_list([ROWS["translation"]]), conversational=True)
    # ALMA's prompt as plain text, target appended as it is, whatever the tokenizer.
    assert translation[0] == {"prompt": EXPECTED["translation"].instruction, "completion": "Good morning."}
    sharegpt = training_dataset(Dataset.from_list([ROWS["sharegpt"]]), conversational=True)
    assert sharegpt[0] == {"messages": ROWS["messages"]["messages"]}
    plain = training_dataset(Dataset.from_list([ROWS["sharegpt"]]), conversational=False)
    assert plain[0] == {"prompt": "Instruction:\nHi?\n\nResponse:\n", "completion": "Hello."}
    messages_plain = training_dataset(Dataset.from_list([ROWS["messages"]]), conversational=False)
    assert messages_plain[0] == plain[0]
    messages = training_dataset(Dataset.from_list([ROWS["messages"]]), conversational=True)
    assert messages[0] == ROWS["messages"]
    wizard = training_dataset(Dataset.from_list([ROWS["instruction_output"]]), conversational=True)
    assert wizard[0] == {"prompt": [{"role": "user", "content": "Name a prime."}],
                         "completion": [{"role": "assistant", "content": "7"}]}


# --- real rows from ../shared/data ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def alpaca_rows(shared_data_dir):
    path = shared_data_dir / "alpaca_subsets" / "llamafactory_alpaca_en_demo.json"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return json.loads(path.read_text(encoding="utf-8"))[:50]


@pytest.fixture(scope="module")
def alma_dir(shared_data_dir):
    path = shared_data_dir / "alma" / "human_written_data"
    if not path.is_dir():
        pytest.skip(f"{path} not found")
    return path


def test_real_rows_in_every_instruction_shape(alpaca_rows):
    """The same real Alpaca rows, reshaped into each instruction format, rate to the same pairs."""
    expected = [RatingSample(r["instruction"] + ("\n" + r["input"] if r["input"] else ""), r["output"]) for r in alpaca_rows]
    shapes = {
        "alpaca": alpaca_rows,
        "instruction_output": [{"instruction": s.instruction, "output": s.response} for s in expected],
        "messages": [{"messages": [{"role": "user", "content": s.instruction}, {"role": "assistant", "content": s.response}]}
                     for s in expected],
        "prompt_completion": [{"prompt": s.instruction, "completion": s.response} for s in expected],
        "sharegpt": [{"conversations": [{"from": "human", "value": s.instruction}, {"from": "gpt", "value": s.response}]}
                     for s in expected],
    }
    for fmt, rows in shapes.items():
        dataset = Dataset.from_list(rows)
        assert detect_format(dataset.column_names) == fmt
        assert rating_samples(dataset) == expected, fmt


def test_real_alma_file_reads_as_one_direction(alma_dir):
    path = alma_dir / "csen" / "train.cs-en.json"
    dataset = load_dataset("json", data_files=str(path), split="train")
    first = json.loads(path.open(encoding="utf-8").readline())["translation"]
    assert detect_format(dataset.column_names) == "translation"
    samples = rating_samples(dataset.select(range(20)))
    assert samples[0] == RatingSample(translation_prompt("cs", "en", first["cs"]), first["en"])


def test_alma_directions_load_as_the_union_with_each_pair_read_once(alma_dir):
    dataset = load_translation_directions(str(alma_dir), ["cs-en", "en-cs", "is-en"])
    cs_rows = sum(1 for _ in (alma_dir / "csen" / "train.cs-en.json").open(encoding="utf-8"))
    is_rows = sum(1 for _ in (alma_dir / "isen" / "train.is-en.json").open(encoding="utf-8"))
    assert len(dataset) == 2 * cs_rows + is_rows
    assert dataset.column_names == ["translation", "direction"]
    first = json.loads((alma_dir / "csen" / "train.cs-en.json").open(encoding="utf-8").readline())["translation"]
    samples = rating_samples(dataset)
    assert samples[0] == RatingSample(translation_prompt("cs", "en", first["cs"]), first["en"])
    assert samples[cs_rows] == RatingSample(translation_prompt("en", "cs", first["en"]), first["cs"])
    assert samples[2 * cs_rows].instruction.startswith("Translate this from Icelandic to English:\nIcelandic: ")
    # The training view is the rated view, row for row.
    trained = training_dataset(dataset, conversational=True)
    assert trained["prompt"] == [s.instruction for s in samples]
    assert trained["completion"] == [s.response for s in samples]


def test_directions_from_a_dataset_with_one_configuration_per_pair(tmp_path):
    """The hub layout (haoranxu/ALMA-Human-Parallel: configurations 'cs-en', 'de-en', ...) read through
    `load_dataset` from a local dataset repository, as the hub id would be."""
    for pair, text in (("de-en", {"de": "Ja.", "en": "Yes."}), ("cs-en", {"cs": "Ne.", "en": "No."})):
        (tmp_path / pair).mkdir()
        (tmp_path / pair / "train.jsonl").write_text(json.dumps({"translation": text}) + "\n", encoding="utf-8")
    (tmp_path / "README.md").write_text(
        "---\nconfigs:\n"
        "- config_name: de-en\n  data_files:\n  - split: train\n    path: de-en/train.jsonl\n"
        "- config_name: cs-en\n  data_files:\n  - split: train\n    path: cs-en/train.jsonl\n---\n",
        encoding="utf-8",
    )
    dataset = load_translation_directions(str(tmp_path), ["en-de", "cs-en"])
    assert dataset["direction"] == ["en-de", "cs-en"]
    assert [s.response for s in rating_samples(dataset)] == ["Ja.", "No."]


def test_bad_directions_and_missing_files_are_explained(tmp_path):
    with pytest.raises(ValueError, match="'de_en' should be two different language codes"):
        parse_direction("de_en")
    with pytest.raises(ValueError, match="Unknown language code 'xx'"):
        parse_direction("xx-en")
    with pytest.raises(DatasetError, match=r"No file train\.de-en\.json\[l\] under"):
        load_translation_directions(str(tmp_path), ["en-de"])
    with pytest.raises(ValueError, match="lists a direction twice"):
        load_translation_directions(str(tmp_path), ["de-en", "de-en"])
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "train.de-en.json").write_text(json.dumps(ROWS["translation"]) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"Several files .* a/train\.de-en\.json, b/train\.de-en\.json"):
        load_translation_directions(str(tmp_path), ["de-en"])
