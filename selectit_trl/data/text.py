"""One test of emptiness for every text selectit-trl reads: responses, instructions, prompts, teachers' rewrites.

`str.strip()` removes whitespace only. A response made of zero-width spaces (U+200B), byte-order marks (U+FEFF),
joiners or soft hyphens is just as empty to a reader and to the model, but `"\\u200b".strip()` is not "". Such
text comes from scraped pages and copy-paste, so a row holding only it must count as having no response.
"""

from __future__ import annotations

import unicodedata

# Characters that render as nothing but are not format characters (category Cf) or whitespace: the Hangul fillers
# and the blank Braille pattern, which are letters or symbols by category and are used to fake empty text.
_INVISIBLE_GRAPHIC = frozenset("\u115f\u1160\u3164\uffa0\u2800")
# Categories with nothing to see: format (ZWSP, ZWJ, BOM, soft hyphen, bidi marks), control, unassigned
# surrogates, and the separators (which str.isspace covers too, except U+180E and a few older ones).
_INVISIBLE_CATEGORIES = frozenset({"Cf", "Cc", "Cs", "Zs", "Zl", "Zp"})


def is_blank(text: str | None) -> bool:
    """True when `text` is None or holds nothing visible: whitespace, format and control characters only."""
    if not text:
        return True
    return all(
        ch.isspace() or ch in _INVISIBLE_GRAPHIC or unicodedata.category(ch) in _INVISIBLE_CATEGORIES for ch in text
    )
