"""The processes of one `accelerate launch` run, kept together: when one fails, the others stop within seconds.

Every process scores its share into the store and then waits for the others at a barrier. A plain
`torch.distributed.barrier()` waits for a process that has failed until the process-group timeout (30 minutes by
default): NCCL never notices, and gloo only notices once the failed process has exited. So:

- a process that fails writes a note, one line naming its rank and its error, under `selection/failures/`;
- the barrier here polls an asynchronous barrier and those notes, and raises `PeerProcessFailed` with the note as
  soon as one appears.

A note belongs to one launch: it holds the launch's identity (the launcher's process id and rendezvous port, which
every process of a launch shares), so the notes of an earlier run in the same `output_dir` are ignored.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

import torch

from ..errors import PeerProcessFailed
from ..store.outputs import selection_dir

FAILURES_DIR = "failures"
POLL_SECONDS = 0.05


def world() -> tuple[int, int]:
    """(this process's rank, the number of processes)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _launch_id() -> str:
    # torchrun's agent (which accelerate launch runs) is every worker's parent; the port tells apart two launches
    # whose agents happened to get the same process id.
    return f"{os.getppid()}:{os.environ.get('MASTER_ADDR', '')}:{os.environ.get('MASTER_PORT', '')}"


def _failures_dir(output_dir) -> Path:
    return selection_dir(output_dir) / FAILURES_DIR


def note_failure(output_dir, message: str) -> None:
    """Record that this process failed, for the others to read. Best effort: the failure itself comes first."""
    rank, size = world()
    if size < 2 or output_dir is None:
        return
    folder = _failures_dir(output_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".rank{rank}.tmp"
        tmp.write_text(json.dumps({"launch": _launch_id(), "rank": rank, "error": message}), encoding="utf-8")
        os.replace(tmp, folder / f"rank{rank}.json")
    except OSError:
        pass  # a full or read-only disk may be the failure; the others then learn of it from the launcher


@contextlib.contextmanager
def failure_noted(output_dir):
    """Around a phase with barriers: an error raised in this process is noted for the others (`note_failure`),
    unless it is the news of another's failure. For the Python API; the CLI notes its own one-line message."""
    try:
        yield
    except PeerProcessFailed:
        raise
    except BaseException as error:
        note_failure(output_dir, " ".join(str(error).split()) or type(error).__name__)
        raise


def peer_failure(output_dir) -> str | None:
    """The note of another process of this launch that failed, as one line, or None."""
    if output_dir is None:  # the run failed before its recipe was read
        return None
    rank, _ = world()
    folder = _failures_dir(output_dir)
    for path in sorted(folder.glob("rank*.json")) if folder.is_dir() else []:
        try:
            note = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(note, dict) and note.get("launch") == _launch_id() and note.get("rank") != rank:
            return f"process {note.get('rank')} failed: {note.get('error')}"
    return None


def stop_message(failure: str) -> str:
    """What a process stopped by another's failure says: which process, its error, and how to go on."""
    return (f"stopped because {failure.rstrip('.')}. What every process stored before it is kept in selection/store/: "
            "fix that, then run the same command again to resume.")


def barrier(output_dir):
    """A barrier over the processes of this run that stops, within a fraction of a second, when another process
    has failed (`note_failure`), instead of waiting for it until the process-group timeout."""

    def wait() -> None:
        if world()[1] < 2:
            return
        work = torch.distributed.barrier(async_op=True)
        failure = None
        try:
            while failure is None and not work.is_completed():
                time.sleep(POLL_SECONDS)
                failure = peer_failure(output_dir)
            if failure is None:
                work.wait()
                return
        except RuntimeError:  # gloo: the failed process has exited and closed its connection
            failure = failure_soon(output_dir)
            if failure is None:
                raise
        raise PeerProcessFailed(stop_message(failure)) from None

    return wait


def failure_soon(output_dir, seconds: float = 2.0) -> str | None:
    """A peer's note, waiting briefly for it: its process writes the note and then exits, closing its connection,
    but this process may see the connection close first."""
    deadline = time.monotonic() + seconds
    while True:
        failure = peer_failure(output_dir)
        if failure is not None or time.monotonic() > deadline:
            return failure
        time.sleep(POLL_SECONDS)
