"""Dataset rows in: which shape a dataset is in, and the rating view of each row (what the model rates).

Selection chooses rows; it never changes them. The rating side reads its own view of each row
(`rating_sample`): an (instruction, response) pair, or a whole text where the row has no instruction. What the
trainer trains on is the training view (`training_view.py`).

Shapes, detected from the columns (or named by `selection_dataset_format`):

* `alpaca`: `instruction`, `input`, `output`;
* `instruction_output`: `instruction`, `output` and no `input`, as in WizardLM's evol-instruct data;
* `messages`: TRL's conversational format, a list of `{"role", "content"}` turns;
* `prompt_completion`: TRL's prompt/completion format, as strings or as lists of turns;
* `sharegpt`: `conversations`, a list of `{"from", "value"}` turns (`human`, `gpt`, `system`);
* `translation`: `{"translation": {"de": ..., "en": ...}}`, as in ALMA's parallel data. A `direction` column
  (`"de-en"`) names source and target; without one, the dataset must hold exactly two languages, and the
  first, in the order of the file's keys, is the source;
* `tokenized`: TRL's pre-tokenized rows, `input_ids` with an optional `completion_mask`, `assistant_masks` or
  `labels`;
* `text`: TRL's language-modelling rows, one text in `dataset_text_field` (`text` by default).

A `formatting_func` is a shape of its own (`FORMATTED`): its output, one text per row, is what is rated.

For rating, a multi-turn row's instruction is everything before its last assistant turn, and the response is
that last assistant turn; a tool call is rated as its JSON. A translation row is rated as ALMA prompts it, with
the target as the response. Pre-tokenized rows are decoded and split where the completion or assistant mask
starts; without a mask, like text rows and a formatting function's output, they are rated as one whole text.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence

from datasets import Dataset, IterableDataset, Translation, TranslationVariableLanguages

from ..errors import DatasetError, RowFormatError
from .rows import RatingSample

# The columns each format needs, in the order detection tries them. Alpaca and instruction/output need the same
# two; detection tells them apart by `input`, which Alpaca rows carry and which stays optional when named.
_REQUIRED_COLUMNS = {
    "alpaca": {"instruction", "output"},
    "instruction_output": {"instruction", "output"},
    "messages": {"messages"},
    "prompt_completion": {"prompt", "completion"},
    "sharegpt": {"conversations"},
    "translation": {"translation"},
    "tokenized": {"input_ids"},
    "text": {"text"},  # or whatever column dataset_text_field names
}
FORMATS = tuple(_REQUIRED_COLUMNS)
# Not a column format: rows that a formatting_func turns into text, rated as that text.
FORMATTED = "formatting_func"
# The shapes SFTTrainer trains on by itself: their rows go to it unchanged. The others are converted.
TRAINED_AS_GIVEN = ("messages", "prompt_completion", "tokenized", "text", FORMATTED)
# TRL prepares a dataset with input_ids as already tokenized, whatever else it holds, so detection looks at that
# column first; the rating formats come next, and a plain text column last.
_DETECTION_ORDER = ("tokenized", "alpaca", "instruction_output", "messages", "prompt_completion", "sharegpt",
                    "translation", "text")
_NO_ROWS = "The training dataset has no rows: check dataset_name and dataset_train_split."
# The columns a pre-tokenized row may mark its trained tokens with, in the order they are looked for.
_MASK_COLUMNS = ("completion_mask", "assistant_masks", "labels")

# How each format is described in the error when nothing matches.
_SIGNATURES = {
    "alpaca": "instruction, input, output",
    "instruction_output": "instruction, output",
    "messages": "messages (TRL conversational)",
    "prompt_completion": "prompt, completion",
    "sharegpt": "conversations (ShareGPT: from/value turns)",
    "translation": "translation ({lang: text}, optional direction)",
    "tokenized": "input_ids (pre-tokenized, optional completion_mask / assistant_masks / labels)",
    "text": "text, or the column dataset_text_field names",
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


def _required_columns(fmt: str, text_field: str) -> set[str]:
    return {text_field} if fmt == "text" else _REQUIRED_COLUMNS[fmt]


def detect_format(column_names: Sequence[str], text_field: str = "text") -> str:
    """Name the row format from the dataset's columns, or explain which columns were expected."""
    columns = set(column_names)
    for fmt in _DETECTION_ORDER:
        if _required_columns(fmt, text_field) <= columns:
            return "instruction_output" if fmt == "alpaca" and "input" not in columns else fmt
    accepted = "; ".join(f"{fmt} ({columns_needed})" for fmt, columns_needed in _SIGNATURES.items())
    raise DatasetError(
        f"Cannot tell the dataset format from its columns {sorted(columns)}. Accepted formats: {accepted}. "
        "Rename the columns, set selection_dataset_format (or dataset_text_field), or pass a formatting_func."
    )


