"""Property-based tests (hypothesis): the reflection math, and the format adapters on arbitrary text."""

import numpy as np
import pytest
from datasets import Dataset
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from selectit_trl.data.formats import rating_samples, translation_prompt
from selectit_trl.data.rows import RatingSample
from selectit_trl.data.training_view import training_dataset
from selectit_trl.strategies import reflection

# Raw rating probabilities as the scorer returns them: each in [0, 1], summing to at most 1.
probabilities = st.integers(2, 9).flatmap(
    lambda s: arrays(np.float64, st.tuples(st.integers(1, 4), st.integers(1, 6), st.just(s)),
                     elements=st.floats(0, 1, allow_nan=False, width=32))
).map(lambda p: p / np.maximum(p.sum(-1, keepdims=True), 1.0))


@settings(max_examples=200, deadline=None)
@given(probabilities, st.sampled_from(reflection.NORMALIZATIONS), st.floats(0, 10))
def test_scores_are_bounded_by_zero_and_the_scale(probs, normalization, alpha):
    s = probs.shape[-1]
    token = reflection.token_scores(reflection.normalize(probs, normalization))
    sentence = reflection.sentence_scores(token, alpha)
    assert ((token >= -1e-12) & (token <= s + 1e-12)).all()
    assert ((sentence >= -1e-12) & (sentence <= s + 1e-12)).all()


@settings(max_examples=200, deadline=None)
@given(probabilities, st.floats(1e-3, 1e3), st.sampled_from(reflection.NORMALIZATIONS))
def test_scores_do_not_change_when_p_is_scaled(probs, factor, normalization):
    before = reflection.token_scores(reflection.normalize(probs, normalization))
    after = reflection.token_scores(reflection.normalize(probs * factor, normalization))
    np.testing.assert_allclose(after, before, rtol=1e-9, atol=1e-12)


@settings(max_examples=300, deadline=None)
@given(
    arrays(np.float64, st.integers(2, 9), elements=st.floats(0.01, 1)),
    st.floats(1e-3, 5),
    st.sampled_from(reflection.NORMALIZATIONS),
)
def test_more_confidence_in_the_same_rating_never_scores_lower(p, extra, normalization):
    best = int(p.argmax())
    more = p.copy()
    more[best] += extra  # the same argmax, held more firmly
    before = reflection.token_scores(reflection.normalize(p, normalization))
    after = reflection.token_scores(reflection.normalize(more, normalization))
    assert after >= before - 1e-12


@settings(max_examples=200, deadline=None)
@given(st.floats(0, 9), st.integers(1, 10), st.floats(0, 100))
def test_prompts_that_agree_score_their_mean(value, k, alpha):
    token = np.full((1, k), value)
    assert reflection.sentence_scores(token, alpha)[0] == pytest.approx(value, rel=1e-12, abs=1e-12)


# Any unicode a dataset may hold, including the empty string, control characters and very long texts.
# Long texts repeat a short random one, which keeps generation cheap.
texts = st.one_of(st.text(max_size=200), st.text(min_size=1, max_size=20).map(lambda t: t * 1000))


@settings(max_examples=60, deadline=None)
@given(texts, texts, texts)
def test_alpaca_rows_round_trip_any_text(instruction, extra, output):
    dataset = Dataset.from_list([{"instruction": instruction, "input": extra, "output": output}])
    expected = RatingSample(instruction + ("\n" + extra if extra else ""), output)
    assert rating_samples(dataset) == [expected]
    trained = training_dataset(dataset, conversational=True)[0]
    assert trained["prompt"][0]["content"] == expected.instruction and trained["completion"][0]["content"] == output


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["human", "gpt"]), texts), min_size=2, max_size=6))
def test_sharegpt_rows_keep_every_turn_verbatim(turns):
    turns = [("human", turns[0][1]), *turns[1:-1], ("gpt", turns[-1][1])]
    dataset = Dataset.from_list([{"conversations": [{"from": f, "value": v} for f, v in turns]}])
    sample = rating_samples(dataset)[0]
    assert sample.response == turns[-1][1]
    messages = training_dataset(dataset, conversational=True)[0]["messages"]
    assert [m["content"] for m in messages] == [v for _, v in turns]


@settings(max_examples=60, deadline=None)
@given(texts, texts)
def test_translation_rows_keep_source_and_target_verbatim(source, target):
    sample = rating_samples(Dataset.from_list([{"translation": {"de": source, "en": target}}]))[0]
    assert sample == RatingSample(translation_prompt("de", "en", source), target)
    assert sample.instruction == f"Translate this from German to English:\nGerman: {source}\nEnglish:"
