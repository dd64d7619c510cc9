"""An iterable `train_dataset` read twice: rated in one pass, each row's fingerprint kept, and filtered to the kept
rows in a second pass that checks every kept row against the one that was rated."""

from __future__ import annotations

import hashlib
import json

from datasets import IterableDataset

from ..errors import DatasetError


def is_shuffled(dataset: IterableDataset) -> bool:
    """Whether an iterable dataset reorders its rows from one epoch to the next (`IterableDataset.shuffle`)."""
    examples = getattr(dataset, "_ex_iterable", None)
    while examples is not None:
        if "Shuffled" in type(examples).__name__:
            return True
        examples = getattr(examples, "ex_iterable", None)
    return False


def row_fingerprint(row: dict) -> str:
    """A short digest of a row's content, to check that an iterable dataset gives the rows it was rated on."""
    return hashlib.blake2b(json.dumps(row, sort_keys=True, default=repr, ensure_ascii=False).encode("utf-8"),
                           digest_size=8).hexdigest()


def fingerprinting(rows: IterableDataset, fingerprints: list[str]):
    """The rows, unchanged, each one's fingerprint appended to `fingerprints` as it goes by."""
    for row in rows:
        fingerprints.append(row_fingerprint(row))
        yield row


def kept_rows(pool: IterableDataset, kept: list[int], fingerprints: list[str]) -> IterableDataset:
    """An iterable dataset restricted to the kept rows: a filter by position in a second pass, which checks each
    kept row against the one that was rated."""
    wanted = set(kept)

    def keep(row: dict, index: int) -> bool:
        if index not in wanted:
            return False
        if index >= len(fingerprints) or row_fingerprint(row) != fingerprints[index]:
            raise DatasetError(
                f"The iterable train_dataset gave another row at position {index} on its second pass than when it "
                "was rated. Selection keeps rows by position, so the dataset must give the same rows in the same "
                "order each time it is iterated: pass it unshuffled, from a source that can be read again."
            )
        return True

    return pool.filter(keep, with_indices=True)
