"""The row type every stage passes along: what a model rates of one dataset row."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RatingSample:
    """What the model rates: the full instruction (with its input, if any) and the response.

    A row with no instruction (a language-modelling text, a formatting function's output, pre-tokenized ids
    without a mask) is a whole text: `instruction` is None and `response` holds the text.
    """

    instruction: str | None
    response: str

    @property
    def is_text(self) -> bool:
        return self.instruction is None
