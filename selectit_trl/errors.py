"""The exceptions selectit-trl raises on bad input or a fault, one class per kind of problem.

Every message names what is wrong, where (the field, the row index, the model) and how to fix it. Each class
also derives from the built-in exception a caller would expect (`ValueError` for bad input, and so on), so
code written against those keeps working. The CLI prints any `SelectITError` as one line, without a
traceback, and exits with status 1. `docs/errors.md` lists them all.
"""

from __future__ import annotations


class SelectITError(Exception):
    """Base class: a problem the user can fix, explained in the message."""


class SelectionConfigError(SelectITError, ValueError):
    """A `selection_*` setting, prompt set or recipe key that cannot work."""


class DatasetError(SelectITError, ValueError):
    """The training dataset as a whole: no rows, or columns that fit no format."""


class RowFormatError(DatasetError):
    """One dataset row that cannot be read in its format; the message names the row index and the problem."""


class ModelSourceError(SelectITError, ValueError):
    """A model that cannot or must not be loaded: a local path that does not exist, or pickle weights."""


class StoreBusy(SelectITError, RuntimeError):
    """Another run is writing the same file of the score store: two runs share one output_dir."""


class StoredSelectionMismatch(SelectITError, RuntimeError):
    """A run resumed from a checkpoint would need new scores, or would select another subset than it trained on."""


class NonFiniteScoresError(SelectITError, RuntimeError):
    """A model produced NaN or infinite rating probabilities; the message names the sample and the model."""

    def __init__(self, message: str, sample_index: int | None = None):
        super().__init__(message)
        self.sample_index = sample_index


class ScoringOutOfMemory(SelectITError, RuntimeError):
    """Scoring ran out of accelerator memory even one sample at a time."""


class StoreWriteError(SelectITError, OSError):
    """The score store could not be written (no space left, a quota, a read-only folder); what was stored is kept."""

    def __init__(self, message: str, errno: int | None = None):
        super().__init__(message)
        self.errno = errno


class OutputDirError(SelectITError, OSError):
    """`output_dir` cannot be created or written; checked before any model loads."""


class PeerProcessFailed(SelectITError, RuntimeError):
    """Under accelerate, another process failed; this one stops too instead of waiting for it at a barrier."""


class SelectionFilesError(SelectITError, ValueError):
    """A file of a finished selection (`scores.jsonl`) is missing or damaged; the message says how to rebuild it."""


class HubUnreachable(SelectITError, OSError):
    """The Hugging Face Hub cannot be reached (offline, no network, no login); what was written locally is kept."""
