"""The IFD and reverse-IFD requests: for each sample, a target text and the two contexts it is read after.

Turned into mean token losses by `losses.py`; the ratio of the two losses is the strategy's value
(`strategies/difficulty.py`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..data.rows import RatingSample
from .losses import TargetRequests
from .tokens import end_of_text_id, leading_special_ids, token_arrays, turn_texts

# Written for this project: put after a response, it asks the model to say what instruction produced it, so that
# reverse IFD can measure how much the response tells about its instruction.
REVERSE_REQUEST = "Which instruction was the text above written for? Write the instruction."

DIFFICULTY_KINDS = ("ifd", "rifd")


def build_target_requests(samples: Sequence[RatingSample], tokenizer, kind: str, use_chat_template: bool = True) -> list:
    """Token ids of the IFD (`kind="ifd"`) or reverse-IFD (`"rifd"`) requests: a target and two contexts per sample.

    IFD's target is the response, read after the instruction's user turn and after an empty user turn (see
    `turn_texts`).
    Reverse IFD's target is the instruction, read after a user turn holding the response and `REVERSE_REQUEST`,
    and after an empty user turn. The contexts differ only by what is measured, and the target is the same
    token ids after both, so the ratio of their losses compares like with like. Contexts render through the
    chat template when the tokenizer has one, as the model is trained; the target follows the assistant cue.
    """
    if kind not in DIFFICULTY_KINDS:
        raise ValueError(f"Unknown difficulty kind {kind!r}: use one of {', '.join(DIFFICULTY_KINDS)}.")
    chat = use_chat_template and getattr(tokenizer, "chat_template", None)
    if kind == "ifd":
        users = [s.instruction for s in samples]
        targets = [s.response for s in samples]
    else:
        users = [f"{s.response}\n\n{REVERSE_REQUEST}" for s in samples]
        targets = [s.instruction for s in samples]
    # Without a template, a BOS the tokenizer would add goes in front of every context.
    head = np.asarray([] if chat else leading_special_ids(tokenizer), dtype=np.int32)
    empty = np.concatenate([head, token_arrays(tokenizer, turn_texts([""], tokenizer, use_chat_template))[0]])
    contexts = token_arrays(tokenizer, turn_texts(users, tokenizer, use_chat_template))
    # An empty target (an empty response or instruction, never kept under IFD or r-IFD) is measured on the
    # end-of-text token instead, so that every sample has a finite loss.
    stand_in = np.asarray([end_of_text_id(tokenizer)], dtype=np.int32)
    return [
        TargetRequests((np.concatenate([head, context]), empty), target if len(target) else stand_in)
        for context, target in zip(contexts, token_arrays(tokenizer, targets))
    ]