def check_columns(column_names: Sequence[str], fmt: str, text_field: str = "text") -> None:
    """A format named by the user must find its columns."""
    if fmt not in FORMATS:
        raise DatasetError(f"Unknown dataset format {fmt!r}: use one of {', '.join(FORMATS)}.")
    missing = _required_columns(fmt, text_field) - set(column_names)
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


def _turn_text(turn: dict, field: str, index: int) -> str:
    """A turn's text: its content, then each tool call it makes as one line of JSON."""
    calls = turn.get("tool_calls")
    if not calls:
        return _require_text(turn.get("content"), field, index)
    # Arrow fills keys a call lacks with None; they are left out so that the rated text is what was written.
    lines = [json.dumps(_without_nones(call), ensure_ascii=False) for call in calls]
    content = turn.get("content")
    return "\n".join([_require_text(content, field, index), *lines] if content else lines)


def _without_nones(value):
    if isinstance(value, dict):
        return {k: _without_nones(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nones(v) for v in value]
    return value


def _turns_to_text(turns: list[dict], index: int) -> str:
    """A conversation history as plain text; a lone turn is just its content."""
    if not isinstance(turns, list) or not all(isinstance(t, dict) and ("content" in t or "tool_calls" in t) for t in turns):
        raise RowFormatError(f"Row {index}: expected a list of {{'role', 'content'}} turns.")
    contents = [_turn_text(t, f"turn {i} content", index) for i, t in enumerate(turns)]
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


def rating_sample(row: dict, fmt: str, index: int, text_field: str = "text", tokenizer=None) -> RatingSample:
    """One row as the (instruction, response) pair that is rated, or as a whole text (instruction None).

    Args:
        text_field: the column of a `text` row (TRL's `dataset_text_field`).
        tokenizer: decodes a `tokenized` row.
    """
    if fmt in ("alpaca", "instruction_output"):
        instruction = _require_text(row.get("instruction"), "instruction", index)
        extra = row.get("input")
        if extra not in (None, ""):
            # The released scripts join the input under the instruction with one newline.
            given = _require_text(extra, "input", index)
            return RatingSample(instruction + "\n" + given, _require_text(row.get("output"), "output", index),
                                parts=(instruction, given))
        return RatingSample(instruction, _require_text(row.get("output"), "output", index))
    if fmt in ("messages", "sharegpt"):
        messages = row["messages"] if fmt == "messages" else sharegpt_messages(row["conversations"], index)
        history, answer = _split_conversation(messages, index)
        return RatingSample(_turns_to_text(history, index), _turn_text(answer, "response", index))
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
    if fmt == "text":
        return RatingSample(None, _require_text(row.get(text_field), text_field, index))
    if fmt == "tokenized":
        return _decoded_sample(row, index, tokenizer)
    raise ValueError(f"Unknown dataset format {fmt!r}: use one of {', '.join(FORMATS)}.")


def _decoded_sample(row: dict, index: int, tokenizer) -> RatingSample:
    """A pre-tokenized row decoded: split where its first trained token is, when a mask says which tokens are
    trained (the response being the trained tokens), else one whole text."""
    ids = row["input_ids"]
    if not isinstance(ids, list) or not all(isinstance(t, int) for t in ids):
        raise RowFormatError(f"Row {index}: input_ids must be a list of token ids.")
    column = next((c for c in _MASK_COLUMNS if row.get(c) is not None), None)
    if column is None:
        return RatingSample(None, tokenizer.decode(ids, skip_special_tokens=True))
    trained = [label != -100 for label in row[column]] if column == "labels" else [bool(bit) for bit in row[column]]
    if len(trained) != len(ids):
        raise RowFormatError(f"Row {index}: {column} has {len(trained)} entries for {len(ids)} input_ids.")
    start = trained.index(True) if any(trained) else len(ids)
    response = [t for t, keep in zip(ids, trained) if keep]
    return RatingSample(tokenizer.decode(ids[:start], skip_special_tokens=True),
                        tokenizer.decode(response, skip_special_tokens=True))


def _check_translation_languages(dataset: Dataset) -> None:
    """Without a `direction` column, the source is the first language: make sure "first" means something."""
    if "direction" in (dataset.column_names or ()) or dataset.features is None:
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


def column_names(dataset: Dataset | IterableDataset) -> list[str]:
    """The dataset's columns; for an iterable dataset whose features are unknown, the keys of its first row."""
    if dataset.column_names is not None:
        return list(dataset.column_names)
    first = next(iter(dataset), None)
    return list(first) if first is not None else []


def resolve_format(dataset: Dataset | IterableDataset, fmt: str | None, text_field: str = "text",
                   formatting_func: Callable[[dict], str] | None = None) -> str:
    """The dataset's shape, detected or checked against its columns.

    A formatting_func makes the rows `FORMATTED` unless they are pre-tokenized (TRL ignores the function for
    those) or a format is named, which then says how the rows are rated while TRL still formats them.
    """
    if isinstance(dataset, Dataset) and len(dataset) == 0:
        raise DatasetError(_NO_ROWS)
    columns = column_names(dataset)
    if not columns:
        raise DatasetError(_NO_ROWS)
    if fmt is None:
        if formatting_func is not None and "input_ids" not in columns:
            return FORMATTED
        fmt = detect_format(columns, text_field)
    else:
        check_columns(columns, fmt, text_field)
    if fmt == "translation":
        _check_translation_languages(dataset)
    return fmt


def rating_samples(dataset: Dataset | Iterable[dict], fmt: str | None = None, *, text_field: str = "text",
                   tokenizer=None, formatting_func: Callable[[dict], str] | None = None) -> list[RatingSample]:
    """Every row of `dataset` as a `RatingSample`, in dataset order: one pass, so an iterable dataset works too.

    `dataset` may also be any iterable of rows when `fmt` is given.
    """
    if fmt is None or (fmt != FORMATTED and isinstance(dataset, (Dataset, IterableDataset))):
        fmt = resolve_format(dataset, fmt, text_field, formatting_func)
    samples = []
    for i, row in enumerate(dataset):
        if fmt == FORMATTED:
            samples.append(RatingSample(None, _require_text(formatting_func(row), "formatting_func's output", i)))
        else:
            try:
                samples.append(rating_sample(row, fmt, i, text_field, tokenizer))
            except RowFormatError as error:
                raise _mixed_formats_error(row, fmt, i, text_field) or error from None
    if not samples:
        raise DatasetError(_NO_ROWS)
    return samples


def _mixed_formats_error(row, fmt: str, index: int, text_field: str) -> RowFormatError | None:
    """The error for a row that fails because it is in another format than the dataset's columns say, or None.

    A file that mixes formats (alpaca rows, then messages rows) loads as one table with the union of the columns,
    the other format's cells null: its first row of the second kind fails as "instruction is missing".
    """
    if not isinstance(row, dict):
        return None
    filled = [column for column, value in row.items() if value is not None]
    try:
        own = detect_format(filled, text_field)
    except DatasetError:
        return None
    if own == fmt or {own, fmt} == {"alpaca", "instruction_output"}:
        return None
    return RowFormatError(
        f"Row {index} is a {own} row (its filled columns: {sorted(filled)}), but the dataset was read as {fmt}: its "
        f"rows are in two formats. Convert them to one format, or split them into one dataset per format."
    )
