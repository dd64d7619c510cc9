"""The selection's files under `OUTPUT_DIR/selection/`: `scores.jsonl`, `summary.json` and `subset.jsonl`.

Each is written to a temporary file and renamed into place, so a crash leaves either the previous complete
file or the new complete file, never half of one.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from ..errors import OutputDirError, SelectionFilesError

logger = logging.getLogger(__name__)

SCORES_FILE = "scores.jsonl"
SUMMARY_FILE = "summary.json"
SUBSET_FILE = "subset.jsonl"


def selection_dir(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / "selection"


def check_writable(output_dir) -> None:
    """Create `output_dir` if needed and prove a file can be made in it, before any model loads."""
    path = Path(output_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise OutputDirError(
            f"output_dir {str(path)!r} cannot be written ({error.strerror or error}). Choose another output_dir, or "
            "make this one writable (its permissions, or a read-write mount)."
        ) from None


def _current_umask() -> int:
    """The process's umask. os.umask can only be read by setting it, so it is set back at once."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: Path, fill: Callable[[BinaryIO], None]) -> None:
    """Write `path` through `fill` into a temporary file beside it, fsync it, and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        # mkstemp makes the file private (0600); the output is the user's, readable as their umask says, like the
        # adapter and every other file the run writes.
        os.fchmod(fd, 0o666 & ~_current_umask())
        with os.fdopen(fd, "wb") as handle:
            fill(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _atomic_write(path: Path, lines: Iterable[str]) -> None:
    def fill(handle: BinaryIO) -> None:
        for line in lines:
            handle.write(line.encode("utf-8"))

    atomic_write(path, fill)


def write_json(path: Path, data: dict) -> None:
    """Write one JSON file atomically (indented, for people to read)."""
    _atomic_write(path, [json.dumps(data, indent=2, ensure_ascii=False) + "\n"])


def write_selection(output_dir, records: Iterable[dict], summary: dict) -> Path:
    """Write the per-sample records and the summary. The summary goes last: its presence marks a finished selection."""
    folder = selection_dir(output_dir)
    summary_path = folder / SUMMARY_FILE
    for stale in (summary_path, folder / SUBSET_FILE):
        if stale.exists():  # a scores file without its summary is never taken for a finished selection
            stale.unlink()
    _atomic_write(folder / SCORES_FILE, (json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    write_json(summary_path, summary)
    return folder


def write_subset(output_dir, rows: Iterable[dict]) -> Path | None:
    """Write the kept rows exactly as the user gave them, every column, in dataset order: one JSON object a line.

    Returns None, with a warning, when a row holds a value JSON cannot carry (an image, raw bytes): the file
    would not be the user's rows, so there is none.
    """
    path = selection_dir(output_dir) / SUBSET_FILE
    try:
        _atomic_write(path, (json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    except TypeError as error:
        logger.warning("No %s: a kept row holds a value JSON cannot carry (%s). The kept rows are the rows marked "
                       "selected in %s.", SUBSET_FILE, error, SCORES_FILE)
        return None
    return path


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


# What to do about a missing or damaged scores.jsonl: it is a view of the store, rebuilt without a forward pass.
REBUILD_SCORES = ("Run `selectit-trl score` again with the same recipe: it writes the file again from the score store "
                  "in selection/store/, with no forward pass.")


def iter_scores(output_dir) -> Iterator[dict]:
    """The records of `scores.jsonl` one at a time, in dataset order, without holding them all.

    A missing file, or a line that is not a JSON object, is a `SelectionFilesError` naming the file, the line and
    how to rebuild it.
    """
    path = selection_dir(output_dir) / SCORES_FILE
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        raise SelectionFilesError(f"{path} is missing. {REBUILD_SCORES}") from None
    with handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:  # JSONDecodeError, or bytes that are not UTF-8
                record = None
            if not isinstance(record, dict):
                raise SelectionFilesError(f"{path} is damaged at line {number} (cut short or edited). {REBUILD_SCORES}")
            yield record


def read_scores(output_dir) -> list[dict]:
    """All records of `scores.jsonl`, in dataset order."""
    return list(iter_scores(output_dir))
