"""The released scripts' layouts of IFD and reverse IFD (`selection_ifd_layout: released`), to reproduce their numbers.

* IFD as Cherry LLM computes it (`cherry_seletion/data_analysis.py --mod cherry` with `data_by_IFD.py`, both at
  `--prompt alpaca --max_length 512`, as its README runs them). The response is read after the Stanford Alpaca
  prompt, straight after `### Response:`, and after `### Response:` alone. Each text is tokenised whole, cut
  to its limit, and the target is the tokens from where the response starts in it. Rows are left out as that
  script leaves them out: a prompt of 512 tokens or more, a response with no tokens left after the cut, and a
  response that would not fit beside its prompt.
* Reverse IFD as Reflection-Tuning computes it (`selection_code/data_analysis.py` with its defaults,
  `--prompt vicuna --max_length 2048`). The instruction (with its input, joined without a separator) is read
  after Vicuna's prompt holding the request to guess it from the response, and alone, where the loss covers
  every token after the first. Rows with an empty response are left out, as the script leaves them out.

The tokenizer's own `encode` is used as the scripts use it, special tokens and truncation included, so the
token ids are theirs. Rows left out get a one-token stand-in request, and IFD and r-IFD never keep them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..data.rows import RatingSample
from .losses import TargetRequests
from .tokens import end_of_text_id

# Public formats that reproducing the released numbers requires, kept as data.
# The Stanford Alpaca prompt (tatsu-lab/stanford_alpaca, train.py), as Cherry LLM's scripts render Alpaca rows.
ALPACA_PROMPT = {
    "input": (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
    ),
    "no_input": (
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Response:"
    ),
}
# Vicuna's one-turn prompt (lm-sys/FastChat, vicuna_v1.1), as Reflection-Tuning's selection script writes it.
VICUNA_PROMPT_NO_INPUT = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, "
    "and polite answers to the user's questions. USER: {instruction} ASSISTANT:"
)
# Reflection-Tuning's request to guess an instruction from its response (selection_code/data_analysis.py), put
# around the response.
REFLECTION_GUESS_REQUEST = (
    "Below is the response to an instruction, please guess the corresponding instruction for the given response.\n",
    "\nGenerate the instruction for the above response.",
)
IFD_LAYOUTS = ("model", "released")
CHERRY_MAX_LENGTH = 512
REFLECTION_MAX_LENGTH = 2048


def _encode(tokenizer, text: str, max_length: int | None = None) -> np.ndarray:
    """`tokenizer.encode` as the scripts call it: special tokens added, cut to `max_length` when given."""
    if max_length is None:
        return np.asarray(tokenizer.encode(text), dtype=np.int64)
    return np.asarray(tokenizer.encode(text, truncation=True, max_length=max_length), dtype=np.int64)


def _split(tokenizer, text: str, span: str, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """(context, target) of `text` cut to `max_length` tokens, the target starting where the last `span` does,
    counted in the tokens of the text before it (as the scripts count it)."""
    ids = _encode(tokenizer, text, max_length)
    start = len(_encode(tokenizer, text[: text.rfind(span)]))
    return ids[:start], ids[start:]


def _given(sample: RatingSample) -> tuple[str, str]:
    return sample.parts if sample.parts else (sample.instruction or "", "")


def cherry_ifd_request(sample: RatingSample, tokenizer) -> TargetRequests | None:
    """The response after its Alpaca prompt and after `### Response:` alone; None when Cherry LLM leaves it out."""
    limit = CHERRY_MAX_LENGTH
    instruction, extra = _given(sample)
    prompt = (ALPACA_PROMPT["input"].format_map({"instruction": instruction, "input": extra}) if extra
              else ALPACA_PROMPT["no_input"].format_map({"instruction": instruction}))
    prompt_length = len(_encode(tokenizer, prompt, limit))
    if limit - prompt_length <= 0:
        return None
    with_context, with_target = _split(tokenizer, prompt + sample.response, sample.response, limit)
    alone_context, alone_target = _split(tokenizer, "### Response:" + sample.response, sample.response,
                                         limit - prompt_length + 4)
    if len(with_target) <= 0 or len(alone_target) <= 0 or prompt_length + len(alone_target) > limit:
        return None
    return TargetRequests((with_context, alone_context), with_target, (with_target, alone_target))


def reflection_rifd_request(sample: RatingSample, tokenizer) -> TargetRequests | None:
    """The instruction after Vicuna's guess request and alone; None when Reflection-Tuning leaves it out."""
    limit = REFLECTION_MAX_LENGTH
    instruction, extra = _given(sample)
    if sample.response == "":
        return None
    request = VICUNA_PROMPT_NO_INPUT.format_map(
        {"instruction": REFLECTION_GUESS_REQUEST[0] + sample.response + REFLECTION_GUESS_REQUEST[1]})
    request_length = len(_encode(tokenizer, request, limit))
    with_context, with_target = _split(tokenizer, request + instruction + extra, instruction, limit)
    # Alone, the loss covers every token the model predicts: all but the first.
    alone = _encode(tokenizer, instruction + extra, limit - request_length + 1)
    if len(with_target) == 0 or len(with_context) == 0 or len(alone) < 2:
        return None
    return TargetRequests((with_context, alone[:1]), with_target, (with_target, alone[1:]))


def released_requests(samples: Sequence[RatingSample], tokenizer, kind: str) -> tuple[list[TargetRequests], list[bool]]:
    """Every sample's request in the released layout of `kind` ("ifd" or "rifd"), and whether it is left out."""
    build = cherry_ifd_request if kind == "ifd" else reflection_rifd_request
    stand_in = np.asarray([end_of_text_id(tokenizer)], dtype=np.int64)
    requests, left_out = [], []
    for sample in samples:
        request = build(sample, tokenizer)
        left_out.append(request is None)
        requests.append(request or TargetRequests((stand_in, stand_in), stand_in))
    return requests, left_out
