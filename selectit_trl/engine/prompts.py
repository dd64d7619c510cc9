"""Rating prompts and how a sample is rendered around them.

Two layouts exist:

* `prompt_first` is the released SelectIT scripts' layout, byte for byte: the rating prompt line, then the
  sample, then "The answer is:". It never uses a chat template, so that its scores can be compared with
  theirs.
* `sample_first` (the default) puts the sample first and a short rating request after it. The K requests of
  one sample then share everything up to the end of the sample, which is what makes prefix sharing possible.

Everything here returns token ids: the scorer never sees text, and the rendering is pinned in one place.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from jinja2.exceptions import TemplateError

from ..data.rows import RatingSample
from ..data.text import is_blank
from ..errors import SelectionConfigError
from .scoring import SampleRequests
from .tokens import leading_special_ids, token_arrays

LAYOUTS = ("sample_first", "prompt_first")

# Written for this project. The preamble is said once, before the sample; each request is a short question put
# after it. With `sample_first` the K requests of a sample then share everything up to the end of the sample,
# preamble included, and only a dozen tokens per request are left to compute. The requests still ask about
# different qualities (correctness, helpfulness, completeness, ...), which is where the K-prompt disagreement
# that SelectIT measures comes from. "{score_max}" is replaced by S.
DEFAULT_RATING_PREAMBLE = (
    "You rate responses to instructions. Answer the question after the response with one number from 1 (worst) "
    "to {score_max} (best)."
)
DEFAULT_RATING_PROMPTS: tuple[str, ...] = (
    "How good is the response?",
    "Rate its overall quality.",
    "How correct is it?",
    "How helpful is the response?",
    "Does it follow the instruction?",
    "How complete is the answer?",
    "Would an expert accept it?",
    "How accurate is it?",
    "Is it clear and useful?",
    "Grade the response.",
)

# Marks where the sample ends inside a chat-template rendering, so the text can be cut there (see
# `_chat_parts`). Any string a template passes through unchanged and no dataset contains would do.
_SPLIT_MARK = "\u2063<selectit-split>\u2063"


@dataclass(frozen=True)
class RatingPrompts:
    """The K rating requests, and the preamble said once before the sample ("" for none)."""

    requests: tuple[str, ...]
    preamble: str = ""

    def __len__(self) -> int:
        return len(self.requests)

    def whole(self) -> list[str]:
        """Each request with the preamble in front: the K complete rating prompts."""
        return [f"{self.preamble} {r}" if self.preamble else r for r in self.requests]


def load_prompts(
    num_prompts: int,
    score_max: int,
    prompts: Sequence[str] | None = None,
    prompts_file: str | os.PathLike | None = None,
    preamble: str | None = None,
) -> RatingPrompts:
    """The first K rating prompts, from a file, a list, or the default set (in that order of precedence).

    A file holds one prompt per line. Each line keeps its trailing newline, exactly as the released scripts
    read it, so that `prompt_first` renders their bytes. Blank lines are skipped.

    Args:
        preamble: text said once before the sample. `None` means the default preamble with the default prompts,
            and no preamble with prompts of your own, which are taken to be whole rating prompts.
    """
    if prompts_file is not None:
        if not os.path.isfile(prompts_file):
            raise SelectionConfigError(f"selection_prompts_file {str(prompts_file)!r} does not exist.")
        with open(prompts_file, encoding="utf-8") as handle:
            candidates = [line for line in handle.readlines() if not is_blank(line)]
        source = f"prompt file {str(prompts_file)!r}"
    elif prompts is not None:
        candidates = [p for p in prompts if isinstance(p, str) and not is_blank(p)]
        if len(candidates) != len(prompts):
            raise SelectionConfigError("selection_prompts must be a list of non-empty strings.")
        source = "selection_prompts"
    else:
        candidates = list(DEFAULT_RATING_PROMPTS)
        source = "the default prompt set"
        if preamble is None:
            preamble = DEFAULT_RATING_PREAMBLE
    if not candidates:
        raise SelectionConfigError(f"No rating prompts found in {source}: give at least one non-empty line.")
    if num_prompts < 1:
        raise SelectionConfigError(f"selection_num_prompts must be >= 1, got {num_prompts}.")
    if num_prompts > len(candidates):
        raise SelectionConfigError(
            f"selection_num_prompts={num_prompts} but {source} holds only {len(candidates)} prompts: "
            f"lower selection_num_prompts or add prompts."
        )

    for text in (preamble or "", *candidates[:num_prompts]):
        _check_placeholders(text, source)

    def fill(text: str) -> str:
        # Plain replacement rather than str.format, so that braces in a user's prompt are left alone.
        return text.replace("{score_max}", str(score_max))

    return RatingPrompts(tuple(fill(p) for p in candidates[:num_prompts]), fill((preamble or "").strip()))


# The names a rating prompt may hold in braces. Plain replacement fills them, so "{...}" around anything that is
# not a name (a JSON example) is left as written; a name that is not here is a misspelling, caught before scoring.
PLACEHOLDERS = ("score_max",)
_PLACEHOLDER = re.compile(r"\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}")


def _check_placeholders(text: str, source: str) -> None:
    for name in _PLACEHOLDER.findall(text):
        if name not in PLACEHOLDERS:
            close = difflib.get_close_matches(name, PLACEHOLDERS, n=1, cutoff=0.5)
            hint = f" (did you mean {{{close[0]}}}?)" if close else ""
            raise SelectionConfigError(
                f"The rating prompt {_quoted(text)} in {source} holds the unknown placeholder {{{name}}}{hint}. The "
                f"placeholders are {', '.join('{' + p + '}' for p in PLACEHOLDERS)}, the top of the rating scale."
            )


def _quoted(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def prompts_without_scale(prompts: RatingPrompts, score_max: int) -> list[str]:
    """The complete rating prompts that never name the top of the scale (S as a number). The model then rates on a
    scale of its own guess, and its probabilities over 1..S say little."""
    top = re.compile(rf"(?<![0-9]){score_max}(?![0-9])")
    return [prompt for prompt in prompts.whole() if not top.search(prompt)]


def render_prompt_first(sample: RatingSample, prompt_line: str) -> str:
    """The released scripts' rating text, byte for byte (no space after the colons)."""
    # The released layout has no place for a whole text: it goes where the response goes, the instruction empty.
    return prompt_line + "\n" + "Instruction:" + (sample.instruction or "") + "\n" + "Response:" + sample.response + "\nThe answer is: \n"


