"""The append-only store of per-sample measurements under `OUTPUT_DIR/selection/store/`.

Scoring a large dataset takes hours, so every batch's values are appended here as soon as they exist,
flushed and fsynced, one JSON line per sample and model. Every record has the same envelope, and the fields of
its measure (`measures/`: rating probabilities, IFD and reverse-IFD losses, a teacher's rewrites):

    {"model": FINGERPRINT, "model_id": ..., "tokens": KEY, "sample": SHA256, ...its measure's fields...,
     "truncated": false}

for example `"prompts": SHA256, "layout": ..., "probs": [[p_1 .. p_S] x K]` for SelectIT's ratings. The ledger
knows the envelope only; each measure says which of its records are whole (`Measure.whole`).

A record is found again by the model's fingerprint (its weights as they run: configuration, dtype,
quantisation, revision, files) and its key, the hash of the token ids the model reads for the sample
(`measures.base.store_key`). That one hash
covers the sample's content, the prompt set, the layout, the chat template, the tokenizer and any
truncation, so a change to any of them finds no record and scores again, while everything it does not touch
is reused. The sample's content hash, the prompt-set hash and the layout are stored too, for inspection.
The position of a row in the dataset is not part of the key, so the same rows in another order reuse every
score. Raw probabilities are stored, so alpha, the normalisation, the ratio and the model weights can change
without a forward pass.

Each process appends to a file of its own (`rank<R>.jsonl`), so there is never more than one writer per file.
A process killed in mid-write can leave a torn last line: readers drop any line that does not parse or does
not hold a complete record, and the owner cuts a torn tail off before it appends again.

Beside the records, `plans/rank<R>.jsonl` keeps the batches each process was about to run, written and fsynced
before the first of them runs:

    {"model": FINGERPRINT, "kind": "ratings", "layout": "shared-prefix", "time_ns": ...,
     "batches": [[WIDTH, [TOKENS, TOKENS, ...]], ...]}

The floats of a batched forward pass depend on the batch's shape: on CPUs without AMX they differ in the last
bits from one batch to another. A sample that must be measured again (after a kill, a torn line, or a failed
process) therefore runs in the very batch, at the very width and row, that its plan first gave it, and comes out
bit for bit as it would have. The plans live in their own folder so that the records' files, and every reader
of them, stay as they were.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from ..errors import StoreBusy
from .outputs import selection_dir

logger = logging.getLogger(__name__)

STORE_DIR = "store"
PLANS_DIR = "plans"


def store_dir(output_dir) -> Path:
    return selection_dir(output_dir) / STORE_DIR


def _addressed(record) -> bool:
    """Whether a line is a record with a model and a key; what its value must hold is up to its measure."""
    return isinstance(record, dict) and isinstance(record.get("model"), str) and isinstance(record.get("tokens"), str)


def _records(path: Path, valid: Callable[[object], bool]):
    """The records of one store file, and how many of its lines were dropped. Read line by line; a last line
    without its newline is torn even when it parses, as the owning writer will cut it off."""
    dropped = 0
    with open(path, "rb") as handle:
        for raw in handle:
            if not raw.endswith(b"\n"):
                dropped += bool(raw.strip())
                break
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except (UnicodeDecodeError, ValueError, RecursionError):
                record = None
            try:
                whole = valid(record)
            except (OverflowError, RecursionError, TypeError):
                whole = False
            if whole:
                yield record, 0
            else:
                dropped += 1  # damaged since it was written: never trusted
    if dropped:
        yield None, dropped


def read_store(
    output_dir, wanted: set[tuple[str, str]] | None = None, whole: Callable[[dict], bool] | None = None
) -> dict[tuple[str, str], dict]:
    """The complete records in the store, by (model fingerprint, token hash); a later record replaces an earlier.

    With `wanted`, only those keys are kept, so that the records of other models and prompts stored over time
    do not fill memory. `whole` is the measure's test of a record's value (`Measure.whole`): a record that fails
    it is dropped as damaged. Without it, any line with a model and a key is a record.
    """

    def valid(record) -> bool:
        # Other measures' records, and records not wanted, are not this measure's to judge.
        return _addressed(record) and (
            whole is None or (wanted is not None and (record["model"], record["tokens"]) not in wanted) or whole(record))

    folder = store_dir(output_dir)
    found: dict[tuple[str, str], dict] = {}
    dropped = 0
    for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        for record, bad in _records(path, valid):
            if record is None:
                dropped += bad
                continue
            key = (record["model"], record["tokens"])
            if wanted is None or key in wanted:
                found[key] = record
    if dropped:
        logger.warning("Dropped %d incomplete or damaged line(s) of the score store in %s; the samples they held are "
                       "scored again.", dropped, folder)
    return found


def set_aside(output_dir) -> Path | None:
    """Move the store out of the way (`selection_overwrite`), keeping it beside, so that nothing is deleted."""
    folder = store_dir(output_dir)
    if not folder.is_dir():
        return None
    target = folder.with_name(f"{STORE_DIR}.replaced-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**9:09d}")
    folder.rename(target)
    _fsync_directory(folder.parent)
    logger.warning("selection_overwrite: the score store was moved to %s; scoring everything again.", target)
    return target


class StoreFollower:
    """Follows the other processes' files of the store, to count the records they add (for rank 0's progress bar).

    Made before any process starts appending: it starts from the end of each file's last complete line, which is
    where the owner appends next, even after cutting a torn tail off.
    """

    def __init__(self, output_dir, own_rank: int):
        self.folder = store_dir(output_dir)
        self.own_file = f"rank{own_rank}.jsonl"
        self.offsets = {path.name: self._complete_size(path) for path in self._files()}
        self.backlog: dict[tuple[str, str], list[str]] = defaultdict(list)

    def _files(self) -> list[Path]:
        return [p for p in sorted(self.folder.glob("*.jsonl")) if p.name != self.own_file] if self.folder.is_dir() else []

    @staticmethod
    def _complete_size(path: Path) -> int:
        """Bytes up to the end of the last complete line, found by reading back from the end."""
        with open(path, "rb") as handle:
            end = handle.seek(0, os.SEEK_END)
            start = end
            while start > 0:
                start = max(0, start - (1 << 20))
                handle.seek(start)
                cut = handle.read(end - start).rfind(b"\n")
                if cut >= 0:
                    return start + cut + 1
            return 0

    def _poll(self) -> None:
        for path in self._files():
            offset = self.offsets.get(path.name, 0)
            try:
                with open(path, "rb") as handle:
                    handle.seek(offset)
                    data = handle.read()
            except OSError:
                continue
            end = data.rfind(b"\n") + 1  # a line still being written is read on a later poll
            for line in data[:end].splitlines():
                try:
                    record = json.loads(line)
                    self.backlog[(record["model"], record.get("kind", "ratings"))].append(record["tokens"])
                except (ValueError, TypeError, KeyError, RecursionError):
                    continue  # progress only counts; the reader proper decides what is valid
            self.offsets[path.name] = offset + end

    def take(self, fingerprint: str, kind: str = "ratings") -> list[str]:
        """Token hashes of the records of this model and kind of measurement added since the last call."""
        self._poll()
        return self.backlog.pop((fingerprint, kind), [])

    def finished_rows(self, fingerprint: str, kind: str, rows_of: Mapping[str, Sequence[int]]) -> Callable[[], list[int]]:
        """For `ScoringProgress(finished_elsewhere=...)`: the rows (through `rows_of`, store key -> rows) whose
        records of this model and kind the other processes have added since the last call."""
        return lambda: [j for key in self.take(fingerprint, kind) for j in rows_of.get(key, ())]


def _fsync_directory(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class StoreWriter:
    """Appends records to this process's file of the store (or of its `plans/`), durably, one batch at a time."""

    def __init__(self, output_dir, rank: int = 0, plans: bool = False):
        folder = store_dir(output_dir) / PLANS_DIR if plans else store_dir(output_dir)
        self.path = folder / f"rank{rank}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        # Unbuffered: a write that fails (a full disk) must leave no bytes behind in a buffer, to be flushed as a
        # torn line when the file closes.
        self._handle = open(self.path, "ab", buffering=0)
        try:
            # One writer per file: a second job scoring into the same output_dir would interleave with this one.
            fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._handle.close()
            raise StoreBusy(
                f"{self.path} is being written by another process: two runs share this output_dir. Wait for the "
                "other run, or give this one another output_dir."
            ) from None
        self._cut_torn_tail()
        if created:
            _fsync_directory(self.path.parent)  # so that the new file itself survives a power loss

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
        """Write a batch's records, then fsync: once this returns, they survive a crash.

        A write that fails part way (no space left, a quota, a file-size limit) is cut back to where the batch
        began before the error is raised, so the file still ends with a whole line and holds every earlier batch.
        """
        payload = b"".join(json.dumps(r, ensure_ascii=False).encode("utf-8") + b"\n" for r in records)
        if not payload:
            return
        descriptor = self._handle.fileno()
        start = os.lseek(descriptor, 0, os.SEEK_END)
        disk = os.fstatvfs(descriptor)
        if disk.f_bavail * disk.f_frsize < len(payload):  # stop before writing, rather than cut a line back after
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
        try:
            view = memoryview(payload)
            while view:  # os.write may write less than asked, as a disk fills
                view = view[os.write(descriptor, view):]
            os.fsync(descriptor)
        except OSError:
            # Only a failed write is cut back. A signal (Ctrl-C, SIGTERM) that lands during fsync leaves whole lines,
            # which are kept; one between two partial writes (local files are rarely written in parts) leaves a torn
            # line, which readers drop and the next writer cuts off.
            os.ftruncate(descriptor, start)
            raise

    def close(self) -> None:
        self._handle.close()  # also releases the lock

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# A planned batch: its width in tokens, and the store keys of its samples in row order.
PlannedBatch = tuple[int, tuple[str, ...]]


