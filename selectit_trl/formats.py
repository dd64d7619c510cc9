"""Dataset rows in, two views out: what the model rates, and what the trainer trains on.

Supported shapes, detected from the columns (or named by `selection_dataset_format`):

* `alpaca`: `instruction`, `input`, `output`;
* `instruction_output`: `instruction`, `output` and no `input`, as in WizardLM's evol-instruct data;
* `messages`: TRL's conversational format, a list of `{"role", "content"}` turns;
* `prompt_completion`: TRL's prompt/completion format, as strings or as lists of turns;
* `sharegpt`: `conversations`, a list of `{"from", "value"}` turns (`human`, `gpt`, `system`);
* `translation`: `{"translation": {"de": ..., "en": ...}}`, as in ALMA's parallel data. A `direction` column
  (`"de-en"`) names source and target; without one, the dataset must hold exactly two languages, and the
  first, in the order of the file's keys, is the source.

For rating, a multi-turn row's instruction is everything before its last assistant turn, and the response is
that last assistant turn. A translation row is rated as ALMA prompts it, with the target as the response.
"""

from __future__ import annotations

from collections.abc import Sequence

from datasets import Dataset, Translation, TranslationVariableLanguages

from .errors import DatasetError, RowFormatError
from .prompts import RatingSample

# The columns each format needs, in the order detection tries them. Alpaca and instruction/output need the same
# two; detection tells them apart by `input`, which Alpaca rows carry and which stays optional when named.
_REQUIRED_COLUMNS = {
    "alpaca": {"instruction", "output"},
    "instruction_output": {"instruction", "output"},
    "messages": {"messages"},
    "prompt_completion": {"prompt", "completion"},
    "sharegpt": {"conversations"},
    "translation": {"translation"},
}
FORMATS = tuple(_REQUIRED_COLUMNS)

# How each format is described in the error when nothing matches.
_SIGNATURES = {
    "alpaca": "instruction, input, output",
    "instruction_output": "instruction, output",
    "messages": "messages (TRL conversational)",
    "prompt_completion": "prompt, completion",
    "sharegpt": "conversations (ShareGPT: from/value turns)",
    "translation": "translation ({lang: text}, optional direction)",
}

# ISO 639-1 codes of the languages ALMA and WMT cover, named as ALMA's prompt names them.
LANGUAGE_NAMES = {
    "cs": "Czech",
    "de": "German",
    "en": "English",
    "fr": "French",
    "gu": "Gujarati",
    "ha": "Hausa",
    "is": "Icelandic",
    "ja": "Japanese",
    "ro": "Romanian",
    "ru": "Russian",
    "uk": "Ukrainian",
    "zh": "Chinese",
}

# ShareGPT speaker names, as the files in the wild spell them, mapped to chat roles.
_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "model": "assistant",
    "system": "system",
}


def detect_format(column_names: Sequence[str]) -> str:
    """Name the row format from the dataset's columns, or explain which columns were expected."""
    columns = set(column_names)
    for fmt, needed in _REQUIRED_COLUMNS.items():
        if needed <= columns:
            return "instruction_output" if fmt == "alpaca" and "input" not in columns else fmt
    accepted = "; ".join(f"{fmt} ({columns_needed})" for fmt, columns_needed in _SIGNATURES.items())
    raise DatasetError(
        f"Cannot tell the dataset format from its columns {sorted(columns)}. Accepted formats: {accepted}. "
        "Rename the columns, or set selection_dataset_format."
    )


def check_columns(column_names: Sequence[str], fmt: str) -> None:
    """A format named by the user must find its columns."""
    if fmt not in FORMATS:
        raise DatasetError(f"Unknown dataset format {fmt!r}: use one of {', '.join(FORMATS)}.")
    missing = _REQUIRED_COLUMNS[fmt] - set(column_names)
    if missing:
        raise DatasetError(
            f"selection_dataset_format={fmt!r} needs the column(s) {sorted(missing)}, which the dataset lacks; "
            f"its columns are {sorted(column_names)}."
        )


def _require_text(value, field: str, index: int) -> str:
    if value is None:
        raise RowFormatError(f"Row {index}: {field} is missing. Fill it in or drop that row.")
    if not isinstance(value, str):
        raise RowFormatError(f"Row {index}: {field} must be a string, got {type(value).__name__}. Fix or drop that row.")
    return value


