"""Dataset rows in, two views out: what the model rates, and what the trainer trains on.

Supported shapes (detected from the columns):

* `alpaca`: `instruction`, optional `input`, `output`;
* `messages`: TRL's conversational format, a list of `{"role", "content"}` turns;
* `prompt_completion`: TRL's prompt/completion format, as strings or as lists of turns.

For rating, a multi-turn row's instruction is everything before its last assistant turn, and the response is
that last assistant turn.
"""

from __future__ import annotations

from collections.abc import Sequence

from datasets import Dataset

from .prompts import RatingSample

FORMATS = ("alpaca", "messages", "prompt_completion")


def detect_format(column_names: Sequence[str]) -> str:
    """Name the row format from the dataset's columns, or explain which columns were expected."""
    columns = set(column_names)
    if {"instruction", "output"} <= columns:
        return "alpaca"
    if "messages" in columns:
        return "messages"
    if {"prompt", "completion"} <= columns:
        return "prompt_completion"
    raise ValueError(
        f"Cannot tell the dataset format from its columns {sorted(columns)}. Accepted: alpaca "
        "(instruction, input, output), messages (TRL conversational), prompt_completion (prompt, completion)."
    )


def _require_text(value, field: str, index: int) -> str:
    if not isinstance(value, str):
        raise ValueError(f"Row {index}: {field} must be a string, got {type(value).__name__}. Fix or drop that row.")
    return value


def _turns_to_text(turns: list[dict], index: int) -> str:
    """A conversation history as plain text; a lone turn is just its content."""
    if not isinstance(turns, list) or not all(isinstance(t, dict) and "content" in t for t in turns):
        raise ValueError(f"Row {index}: expected a list of {{'role', 'content'}} turns.")
    contents = [_require_text(t["content"], "turn content", index) for t in turns]
    if len(turns) == 1:
        return contents[0]
    return "\n\n".join(f"{t.get('role', 'user').capitalize()}: {c}" for t, c in zip(turns, contents))


def _split_conversation(messages: list[dict], index: int) -> tuple[list[dict], dict]:
    if not isinstance(messages, list):
        raise ValueError(f"Row {index}: messages must be a list of turns.")
    last = max((i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "assistant"), default=None)
    if last is None or last == 0:
        raise ValueError(f"Row {index}: the conversation needs a user turn followed by an assistant turn.")
    return messages[:last], messages[last]


def rating_sample(row: dict, fmt: str, index: int) -> RatingSample:
    """One row as the (instruction, response) pair that is rated."""
    if fmt == "alpaca":
        instruction = _require_text(row["instruction"], "instruction", index)
        extra = row.get("input")
        if extra not in (None, ""):
            # The released scripts join the input under the instruction with one newline.
            instruction = instruction + "\n" + _require_text(extra, "input", index)
        return RatingSample(instruction, _require_text(row["output"], "output", index))
    if fmt == "messages":
        history, answer = _split_conversation(row["messages"], index)
        return RatingSample(_turns_to_text(history, index), _require_text(answer["content"], "response", index))
    if fmt == "prompt_completion":
        prompt, completion = row["prompt"], row["completion"]
        instruction = prompt if isinstance(prompt, str) else _turns_to_text(prompt, index)
        response = completion if isinstance(completion, str) else _turns_to_text(completion, index)
        return RatingSample(_require_text(instruction, "prompt", index), _require_text(response, "completion", index))
    raise ValueError(f"Unknown dataset format {fmt!r}: use one of {', '.join(FORMATS)}.")


def rating_samples(dataset: Dataset, fmt: str | None = None) -> list[RatingSample]:
    """Every row of `dataset` as a `RatingSample`, in dataset order."""
    if len(dataset) == 0:
        raise ValueError("The training dataset has no rows.")
    fmt = fmt or detect_format(dataset.column_names)
    return [rating_sample(row, fmt, i) for i, row in enumerate(dataset)]


def training_dataset(dataset: Dataset, conversational: bool, fmt: str | None = None) -> Dataset:
    """The dataset in a shape `SFTTrainer` trains on, row for row with the input.

    Rows already in a TRL format pass through. Alpaca rows become prompt/completion pairs, so that the loss
    covers the response only: as chat turns when the tokenizer has a chat template, else as plain text.
    """
    fmt = fmt or detect_format(dataset.column_names)
    if fmt in ("messages", "prompt_completion"):
        return dataset

    def to_prompt_completion(row: dict, index: int) -> dict:
        sample = rating_sample(row, fmt, index)
        if conversational:
            return {
                "prompt": [{"role": "user", "content": sample.instruction}],
                "completion": [{"role": "assistant", "content": sample.response}],
            }
        return {"prompt": f"Instruction:\n{sample.instruction}\n\nResponse:\n", "completion": sample.response}

    return dataset.map(to_prompt_completion, with_indices=True, remove_columns=dataset.column_names)
