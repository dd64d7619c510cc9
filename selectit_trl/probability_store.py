"""The append-only store of rating probabilities under `OUTPUT_DIR/selection/store/`.

Scoring a large dataset takes hours, so every batch's probabilities are appended here as soon as they exist,
flushed and fsynced, one JSON line per sample and model:

    {"model": FINGERPRINT, "model_id": ..., "tokens": SHA256, "sample": SHA256, "prompts": SHA256,
     "layout": ..., "probs": [[p_1 .. p_S] x K], "truncated": false}

A record is found again by the model's fingerprint (its weights as they run: configuration, dtype,
quantisation, revision, files) and the hash of the token ids the model reads for the sample. That one hash
covers the sample's content, the prompt set, the layout, the chat template, the tokenizer and any
truncation, so a change to any of them finds no record and scores again, while everything it does not touch
is reused. The sample's content hash, the prompt-set hash and the layout are stored too, for inspection.
The position of a row in the dataset is not part of the key, so the same rows in another order reuse every
score. Raw probabilities are stored, so alpha, the normalisation, the ratio and the model weights can change
without a forward pass.

Each process appends to a file of its own (`rank<R>.jsonl`), so there is never more than one writer per file.
A process killed in mid-write can leave a torn last line: readers drop any line that does not parse or does
not hold a complete record, and the owner cuts a torn tail off before it appends again.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterable
from pathlib import Path

from .store import selection_dir

logger = logging.getLogger(__name__)

STORE_DIR = "store"
RECORD_FIELDS = ("model", "tokens", "probs")


def store_dir(output_dir) -> Path:
    return selection_dir(output_dir) / STORE_DIR


def _valid(record) -> bool:
    if not isinstance(record, dict) or not all(isinstance(record.get(f), (str, list)) for f in RECORD_FIELDS):
        return False
    probs = record["probs"]
    return (
        bool(probs)
        and all(isinstance(row, list) and len(row) == len(probs[0]) and row for row in probs)
        and all(isinstance(p, (int, float)) and math.isfinite(p) and 0.0 <= p <= 1.0 for row in probs for p in row)
    )


def read_store(output_dir) -> dict[tuple[str, str], dict]:
    """Every complete record in the store, by (model fingerprint, token hash); a later record replaces an earlier."""
    folder = store_dir(output_dir)
    found: dict[tuple[str, str], dict] = {}
    dropped = 0
    for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        with open(path, "rb") as handle:
            data = handle.read()
        for raw in data.split(b"\n"):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError):
                record = None
            if not _valid(record):
                dropped += 1  # a line torn by a kill in mid-write, or damaged since: never trusted
                continue
            found[(record["model"], record["tokens"])] = record
    if dropped:
        logger.warning("Dropped %d incomplete or damaged line(s) of the score store in %s; those samples are scored "
                       "again.", dropped, folder)
    return found


def set_aside(output_dir) -> Path | None:
    """Move the store out of the way (`selection_overwrite`), keeping it beside, so that nothing is deleted."""
    folder = store_dir(output_dir)
    if not folder.is_dir():
        return None
    target = folder.with_name(f"{STORE_DIR}.replaced-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    folder.rename(target)
    logger.warning("selection_overwrite: the score store was moved to %s; scoring everything again.", target)
    return target


class StoreWriter:
    """Appends records to this process's file of the store, durably, one batch at a time."""

    def __init__(self, output_dir, rank: int = 0):
        self.path = store_dir(output_dir) / f"rank{rank}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._cut_torn_tail()
        self._handle = open(self.path, "ab")

    def _cut_torn_tail(self) -> None:
        """Cut a last line without its newline (a kill in mid-write), so that the next line starts clean."""
        if not self.path.exists():
            return
        with open(self.path, "r+b") as handle:
            size = handle.seek(0, os.SEEK_END)
            if size == 0:
                return
            handle.seek(size - 1)
            if handle.read(1) == b"\n":
                return
            # Look back for the last complete line; a torn line is at most one record long.
            start = max(0, size - (1 << 20))
            while True:
                handle.seek(start)
                cut = handle.read(size - start).rfind(b"\n")
                if cut >= 0 or start == 0:
                    break
                start = max(0, start - (1 << 20))
            keep = start + cut + 1 if cut >= 0 else 0
            handle.truncate(keep)
            logger.warning("Cut a torn last line (%d bytes) off %s, left by an interrupted run.", size - keep, self.path)

    def append(self, records: Iterable[dict]) -> None:
        """Write a batch's records in one write, then flush and fsync: once this returns, they survive a crash."""
        payload = b"".join(json.dumps(r, ensure_ascii=False).encode("utf-8") + b"\n" for r in records)
        if not payload:
            return
        self._handle.write(payload)
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
