"""Texts to token ids, the way every request is tokenised: compact arrays, in chunks, and a user turn's text.

Shared by the rating requests (`prompts.py`), the IFD and reverse-IFD requests (`targets.py`) and a teacher's
prompts (`measures/rewrites.py`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def leading_special_ids(tokenizer) -> list[int]:
    """The ids a plain `tokenizer(text)` call puts before the text (a BOS token, for most models)."""
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    for start in range(len(with_special) - len(bare) + 1):
        if with_special[start : start + len(bare)] == bare:
            return with_special[:start]
    return []


TOKENIZE_CHUNK = 1024  # texts per tokenizer call


def token_arrays(tokenizer, texts: Sequence[str], add_special_tokens: bool = False) -> list[np.ndarray]:
    """Token ids as compact int32 arrays, tokenised in chunks: Python lists of ints would cost ~9x the memory."""
    out: list[np.ndarray] = []
    for start in range(0, len(texts), TOKENIZE_CHUNK):
        chunk = tokenizer(list(texts[start : start + TOKENIZE_CHUNK]), add_special_tokens=add_special_tokens)["input_ids"]
        out.extend(np.asarray(ids, dtype=np.int32) for ids in chunk)
    return out


def turn_texts(user_texts: Sequence[str], tokenizer, use_chat_template: bool = True) -> list[str]:
    """Each text as one user turn, up to where the model's reply starts; "" is a turn with nothing said.

    Through the chat template when the tokenizer has one; otherwise in the plain layout that Alpaca rows train
    in (`data/training_view.training_row`), without the instruction block when there is no instruction.
    """
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        return [
            tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
            for text in user_texts
        ]
    return [(f"Instruction:\n{text}\n\n" if text else "") + "Response:\n" for text in user_texts]


def end_of_text_id(tokenizer) -> int:
    """The end-of-text id, which stands in for an empty target (0 for a tokenizer without one)."""
    return tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0


def token_counts(tokenizer, texts: Sequence[str]) -> np.ndarray:
    """How many tokens each text is, without special tokens."""
    return np.asarray([len(ids) for ids in token_arrays(tokenizer, texts)], dtype=np.int64)
