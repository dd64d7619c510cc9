"""The one test of emptiness (`text.is_blank`): whitespace and invisible characters count as nothing."""

import pytest

from selectit_trl.data.text import is_blank


@pytest.mark.parametrize(
    "text",
    [None, "", " ", "\n\t\r", "\u00a0\u3000", "\u200b\u200b\u200b", "\ufeff", "\u200c\u200d\u2060", "\u00ad",
     "\u202e\u2066", "\u3164", "\u2800\u2800", "\x00\x07", " \u200b\n\ufeff "],
    ids=["none", "empty", "space", "newlines", "nbsp-ideographic", "zero-width", "bom", "joiners", "soft-hyphen",
         "bidi", "hangul-filler", "braille-blank", "controls", "mixed"],
)
def test_nothing_visible_is_blank(text):
    assert is_blank(text) is True


@pytest.mark.parametrize("text", ["a", " 0 ", "\u200bok\u200b", "\u00e9", "\u4e2d", "\u0301", ".", "\U0001f600", "\u2800x"])
def test_anything_visible_is_not_blank(text):
    assert is_blank(text) is False