def _valid_plan(record) -> bool:
    return (
        isinstance(record, dict)
        and all(isinstance(record.get(field), str) for field in ("model", "kind", "layout"))
        and type(record.get("time_ns")) is int
        and isinstance(record.get("batches"), list)
        and all(
            isinstance(batch, list) and len(batch) == 2 and type(batch[0]) is int and batch[0] > 0
            and isinstance(batch[1], list) and batch[1] and all(isinstance(key, str) for key in batch[1])
            for batch in record["batches"]
        )
    )


def read_plans(output_dir, models: set[str] | None = None) -> dict[tuple[str, str, str], list[PlannedBatch]]:
    """The batches planned so far, by (model fingerprint, kind of measurement, layout), as they stand now.

    A sample planned more than once (a batch planned again with a smaller budget after running out of memory)
    belongs to its latest batch, and a batch that has lost a sample to a later one is no longer whole, so it is
    left out. Damaged lines are skipped: a sample whose plan was lost is planned again.
    """
    folder = store_dir(output_dir) / PLANS_DIR
    records = []
    for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        records.extend(record for record, _ in _plan_records(path) if models is None or record["model"] in models)
    owner: dict[tuple[str, str, str, str], int] = {}  # (model, kind, layout, key) -> its latest batch
    batches: list[tuple[tuple[str, str, str], PlannedBatch]] = []
    for record in sorted(records, key=lambda r: r["time_ns"]):
        group = (record["model"], record["kind"], record["layout"])
        for width, keys in record["batches"]:
            for key in keys:
                owner[(*group, key)] = len(batches)
            batches.append((group, (width, tuple(keys))))
    plans: dict[tuple[str, str, str], list[PlannedBatch]] = defaultdict(list)
    for number, (group, (width, keys)) in enumerate(batches):
        if all(owner[(*group, key)] == number for key in keys):
            plans[group].append((width, keys))
    return dict(plans)


def _plan_records(path: Path):
    for record, _ in _records(path, _valid_plan):
        if record is not None:
            yield record, 0


def append_plan(output_dir, rank: int, model: str, kind: str, layout: str, batches: Sequence[PlannedBatch]) -> None:
    """Record durably, before they run, the batches this process is about to run."""
    if not batches:
        return
    record = {"model": model, "kind": kind, "layout": layout, "time_ns": time.time_ns(),
              "batches": [[int(width), list(keys)] for width, keys in batches]}
    with StoreWriter(output_dir, rank=rank, plans=True) as writer:
        writer.append([record])
