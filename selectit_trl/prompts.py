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

import os
from collections.abc import Sequence
from dataclasses import dataclass

LAYOUTS = ("sample_first", "prompt_first")

# Written for this project. Each asks for one number on a 1..S scale and reads the same whether it stands
# before the sample (prompt_first) or after it (sample_first). "{score_max}" is replaced by S.
DEFAULT_RATING_PROMPTS: tuple[str, ...] = (
    "On a scale from 1 to {score_max}, how well does the response carry out the instruction?",
    "Give the response a quality score from 1 (poor) to {score_max} (excellent).",
    "How correct and helpful is the response? Answer with one number from 1 to {score_max}.",
    "Rate how accurately the response answers the instruction, from 1 to {score_max}.",
    "Score how completely the response fulfils the request: 1 means not at all, {score_max} means fully.",
    "Would a careful expert accept this response as written? Rate it from 1 to {score_max}.",
    "Judge the response for relevance and correctness on a scale of 1 to {score_max}.",
    "As an example for teaching an assistant, how good is this instruction and response? Give 1 to {score_max}.",
    "How clear, accurate and useful is the response? Reply with a score between 1 and {score_max}.",
    "Grade the answer from 1 (unacceptable) to {score_max} (ideal).",
)


@dataclass(frozen=True)
class RatingSample:
    """What the model rates: the full instruction (with its input, if any) and the response."""

    instruction: str
    response: str


def load_prompts(
    num_prompts: int,
    score_max: int,
    prompts: Sequence[str] | None = None,
    prompts_file: str | os.PathLike | None = None,
) -> list[str]:
    """The first K rating prompts, from a file, a list, or the default set (in that order of precedence).

    A file holds one prompt per line. Each line keeps its trailing newline, exactly as the released scripts
    read it, so that `prompt_first` renders their bytes. Blank lines are skipped.
    """
    if prompts_file is not None:
        if not os.path.isfile(prompts_file):
            raise FileNotFoundError(f"selection_prompts_file {str(prompts_file)!r} does not exist.")
        with open(prompts_file, encoding="utf-8") as handle:
            candidates = [line for line in handle.readlines() if line.strip()]
        source = f"prompt file {str(prompts_file)!r}"
    elif prompts is not None:
        candidates = [p for p in prompts if isinstance(p, str) and p.strip()]
        if len(candidates) != len(prompts):
            raise ValueError("selection_prompts must be a list of non-empty strings.")
        source = "selection_prompts"
    else:
        candidates = list(DEFAULT_RATING_PROMPTS)
        source = "the default prompt set"
    if not candidates:
        raise ValueError(f"No rating prompts found in {source}: give at least one non-empty line.")
    if num_prompts < 1:
        raise ValueError(f"selection_num_prompts must be >= 1, got {num_prompts}.")
    if num_prompts > len(candidates):
        raise ValueError(
            f"selection_num_prompts={num_prompts} but {source} holds only {len(candidates)} prompts: "
            f"lower selection_num_prompts or add prompts."
        )
    # Plain replacement rather than str.format, so that braces in a user's prompt are left alone.
    return [p.replace("{score_max}", str(score_max)) for p in candidates[:num_prompts]]


def render_prompt_first(sample: RatingSample, prompt_line: str) -> str:
    """The released scripts' rating text, byte for byte (no space after the colons)."""
    return prompt_line + "\n" + "Instruction:" + sample.instruction + "\n" + "Response:" + sample.response + "\nThe answer is: \n"


def sample_first_texts(sample: RatingSample, prompts: Sequence[str]) -> tuple[str, list[str]]:
    """The shared prefix (the sample) and the K suffixes (a rating request each) of the `sample_first` layout.

    The suffix ends in "Rating: " with its space: tokenizers in the Llama, SmolLM and GPT families put a digit
    after a separate space token, so the rating digit is the very next token.
    """
    prefix = "Instruction:\n" + sample.instruction + "\n\nResponse:\n" + sample.response
    return prefix, ["\n\n" + prompt.strip() + "\nRating: " for prompt in prompts]


def chat_texts(sample: RatingSample, prompts: Sequence[str], tokenizer) -> list[str]:
    """`sample_first` rendered through the tokenizer's chat template, one user turn per rating request."""
    prefix, suffixes = sample_first_texts(sample, prompts)
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": prefix + suffix.rstrip(" ")}], tokenize=False, add_generation_prompt=True
        )
        for suffix in suffixes
    ]


def build_requests(
    samples: Sequence[RatingSample],
    prompts: Sequence[str],
    tokenizer,
    layout: str = "sample_first",
    use_chat_template: bool = True,
) -> list[list[list[int]]]:
    """Token ids of every rating request: one list per sample, holding K sequences (one per prompt).

    Args:
        use_chat_template: for `sample_first`, render through the tokenizer's chat template when it has one.
            `prompt_first` never uses a chat template.
    """
    if layout == "prompt_first":
        texts = [render_prompt_first(s, p) for s in samples for p in prompts]
        # A plain tokenizer(text) call, special tokens added as the tokenizer normally does.
        flat = tokenizer(texts, add_special_tokens=True)["input_ids"]
    elif layout == "sample_first":
        if use_chat_template and getattr(tokenizer, "chat_template", None):
            texts = [t for s in samples for t in chat_texts(s, prompts, tokenizer)]
            # The template already writes any BOS it wants; adding special tokens again would double it.
            flat = tokenizer(texts, add_special_tokens=False)["input_ids"]
        else:
            pairs = [sample_first_texts(s, prompts) for s in samples]
            prefixes = tokenizer([p for p, _ in pairs], add_special_tokens=True)["input_ids"]
            suffixes = tokenizer([x for _, xs in pairs for x in xs], add_special_tokens=False)["input_ids"]
            # Tokenised apart and joined, so that every request of a sample starts with the identical prefix.
            flat = [prefixes[i // len(prompts)] + suffixes[i] for i in range(len(suffixes))]
    else:
        raise ValueError(f"Unknown selection_prompt_layout {layout!r}: use one of {', '.join(LAYOUTS)}.")
    k = len(prompts)
    return [flat[i * k : (i + 1) * k] for i in range(len(samples))]


def rating_token_follows(tokenizer, layout: str, use_chat_template: bool, token_id: int) -> bool:
    """Whether a rating digit, written right after a rendered request, is a token of its own.

    If the tokenizer would merge the digit with what precedes it (GPT-2's BPE writes " 1" as one token), the
    model rarely predicts the bare digit there, and its rating probabilities carry less signal.
    """
    probe = RatingSample("Add 2 and 3.", "5")
    if layout == "prompt_first":
        text = render_prompt_first(probe, "Rate the response.\n")
    elif use_chat_template and getattr(tokenizer, "chat_template", None):
        text = chat_texts(probe, ["Rate the response."], tokenizer)[0]
    else:
        prefix, suffixes = sample_first_texts(probe, ["Rate the response."])
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
        raise ValueError(
            f"The tokenizer of {name!r} has no single token for the rating(s) {missing}: SelectIT reads one token "
            f"per rating. Lower selection_score_max (at most 9 works with digit-level tokenizers)."
        )
    return ids