def sample_first_texts(sample: RatingSample, prompts: RatingPrompts, chat: bool = False) -> tuple[str, list[str]]:
    """The shared prefix (preamble and sample) and the K suffixes (a rating request each) of `sample_first`.

    Without a chat template the suffix ends in "Rating: " with its space: tokenizers in the Llama, SmolLM and
    GPT families put a digit after a separate space token, so the rating digit is the very next token. In a
    chat the assistant turn that follows is the cue, and the request ends with itself.
    """
    head = prompts.preamble + "\n\n" if prompts.preamble else ""
    if sample.is_text:
        # A whole text is rated as a response given with no instruction: the requests ask about it alone.
        prefix = head + "Response:\n" + sample.response
    else:
        prefix = head + "Instruction:\n" + sample.instruction + "\n\nResponse:\n" + sample.response
    cue = "" if chat else "\nRating: "
    return prefix, ["\n\n" + request.strip() + cue for request in prompts.requests]


def _render_chat(tokenizer, preamble: str, user: str) -> str:
    """One user turn, with the preamble as the system turn where the template takes one.

    As the system turn, the preamble replaces the template's default system prompt (SmolLM's, Qwen's) rather
    than adding to it, which keeps the shared prefix short; templates that refuse a system turn get the
    preamble at the head of the user turn instead.
    """
    def render(messages):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    if not preamble:
        return render([{"role": "user", "content": user}])
    try:
        return render([{"role": "system", "content": preamble}, {"role": "user", "content": user}])
    except TemplateError:
        return render([{"role": "user", "content": preamble + "\n\n" + user}])


def _chat_parts(sample: RatingSample, prompts: RatingPrompts, tokenizer, count: int | None = None) -> tuple[str, list[str]]:
    """`sample_first` through the chat template, cut where the sample ends: (shared prefix, suffixes).

    Args:
        count: render only the first `count` requests (the prefix needs one; the suffixes, which do not depend
            on the sample, are rendered once for the whole dataset).
    """
    body, suffixes = sample_first_texts(sample, RatingPrompts(prompts.requests), chat=True)
    heads, tails = [], []
    for suffix in suffixes[:count]:
        pieces = _render_chat(tokenizer, prompts.preamble, body + _SPLIT_MARK + suffix).split(_SPLIT_MARK)
        if len(pieces) != 2:
            raise ValueError("The tokenizer's chat template alters the message text; set selection_use_chat_template=false.")
        heads.append(pieces[0])
        tails.append(pieces[1])
    return heads[0], tails