def _turns_to_text(turns: list[dict], index: int) -> str:
    """A conversation history as plain text; a lone turn is just its content."""
    if not isinstance(turns, list) or not all(isinstance(t, dict) and "content" in t for t in turns):
        raise RowFormatError(f"Row {index}: expected a list of {{'role', 'content'}} turns.")
    contents = [_require_text(t["content"], f"turn {i} content", index) for i, t in enumerate(turns)]
    if len(turns) == 1:
        return contents[0]
    return "\n\n".join(f"{t.get('role', 'user').capitalize()}: {c}" for t, c in zip(turns, contents))


def _split_conversation(messages: list[dict], index: int) -> tuple[list[dict], dict]:
    if not isinstance(messages, list):
        raise RowFormatError(f"Row {index}: the conversation must be a list of turns, got {type(messages).__name__}.")
    last = max((i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "assistant"), default=None)
    if last is None or not any(isinstance(m, dict) and m.get("role") == "user" for m in messages[:last]):
        raise RowFormatError(f"Row {index}: the conversation needs a user turn followed by an assistant turn.")
    return messages[:last], messages[last]


def _rated_conversation(messages: list[dict], index: int) -> list[dict]:
    """The conversation up to its last assistant turn: what is rated is what is trained on, no trailing turns."""
    history, answer = _split_conversation(messages, index)
    return [*history, answer]


def sharegpt_messages(conversations, index: int) -> list[dict]:
    """ShareGPT turns (`from`, `value`) as TRL messages (`role`, `content`)."""
    if not isinstance(conversations, list):
        raise RowFormatError(f"Row {index}: conversations must be a list of turns, got {type(conversations).__name__}.")
    messages = []
    for turn_index, turn in enumerate(conversations):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise RowFormatError(f"Row {index}: turn {turn_index} needs the keys 'from' and 'value'.")
        role = _SHAREGPT_ROLES.get(str(turn["from"]).lower())
        if role is None:
            raise RowFormatError(
                f"Row {index}: turn {turn_index} is from {turn['from']!r}; expected one of {sorted(_SHAREGPT_ROLES)}."
            )
        messages.append({"role": role, "content": _require_text(turn["value"], f"turn {turn_index} value", index)})
    return messages


def translation_direction(row: dict, index: int) -> tuple[str, str]:
    """(source, target) language codes of a translation row."""
    pair = row["translation"]
    if not isinstance(pair, dict):
        raise RowFormatError(f"Row {index}: translation must be a {{language: text}} mapping, got {type(pair).__name__}.")
    direction = row.get("direction")
    if direction is not None:
        languages = str(direction).split("-")
        if len(languages) != 2:
            raise RowFormatError(f"Row {index}: direction {direction!r} should name two languages, like 'de-en'.")
    else:
        # Rows loaded together from several language pairs carry every pair's keys, the others set to None.
        languages = [lang for lang, text in pair.items() if text is not None]
        if len(languages) != 2:
            raise RowFormatError(
                f"Row {index}: translation holds the languages {languages}; a row needs exactly two (source first), "
                "or a 'direction' column such as 'de-en'."
            )
    for lang in languages:
        if lang not in LANGUAGE_NAMES:
            raise RowFormatError(f"Row {index}: unknown language code {lang!r}; known: {', '.join(sorted(LANGUAGE_NAMES))}.")
        if pair.get(lang) is None:
            raise RowFormatError(f"Row {index}: translation has no {lang!r} text.")
    return languages[0], languages[1]


def translation_prompt(source_lang: str, target_lang: str, source: str) -> str:
    """ALMA's zero-shot prompt: the model continues it with the translation."""
    source_name, target_name = LANGUAGE_NAMES[source_lang], LANGUAGE_NAMES[target_lang]
    return f"Translate this from {source_name} to {target_name}:\n{source_name}: {source}\n{target_name}:"


def rating_sample(row: dict, fmt: str, index: int) -> RatingSample:
    """One row as the (instruction, response) pair that is rated."""
    if fmt in ("alpaca", "instruction_output"):
        instruction = _require_text(row.get("instruction"), "instruction", index)
        extra = row.get("input")
        if extra not in (None, ""):
            # The released scripts join the input under the instruction with one newline.
            instruction = instruction + "\n" + _require_text(extra, "input", index)
        return RatingSample(instruction, _require_text(row.get("output"), "output", index))
    if fmt in ("messages", "sharegpt"):
        messages = row["messages"] if fmt == "messages" else sharegpt_messages(row["conversations"], index)
        history, answer = _split_conversation(messages, index)
        return RatingSample(_turns_to_text(history, index), _require_text(answer.get("content"), "response", index))
    if fmt == "prompt_completion":
        prompt, completion = row["prompt"], row["completion"]
        instruction = prompt if isinstance(prompt, str) or prompt is None else _turns_to_text(prompt, index)
        response = completion if isinstance(completion, str) or completion is None else _turns_to_text(completion, index)
        return RatingSample(_require_text(instruction, "prompt", index), _require_text(response, "completion", index))
    if fmt == "translation":
        source_lang, target_lang = translation_direction(row, index)
        pair = row["translation"]
        source = _require_text(pair[source_lang], f"translation[{source_lang!r}]", index)
        target = _require_text(pair[target_lang], f"translation[{target_lang!r}]", index)
        return RatingSample(translation_prompt(source_lang, target_lang, source), target)
    raise ValueError(f"Unknown dataset format {fmt!r}: use one of {', '.join(FORMATS)}.")


