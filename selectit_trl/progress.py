"""Live progress of one model's scoring: samples done of all processes, samples/s, tokens/s and an ETA.

The ETA is taken from tokens, not samples. Batches run longest first (see `engine/batching.plan_batches`), so the
first samples are the slowest and a samples-based ETA would run high for most of the run; the time per token
is nearly constant.

Under accelerate only rank 0 draws a bar, and it counts the samples every process has finished: its own as it
runs them, and the other processes' as their records arrive in their files of the score store (which every
process must share anyway, since they all read it back). No collective call is needed, so a process that
finishes its share early never blocks one that has more to do.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Sequence

from tqdm.auto import tqdm

# The one-off estimate of the whole run is printed after this many batches or seconds, whichever comes first:
# late enough that the first batch's warm-up does not dominate it, early enough to act on.
ESTIMATE_AFTER_BATCHES = 3
ESTIMATE_AFTER_SECONDS = 20.0


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60:02d}:{rest % 60:02d}"


def _count(value: float) -> str:
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.1f}{unit}"
    return f"{value:.0f}"


class ScoringProgress:
    """One progress bar for one model's scoring.

    Args:
        desc: the bar's label, e.g. "Scoring with org/model".
        enabled: draw the bar and print the estimate; off on every process but the main one.
        finished_elsewhere: returns the sample indices that other processes have finished since the last call
            (rank 0 only); None in a single process.
    """

    def __init__(self, desc: str, enabled: bool = True, finished_elsewhere: Callable[[], Iterable[int]] | None = None):
        self.desc = desc
        self.enabled = enabled
        self.finished_elsewhere = finished_elsewhere
        self.pending: set[int] = set()
        self.done: set[int] = set()
        self.tokens_done = 0
        self.total_tokens = 0
        self.batches = 0
        self.estimated = False
        self.bar = None

    def start(self, pending: Sequence[int], sample_tokens: Sequence[int]) -> None:
        """Begin counting `pending` (the samples every process will score, together) and their token counts."""
        self.pending = set(pending)
        self.sample_tokens = sample_tokens
        self.total_tokens = sum(int(sample_tokens[i]) for i in self.pending)
        self.started = time.perf_counter()
        if self.enabled and self.pending:
            self.bar = tqdm(
                total=len(self.pending), desc=self.desc, unit="sample", dynamic_ncols=True, file=sys.stderr,
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} samples [{elapsed}, {rate_fmt}{postfix}]",
            )

    def _mark(self, indices: Iterable[int]) -> None:
        for i in indices:
            if i in self.pending and i not in self.done:
                self.done.add(i)
                self.tokens_done += int(self.sample_tokens[i])

    def _refresh(self) -> None:
        if self.finished_elsewhere is not None:
            self._mark(self.finished_elsewhere())
        if self.bar is None:
            return
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        rate = self.tokens_done / elapsed
        remaining = (self.total_tokens - self.tokens_done) / rate if rate > 0 else float("nan")
        eta = _duration(remaining) if rate > 0 else "?"
        self.bar.set_postfix_str(f"{_count(rate)} tokens/s, ETA {eta}", refresh=False)
        self.bar.update(len(self.done) - self.bar.n)
        if not self.estimated and self.tokens_done and (
            self.batches >= ESTIMATE_AFTER_BATCHES or elapsed >= ESTIMATE_AFTER_SECONDS
        ):
            self.estimated = True
            self.bar.write(
                f"{self.desc}: about {_duration(self.total_tokens / rate)} in all for {len(self.pending):,} samples "
                f"({_count(self.total_tokens)} tokens at {_count(rate)} tokens/s over the first {len(self.done):,}).",
                file=sys.stderr,
            )

    def advance(self, batch: Sequence[int]) -> None:
        """This process has finished the samples of `batch` (those not pending are ignored)."""
        self.batches += 1
        self._mark(batch)
        self._refresh()

    @property
    def finished(self) -> bool:
        return len(self.done) >= len(self.pending)

    def wait_for_others(self, poll_seconds: float = 0.5, patience_seconds: float = 600.0) -> None:
        """Rank 0, after its own share: keep the bar moving until every process's share is stored.

        Gives up after `patience_seconds` without news (a process that failed is ended by the launcher; the
        barrier that follows is where the others wait for it).
        """
        if self.finished_elsewhere is None or self.bar is None:
            return
        last_news, seen = time.perf_counter(), len(self.done)
        while not self.finished and time.perf_counter() - last_news < patience_seconds:
            time.sleep(poll_seconds)
            self._refresh()
            if len(self.done) != seen:
                last_news, seen = time.perf_counter(), len(self.done)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
