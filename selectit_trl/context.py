"""`RunContext`: where a selection runs and what this process may do, built once and passed down.

Under `accelerate launch` every process runs the same selection: each measures its share of the batches into
its own file of the store, all meet at barriers, and the main process alone writes the files and draws the
progress bars. Those facts travel together, so that the measurer, the probe, recycling and diversity take one
argument instead of five.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass


def _alone() -> None:
    """The barrier of a single process: nobody to wait for."""


@dataclass(frozen=True)
class RunContext:
    """Attributes:
    output_dir: the run's output directory; the store and the selection's files are under `selection/`.
    rank, world_size: this process among the processes of the run.
    barrier: waits for every process (`processes.barrier`, which stops when another has failed).
    progress: whether this process draws progress bars (the main one, unless `disable_tqdm`).
    allow_scoring: whether this process may run forward passes; when False every measurement must already be in
        the store (a resumed run, or ZeRO-3, where no process holds whole weights).
    """

    output_dir: str | os.PathLike
    rank: int = 0
    world_size: int = 1
    barrier: Callable[[], None] = _alone
    progress: bool = True
    allow_scoring: bool = True

    @property
    def is_main(self) -> bool:
        """The process that writes the selection's files and speaks for all."""
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int]:
        """(rank, number of processes): which share of the batches this process measures."""
        return self.rank, self.world_size

    def but(self, **changes) -> RunContext:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)