def _check_translation_languages(dataset: Dataset) -> None:
    """Without a `direction` column, the source is the first language: make sure "first" means something."""
    if "direction" in dataset.column_names:
        return
    feature = dataset.features["translation"]
    if isinstance(feature, (Translation, TranslationVariableLanguages)):
        raise DatasetError(
            "The translation column is a datasets Translation feature, which sorts its languages, so which is the "
            "source cannot be told. Load the data with dataset_directions (or selectit_trl.loading."
            "load_translation_directions), or add a 'direction' column such as 'de-en'."
        )
    if isinstance(feature, dict) and len(feature) != 2:
        raise DatasetError(
            f"The translation rows hold {len(feature)} languages ({', '.join(feature)}) and no 'direction' column, "
            "so the direction of each row cannot be told. Load the pairs with dataset_directions, or add a "
            "'direction' column such as 'de-en'."
        )


def resolve_format(dataset: Dataset, fmt: str | None) -> str:
    """The dataset's format, detected or checked against its columns."""
    if len(dataset) == 0:
        raise DatasetError("The training dataset has no rows: check dataset_name and dataset_train_split.")
    if fmt is None:
        fmt = detect_format(dataset.column_names)
    else:
        check_columns(dataset.column_names, fmt)
    if fmt == "translation":
        _check_translation_languages(dataset)
    return fmt


def rating_samples(dataset: Dataset, fmt: str | None = None) -> list[RatingSample]:
    """Every row of `dataset` as a `RatingSample`, in dataset order."""
    fmt = resolve_format(dataset, fmt)
    return [rating_sample(row, fmt, i) for i, row in enumerate(dataset)]


def training_dataset(dataset: Dataset, conversational: bool, fmt: str | None = None) -> Dataset:
    """The dataset in a shape `SFTTrainer` trains on, row for row with the input.

    * Prompt/completion rows pass through, except turns for a tokenizer without a chat template, which become
      plain text as below.
    * Conversations (TRL messages, ShareGPT) become TRL messages ending at their last assistant turn, the turn
      that was rated; without a chat template, plain text as below.
    * Alpaca and instruction/output rows become prompt/completion pairs, so that the loss covers the response
      only: as chat turns when the tokenizer has a chat template, else as plain text.
    * Translation rows become ALMA's prompt and the target, as plain text whatever the tokenizer: ALMA trains
      and translates with that prompt, not with a chat template, and the loss covers the target only.
    """
    fmt = resolve_format(dataset, fmt)
    turns = fmt == "prompt_completion" and not isinstance(dataset[0]["prompt"], str)
    if fmt == "prompt_completion" and (conversational or not turns):
        return dataset

    def convert(row: dict, index: int) -> dict:
        if fmt in ("messages", "sharegpt") and conversational:
            messages = row["messages"] if fmt == "messages" else sharegpt_messages(row["conversations"], index)
            return {"messages": _rated_conversation(messages, index)}
        sample = rating_sample(row, fmt, index)
        if fmt == "translation":
            # No space before the target: ALMA joins prompt and target as they are.
            return {"prompt": sample.instruction, "completion": sample.response}
        return training_row(sample, conversational)

    return dataset.map(convert, with_indices=True, remove_columns=dataset.column_names)


def training_row(sample: RatingSample, conversational: bool) -> dict:
    """An (instruction, response) pair as a prompt/completion row: chat turns with a chat template, else plain text.

    The shape Alpaca and instruction/output rows train in; a recycled row (`recycling.py`) trains in it too.
    """
    if conversational:
        return {
            "prompt": [{"role": "user", "content": sample.instruction}],
            "completion": [{"role": "assistant", "content": sample.response}],
        }
    return {"prompt": f"Instruction:\n{sample.instruction}\n\nResponse:\n", "completion": sample.response}
