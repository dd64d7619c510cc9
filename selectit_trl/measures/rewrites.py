"""A teacher's rewrites, as a measure: for each request text, the teacher's greedy reply (`selection/recycling.py`).

A text is a per-sample value like any other: it is found in the store where an earlier run made it, generated
where not, each batch stored as it ends, and shared between processes by cost. The request goes to the
teacher as one user turn (through its chat template, when it has one). A record, keyed by the teacher and the
prompt's token ids:

    {"model": FINGERPRINT, "model_id": ..., "tokens": KEY, "sample": SHA256, "kind": "rewrite", "text": "...",
     "truncated": false}

(Records written before 0.2 have no "sample" and no "truncated"; they are read all the same.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from functools import cache

import numpy as np

from ..data.rows import RatingSample
from ..engine.generation import iter_generation_batches
from ..engine.tokens import turn_texts
from .base import Measure, Rater, store_key


def kept_loaded(teacher: Rater) -> Rater:
    """The teacher, loaded once for every stage that needs it rather than once per stage; `release` frees it."""
    return replace(teacher, load=cache(teacher.load), release_after_use=False)


def release(teacher: Rater) -> None:
    clear = getattr(teacher.load, "cache_clear", None)
    if clear is not None:
        clear()


class TeacherRewrites(Measure):
    """The teacher's reply to each sample's response text (the request); `activity` names the stage."""

    kind = "rewrite"
    field = "text"
    noun = "texts"
    compiles = False  # generation's shapes change at every new token

    def __init__(self, teacher: Rater, config, activity: str):
        self.teacher, self.config, self.activity = teacher, config, activity

    def raters(self, raters: Sequence[Rater]) -> list[Rater]:
        return [self.teacher]

    def requests(self, rater: Rater, samples: Sequence[RatingSample]) -> tuple[list, list[bool]]:
        tokenizer = rater.tokenizer
        prompts = [np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64)
                   for text in turn_texts([s.response for s in samples], tokenizer)]
        return prompts, [False] * len(prompts)

    def keys(self, rater: Rater, requests) -> list[str]:
        # Headed by the number of new tokens allowed: a longer allowance may give a longer text.
        head = f"rewrite|{self.config.selection_teacher_max_new_tokens}|".encode("ascii")
        return [store_key(head, [(b"", ids)]) for ids in requests]

    def batches(self, model, rater: Rater, requests, max_batch_tokens=None, **options):
        # The teacher's batch size, rather than a token budget, bounds its batches.
        return iter_generation_batches(
            model, rater.tokenizer, requests, self.config.selection_teacher_max_new_tokens,
            self.config.selection_teacher_batch_size, **options,
        )

    def record(self, value) -> dict:
        return {"kind": "rewrite", "text": value}

    @staticmethod
    def whole(record: dict) -> bool:
        return isinstance(record.get("text"), str)

    def value(self, record: dict):
        return record["text"]

    def stack(self, values: list) -> np.ndarray:
        return np.array(values, dtype=object)
