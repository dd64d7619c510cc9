"""The training view of the rows: the dataset in a shape `SFTTrainer` trains on, row for row with the user's.

Selection chooses rows and never changes them: a shape TRL trains on by itself goes to TRL as the user gave it.
Only the shapes TRL cannot train on (alpaca, instruction/output, ShareGPT, translation, and conversational
rows for a tokenizer without a chat template) are converted, column by column, leaving every other column as it
was. The shapes themselves are told apart in `formats.py`.
"""

from __future__ import annotations

from datasets import Dataset, IterableDataset

from ..errors import DatasetError
from .formats import TRAINED_AS_GIVEN, column_names, detect_format, rating_sample, resolve_format, sharegpt_messages
from .rows import RatingSample


def is_conversational(value) -> bool:
    return isinstance(value, list) and bool(value) and isinstance(value[0], dict)


def training_dataset(dataset: Dataset | IterableDataset, conversational: bool, fmt: str | None = None,
                     text_field: str = "text") -> Dataset | IterableDataset:
    """The dataset in a shape `SFTTrainer` trains on, row for row with the input.

    Shapes TRL trains on come back unchanged, the same object. The others are converted, and only the columns a
    conversion reads are replaced; every other column (`tools`, `chat_template_kwargs`, ids) stays:

    * Alpaca and instruction/output rows become prompt/completion pairs, so that the loss covers the response
      only: as chat turns when the tokenizer has a chat template, else as plain text (`training_row`).
    * ShareGPT rows become TRL messages, every turn kept, so that all assistant turns train as TRL trains them.
    * Translation rows become ALMA's prompt and the target, as plain text whatever the tokenizer: ALMA trains
      and translates with that prompt, not with a chat template, and the loss covers the target only.
    * Conversational rows (messages, or prompt/completion turns) for a tokenizer without a chat template, which
      TRL cannot render, become plain text as for Alpaca: the rated pair, with the last assistant turn as the
      completion.
    """
    fmt = fmt or resolve_format(dataset, None, text_field)
    # Only these need the first row or the columns: a shape returned unchanged reads nothing (a peek at a stream
    # opens it again).
    if fmt in ("messages", "prompt_completion") and not conversational:
        first = next(iter(dataset))
        if is_conversational(first["messages"] if fmt == "messages" else first["prompt"]):
            consumed = ["messages"] if fmt == "messages" else ["prompt", "completion"]
            return converted(dataset, column_names(dataset), consumed,
                              lambda row, i: training_row(rating_sample(row, fmt, i), False))
    if fmt in TRAINED_AS_GIVEN:
        return dataset
    columns = column_names(dataset)
    if fmt == "sharegpt":
        if conversational:
            return converted(dataset, columns, ["conversations"],
                              lambda row, i: {"messages": sharegpt_messages(row["conversations"], i)})
        return converted(dataset, columns, ["conversations"],
                          lambda row, i: training_row(rating_sample(row, fmt, i), False))
    if fmt == "translation":
        def translated(row: dict, index: int) -> dict:
            sample = rating_sample(row, fmt, index)
            # No space before the target: ALMA joins prompt and target as they are.
            return {"prompt": sample.instruction, "completion": sample.response}
        return converted(dataset, columns, ["translation"], translated)
    return converted(dataset, columns, ["instruction", "input", "output"],
                      lambda row, i: training_row(rating_sample(row, fmt, i), conversational))


def converted(dataset, columns: list[str], consumed: list[str], convert) -> Dataset | IterableDataset:
    """`convert` applied to every row, the columns it read replaced by the ones it writes."""
    return dataset.map(convert, with_indices=True, remove_columns=[c for c in consumed if c in columns])


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


def eval_in_training_shape(eval_dataset, conversational: bool, fmt: str | None, text_field: str):
    """The eval set in the shape the training rows take (`training_dataset`), so that eval loss is
    computed as the training loss is. Each set of a dict is converted alone. A set in a shape TRL trains on, one
    in no known shape, an iterable one, or an empty one goes to SFTTrainer as it is; TRL prepares it."""
    if isinstance(eval_dataset, dict):  # a DatasetDict too
        return type(eval_dataset)({name: eval_in_training_shape(part, conversational, fmt, text_field)
                                   for name, part in eval_dataset.items()})
    if not isinstance(eval_dataset, Dataset) or len(eval_dataset) == 0:
        return eval_dataset
    if fmt is None:
        try:
            fmt = detect_format(eval_dataset.column_names, text_field)
        except DatasetError:
            return eval_dataset
    return training_dataset(eval_dataset, conversational, fmt, text_field)
