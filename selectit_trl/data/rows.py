"""The row type every stage passes along: what a model rates of one dataset row."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RatingSample:
    """What the model rates: the full instruction (with its input, if any) and the response.

    A row with no instruction (a language-modelling text, a formatting function's output, pre-tokenized ids
    without a mask) is a whole text: `instruction` is None and `response` holds the text.
    """

    instruction: str | None
    response: str
    # An Alpaca row's instruction and input as given, before they were joined into `instruction`: the released
    # scripts' prompts put them in separate places (`engine/released.py`). Not part of what the sample is.
    parts: tuple[str, str] | None = field(default=None, compare=False, repr=False)

    @property
    def is_text(self) -> bool:
        return self.instruction is None

    @property
    def content(self) -> bytes:
        """The sample's content as bytes (JSON of instruction and response): what is rated, whatever row it sits in."""
        return json.dumps([self.instruction, self.response], ensure_ascii=False).encode("utf-8")

    @property
    def content_hash(self) -> str:
        """sha256 of `content`: the "sample" field of the store's records."""
        return hashlib.sha256(self.content).hexdigest()
