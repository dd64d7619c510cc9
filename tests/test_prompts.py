"""Rating prompts and the two layouts, pinned to exact strings and token ids."""

import numpy as np
import pytest

from selectit_trl.engine.prompts import (
    DEFAULT_RATING_PREAMBLE,
    DEFAULT_RATING_PROMPTS,
    RatingPrompts,
    RatingSample,
    build_requests,
    load_prompts,
    prompts_without_scale,
    render_prompt_first,
    sample_first_texts,
    score_token_ids,
)
from selectit_trl.errors import SelectionConfigError


def test_prompt_first_is_the_released_layout_byte_for_byte():
    sample = RatingSample("Translate to French.\nGood morning", "Bonjour")
    text = render_prompt_first(sample, "Rate the answer from 1 to 5.\n")
    assert text == (
        "Rate the answer from 1 to 5.\n\nInstruction:Translate to French.\nGood morning\nResponse:Bonjour\nThe answer is: \n"
    )


def test_prompt_file_lines_keep_their_newline(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("First prompt.\n\nSecond prompt.\nThird prompt.", encoding="utf-8")
    assert load_prompts(3, 5, prompts_file=path) == RatingPrompts(("First prompt.\n", "Second prompt.\n", "Third prompt."))
    assert load_prompts(2, 5, prompts_file=path).requests == ("First prompt.\n", "Second prompt.\n")


def test_the_file_takes_precedence_over_the_list(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("From the file\n", encoding="utf-8")
    assert load_prompts(1, 5, prompts=["From the list"], prompts_file=path).requests == ("From the file\n",)


def test_list_prompts_and_scale_substitution():
    assert load_prompts(1, 7, prompts=["Rate 1 to {score_max}, {1..7} kept"]) == RatingPrompts(("Rate 1 to 7, {1..7} kept",))


def test_default_set_is_large_and_distinct():
    assert len(DEFAULT_RATING_PROMPTS) >= 9
    assert len(set(DEFAULT_RATING_PROMPTS)) == len(DEFAULT_RATING_PROMPTS)
    five = load_prompts(5, 7)
    assert five.requests == DEFAULT_RATING_PROMPTS[:5]
    assert five.preamble == DEFAULT_RATING_PREAMBLE.replace("{score_max}", "7") and "1 (worst) to 7 (best)" in five.preamble
    assert five.whole()[0] == five.preamble + " " + DEFAULT_RATING_PROMPTS[0]


def test_preamble_defaults_only_with_the_default_prompts():
    assert load_prompts(2, 5, preamble="").preamble == ""
    assert load_prompts(1, 5, prompts=["Whole prompt, 1 to {score_max}."]).preamble == ""
    own = load_prompts(1, 4, prompts=["Good?"], preamble="  Scale 1..{score_max}.\n")
    assert own == RatingPrompts(("Good?",), "Scale 1..4.")
    assert own.whole() == ["Scale 1..4. Good?"]


def test_too_many_prompts_asked_for(tmp_path):
    with pytest.raises(ValueError, match="holds only 10 prompts"):
        load_prompts(11, 5)
    path = tmp_path / "empty.txt"
    path.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(ValueError, match="No rating prompts"):
        load_prompts(1, 5, prompts_file=path)
    with pytest.raises(SelectionConfigError, match="does not exist"):
        load_prompts(1, 5, prompts_file=tmp_path / "missing.txt")


def test_prompt_first_tokens_are_a_plain_tokenizer_call(tokenizer):
    samples = [RatingSample("Add 2 and 3.", "5"), RatingSample("Name a colour.\nwarm", "Red")]
    prompts = RatingPrompts(("Rate it.\n", "Score it."))
    requests = build_requests(samples, prompts, tokenizer, layout="prompt_first")
    for sample, request in zip(samples, requests):
        assert len(request.prefix) == 0
        assert [s.tolist() for s in request.suffixes] == [tokenizer(render_prompt_first(sample, p)).input_ids for p in prompts.requests]


def test_prompt_first_puts_the_preamble_on_each_prompt_line(tokenizer):
    sample = RatingSample("Add 2 and 3.", "5")
    request = build_requests([sample], RatingPrompts(("Good?",), "Scale 1-5."), tokenizer, layout="prompt_first")[0]
    assert tokenizer.decode(request.sequence(0)) == render_prompt_first(sample, "Scale 1-5. Good?")


def test_sample_first_requests_share_the_sample_prefix(tokenizer):
    sample = RatingSample("Add 2 and 3.", "2 and 3 make 5.")
    prompts = load_prompts(3, 5)
    requests = build_requests([sample, sample], prompts, tokenizer, layout="sample_first", use_chat_template=False)
    prefix_text, suffixes = sample_first_texts(sample, prompts)
    assert prefix_text.startswith(prompts.preamble + "\n\nInstruction:\nAdd 2 and 3.")
    assert requests[0].prefix.tolist() == tokenizer(prefix_text).input_ids
    assert [s.tolist() for s in requests[0].suffixes] == [tokenizer(s, add_special_tokens=False).input_ids for s in suffixes]
    # The suffixes do not depend on the sample: one set of arrays serves every sample.
    assert all(a is b for a, b in zip(requests[0].suffixes, requests[1].suffixes))
    assert tokenizer.decode(requests[0].sequence(2)).endswith("\n\nHow correct is it?\nRating: ")


def test_sample_first_with_chat_template(tokenizer):
    sample = RatingSample("Add 2 and 3.", "5")
    prompts = RatingPrompts(("Rate it 1 to 5.", "Good?"), "Rate the response.")
    request = build_requests([sample], prompts, tokenizer, layout="sample_first", use_chat_template=True)[0]
    prefix = tokenizer.decode(request.prefix)
    # The preamble is the system turn, in place of the template's default system prompt.
    assert prefix == (
        "<|im_start|>system\nRate the response.<|im_end|>\n<|im_start|>user\nInstruction:\nAdd 2 and 3.\n\nResponse:\n5"
    )
    assert tokenizer.decode(request.suffixes[1]) == "\n\nGood?<|im_end|>\n<|im_start|>assistant\n"
    # Cut and joined, the request is the template's own rendering, token for token.
    whole = tokenizer.apply_chat_template(
        [
            {"role": "system", "content": "Rate the response."},
            {"role": "user", "content": "Instruction:\nAdd 2 and 3.\n\nResponse:\n5\n\nGood?"},
        ],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert request.sequence(1).tolist() == tokenizer(whole, add_special_tokens=False).input_ids


def test_default_requests_leave_a_dozen_tokens_per_prompt(tokenizer):
    """The point of the default set: everything but ~12 tokens per prompt is shared (docs/performance.md)."""
    sample = RatingSample("Add 2 and 3.", "5")
    request = build_requests([sample], load_prompts(10, 5), tokenizer, layout="sample_first")[0]
    lengths = [len(s) for s in request.suffixes]
    assert max(lengths) <= 14 and np.mean(lengths) < 14


def test_prompt_first_never_uses_the_chat_template(tokenizer):
    sample = RatingSample("Add 2 and 3.", "5")
    requests = build_requests([sample], RatingPrompts(("Rate it.",)), tokenizer, layout="prompt_first", use_chat_template=True)
    assert "<|im_start|>" not in tokenizer.decode(requests[0].sequence(0))


def test_score_tokens_must_be_single_tokens(tokenizer):
    assert score_token_ids(tokenizer, 5) == [tokenizer.convert_tokens_to_ids(str(i)) for i in range(1, 6)]
    with pytest.raises(ValueError, match=r"no single token for the rating\(s\) \['10'\]"):
        score_token_ids(tokenizer, 10)


def test_where_the_rating_digit_is_its_own_token(tokenizer):
    from selectit_trl.engine.prompts import rating_token_follows

    one = score_token_ids(tokenizer, 5)[0]
    assert rating_token_follows(tokenizer, "sample_first", True, one)
    assert rating_token_follows(tokenizer, "sample_first", False, one)
    # The released layout ends in " \n", which this tokenizer writes as one token that a digit never follows.
    assert not rating_token_follows(tokenizer, "prompt_first", False, one)


def test_a_template_without_a_system_turn_gets_the_preamble_in_the_user_turn(tokenizer):
    import copy

    strict = copy.deepcopy(tokenizer)
    strict.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system turn') }}{% endif %}"
        "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    request = build_requests([RatingSample("Add 2 and 3.", "5")], RatingPrompts(("Good?",), "Rate it."), strict)[0]
    assert strict.decode(request.sequence(0)) == (
        "<|im_start|>user\nRate it.\n\nInstruction:\nAdd 2 and 3.\n\nResponse:\n5\n\nGood?<|im_end|>\n<|im_start|>assistant\n"
    )


@pytest.mark.parametrize(
    "prompt, named, hint",
    [("Rate it from 1 to {max_score}.", "{max_score}", " (did you mean {score_max}?)"),
     ("Rate it from 1 to {scoremax}.", "{scoremax}", " (did you mean {score_max}?)"),
     ("Rate the {response} from 1 to {score_max}.", "{response}", "")],
)
def test_an_unknown_placeholder_is_refused_with_the_known_ones(prompt, named, hint):
    with pytest.raises(SelectionConfigError) as error:
        load_prompts(1, 5, [prompt])
    assert str(error.value) == (
        f"The rating prompt {prompt!r} in selection_prompts holds the unknown placeholder {named}{hint}. The "
        "placeholders are {score_max}, the top of the rating scale."
    )


def test_braces_around_anything_but_a_name_are_text_and_kept():
    prompts = load_prompts(1, 7, ['Answer as JSON, {"rating": N}, N from 1 to {score_max}.'])
    assert prompts.requests == ('Answer as JSON, {"rating": N}, N from 1 to 7.',)


def test_prompts_that_never_name_the_top_of_the_scale_are_found():
    assert prompts_without_scale(load_prompts(3, 5), 5) == []  # the default preamble names it
    own = load_prompts(3, 5, ["Rate it.", "Rate it from 1 to {score_max}.", "Score it 1-15."])
    assert prompts_without_scale(own, 5) == ["Rate it.", "Score it 1-15."]  # 15 is not 5
