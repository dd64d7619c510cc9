"""What a measure is, and the models that measure: the two types every measurement is built from.

A measure is one thing known per sample from a model: SelectIT's rating probabilities (`ratings.py`), IFD's or
reverse IFD's losses (`difficulty.py`), a teacher's rewrite (`rewrites.py`). Each owns what is specific to it:

* which of the run's models measure it (`raters`);
* what a model reads for each sample (`requests`), and so the key its value is stored under (`keys`);
* how a batch of samples is computed (`batches`, through the engine);
* what its store record holds (`record`), and which stored records are whole (`whole`, `value`).

The `Measurer` (`measurer.py`) does everything else, the same for all: reading the store, sharing the work
between processes, progress, writing each batch as it ends, resuming, and the errors. Strategies name the
measures they read by kind (`strategies/base.MEASUREMENTS`), and `selection/plan.py` makes those; recycling
makes its own (the teacher's texts, then the student's losses).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..data.rows import RatingSample


@dataclass
class Rater:
    """A model that measures samples, described without its weights, which `load` brings in only when needed."""

    model_id: str
    tokenizer: object
    fingerprint: str  # identity of the weights as they will run: config, dtype, quantisation, revision, files
    num_parameters: int  # theta, from the configuration
    load: Callable[[], torch.nn.Module]
    release_after_use: bool = False  # a peer is freed before the next model loads
    max_positions: int | None = None  # the context length; longer samples lose their middle


def store_key(head: bytes, parts: Iterable[tuple[bytes, np.ndarray]]) -> str:
    """sha256 of `head`, then of each part's separator and token ids (as int64): the store key of a sample.

    Every measure keys its records this way, over every token id its model reads for the sample, so that a
    change of sample, prompt, layout, chat template, tokenizer or truncation changes the key, and a stored value
    is never reused for something else. The heads keep the measures apart: the rating tokens, "ifd", "rifd", or
    the teacher's token allowance.
    """
    digest = hashlib.sha256(head)
    for separator, ids in parts:
        digest.update(separator)
        digest.update(np.asarray(ids, dtype=np.int64).tobytes())
    return digest.hexdigest()


def finite_numbers(values, low: float = -math.inf, high: float = math.inf) -> bool:
    """Whether `values` is a non-empty list of finite numbers in [low, high] (a boolean is not a number)."""
    return (
        isinstance(values, list) and bool(values)
        and all(type(v) in (int, float) and math.isfinite(v) and low <= v <= high for v in values)
    )


class Measure:
    """One per-sample measurement: subclasses set the attributes and implement the methods below."""

    kind: str  # its name in the store's records and plans, and in summary.json
    noun: str  # what its values are called in messages ("rating probabilities")
    activity: str  # what its progress bars say ("Scoring")
    field: str  # the record's field that holds the value
    shape: tuple[int, ...] = ()  # the shape of one sample's value, for numeric measures
    compiles: bool = True  # whether selection_compile applies to its forward passes

    def raters(self, raters: Sequence[Rater]) -> list[Rater]:
        """Which of the run's models (the tuned one first, then its peers) measure it."""
        return list(raters)

    def requests(self, rater: Rater, samples: Sequence[RatingSample]) -> tuple[list, list[bool]]:
        """What `rater` reads for each sample, as token ids, and whether each was cut to fit its context."""
        raise NotImplementedError

    def keys(self, rater: Rater, requests: Sequence) -> list[str]:
        """Each request's store key (`store_key`)."""
        raise NotImplementedError

    def batches(self, model, rater: Rater, requests: Sequence, **options) -> Iterator[tuple[list[int], np.ndarray]]:
        """Computes the requests not `done`, yielding `(request indices, values)` per batch; `options` are those
        of `batching.run_batches`."""
        raise NotImplementedError

    def record(self, value) -> dict:
        """The fields of a store record besides its model, key, sample and truncation: the value, and what
        people inspecting the store need to tell records apart."""
        raise NotImplementedError

    @staticmethod
    def whole(record: dict) -> bool:
        """Whether a stored record holds a value of this measure that was written whole."""
        raise NotImplementedError

    def value(self, record: dict):
        """The value of a record that passed `whole` (`ledger.read_store` keeps no other), or None when it is not
        of this measure's shape."""
        value = np.asarray(record[self.field], dtype=np.float64)
        return value if value.shape == self.shape else None

    def stack(self, values: list) -> np.ndarray:
        """The values of all samples as one array, in sample order."""
        return np.stack(values)
