"""The selection's files under `OUTPUT_DIR/selection/`: `scores.jsonl` and `summary.json`.

Both are written to a temporary file and renamed into place, so a crash leaves either the previous complete
file or the new complete file, never half of one.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

SCORES_FILE = "scores.jsonl"
SUMMARY_FILE = "summary.json"


def selection_dir(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / "selection"


def _atomic_write(path: Path, lines: Iterable[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            for line in lines:
                handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_json(path: Path, data: dict) -> None:
    """Write one JSON file atomically (indented, for people to read)."""
    _atomic_write(path, [json.dumps(data, indent=2, ensure_ascii=False) + "\n"])


def write_selection(output_dir, records: Iterable[dict], summary: dict) -> Path:
    """Write the per-sample records and the summary. The summary goes last: its presence marks a finished selection."""
    folder = selection_dir(output_dir)
    summary_path = folder / SUMMARY_FILE
    if summary_path.exists():
        summary_path.unlink()  # a scores file without its summary is never taken for a finished selection
    _atomic_write(folder / SCORES_FILE, (json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    write_json(summary_path, summary)
    return folder


def read_summary(output_dir) -> dict | None:
    """The summary of a finished selection in `output_dir`, or None when there is none or it cannot be read.

    A summary that does not parse as a JSON object marks no finished selection: its scores cannot be checked
    against anything, so they are scored again.
    """
    path = selection_dir(output_dir) / SUMMARY_FILE
    if not path.is_file():
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            summary = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        logger.warning("Ignoring %s, which cannot be read (%s); scoring again.", path, error)
        return None
    if not isinstance(summary, dict):
        logger.warning("Ignoring %s, which is not a JSON object; scoring again.", path)
        return None
    return summary


def iter_scores(output_dir) -> Iterator[dict]:
    """The records of `scores.jsonl` one at a time, in dataset order, without holding them all."""
    with open(selection_dir(output_dir) / SCORES_FILE, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def read_scores(output_dir) -> list[dict]:
    """All records of `scores.jsonl`, in dataset order."""
    return list(iter_scores(output_dir))