def build_requests(
    samples: Sequence[RatingSample],
    prompts: RatingPrompts,
    tokenizer,
    layout: str = "sample_first",
    use_chat_template: bool = True,
) -> list[SampleRequests]:
    """Token ids of every rating request: for each sample, a shared prefix and K suffixes (one per prompt).

    The model sees `prefix + suffix_k` for prompt k. With `sample_first` the prefix is the preamble and the
    sample, tokenised once per sample, and the K suffixes are the same arrays for every sample. With
    `prompt_first` nothing is shared: the prefix is empty and each suffix is a whole released-layout request.

    Args:
        use_chat_template: for `sample_first`, render through the tokenizer's chat template when it has one.
            `prompt_first` never uses a chat template.
    """
    k = len(prompts)
    if layout == "prompt_first":
        lines = prompts.whole()
        texts = [render_prompt_first(s, line) for s in samples for line in lines]
        # A plain tokenizer(text) call, special tokens added as the tokenizer normally does.
        flat = token_arrays(tokenizer, texts, add_special_tokens=True)
        empty = np.zeros(0, dtype=np.int32)
        return [SampleRequests(empty, tuple(flat[i * k : (i + 1) * k])) for i in range(len(samples))]
    if layout != "sample_first":
        raise ValueError(f"Unknown selection_prompt_layout {layout!r}: use one of {', '.join(LAYOUTS)}.")
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        # The template writes any BOS it wants itself; the suffixes do not depend on the sample, so one
        # rendering gives them for all.
        prefixes = [_chat_parts(s, prompts, tokenizer, count=1)[0] for s in samples]
        suffixes = _chat_parts(RatingSample("", ""), prompts, tokenizer)[1]
        leading: list[int] = []
    else:
        prefixes = [sample_first_texts(s, prompts)[0] for s in samples]
        suffixes = sample_first_texts(RatingSample("", ""), prompts)[1]
        leading = leading_special_ids(tokenizer)
    # Prefix and suffixes are tokenised apart and joined, so that every request of a sample starts with the
    # identical token prefix; the cut sits at the end of the response, where tokenisers split anyway.
    suffix_ids = tuple(token_arrays(tokenizer, suffixes))
    head = np.asarray(leading, dtype=np.int32)
    return [SampleRequests(np.concatenate([head, ids]), suffix_ids) for ids in token_arrays(tokenizer, prefixes)]


def _cut_middle(ids: np.ndarray, keep: int) -> np.ndarray:
    """The first and last tokens of `ids`, `keep` in all, the middle left out."""
    head = (keep + 1) // 2
    return np.concatenate([ids[:head], ids[len(ids) - (keep - head) :]])


def truncate_middle(requests: Sequence[SampleRequests], max_positions: int | None) -> tuple[list[SampleRequests], list[bool]]:
    """Fit every request within the model's context by cutting the middle of the sample, never the rating request.

    With `sample_first` the prefix (template, preamble, instruction, response) loses its middle and the short
    suffixes stay whole. With `prompt_first` each whole request loses its middle, so that its rating prompt at
    the start and "The answer is:" at the end stay. Returns the requests and, per sample, whether it was cut.
    """
    if not max_positions:
        return list(requests), [False] * len(requests)
    out, truncated = [], []
    for request in requests:
        longest_suffix = max(len(s) for s in request.suffixes)
        if len(request.prefix) + longest_suffix <= max_positions:
            out.append(request)
            truncated.append(False)
            continue
        if len(request.prefix):
            if longest_suffix >= max_positions:
                raise SelectionConfigError(
                    f"A rating request alone is {longest_suffix} tokens, more than the model's {max_positions}: "
                    "use shorter rating prompts."
                )
            out.append(SampleRequests(_cut_middle(request.prefix, max_positions - longest_suffix), request.suffixes))
        else:
            suffixes = tuple(s if len(s) <= max_positions else _cut_middle(s, max_positions) for s in request.suffixes)
            out.append(SampleRequests(request.prefix, suffixes))
        truncated.append(True)
    return out, truncated


def rating_token_follows(tokenizer, layout: str, use_chat_template: bool, token_id: int) -> bool:
    """Whether a rating digit, written right after a rendered request, is a token of its own.

    If the tokenizer would merge the digit with what precedes it (GPT-2's BPE writes " 1" as one token), the
    model rarely predicts the bare digit there, and its rating probabilities carry less signal.
    """
    probe, prompts = RatingSample("Add 2 and 3.", "5"), RatingPrompts(("Rate the response.",))
    if layout == "prompt_first":
        text = render_prompt_first(probe, "Rate the response.\n")
    elif use_chat_template and getattr(tokenizer, "chat_template", None):
        prefix, suffixes = _chat_parts(probe, prompts, tokenizer)
        text = prefix + suffixes[0]
    else:
        prefix, suffixes = sample_first_texts(probe, prompts)
        text = prefix + suffixes[0]
    without = tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(text + tokenizer.convert_ids_to_tokens(token_id), add_special_tokens=False)["input_ids"] == [*without, token_id]


def score_token_ids(tokenizer, score_max: int) -> list[int]:
    """Vocabulary ids of the rating tokens "1".."S"; each must be a single token of its own."""
    vocab = tokenizer.get_vocab()
    ids, missing = [], []
    for rating in range(1, score_max + 1):
        token_id = vocab.get(str(rating))
        if token_id is None:
            missing.append(str(rating))
        else:
            ids.append(token_id)
    if missing:
        name = getattr(tokenizer, "name_or_path", type(tokenizer).__name__)
        raise SelectionConfigError(
            f"The tokenizer of {name!r} has no single token for the rating(s) {missing}: SelectIT reads one token "
            f"per rating. Lower selection_score_max (at most 9 works with digit-level tokenizers)."
        )
    return ids
