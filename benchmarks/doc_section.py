"""The measured part of a doc page: the text between two HTML comments, which a benchmark rewrites."""

from __future__ import annotations

from pathlib import Path


def replace_section(doc: Path, start: str, end: str, text: str) -> None:
    """Puts `text` between the markers `start` and `end` of `doc`, keeping everything around them."""
    page = doc.read_text(encoding="utf-8")
    head, rest = page.split(start, 1)
    _, tail = rest.split(end, 1)
    doc.write_text(f"{head}{start}\n{text}\n{end}{tail}", encoding="utf-8")
