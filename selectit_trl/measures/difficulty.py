"""IFD's and reverse IFD's measure: a target text's mean token loss after each of its two contexts.

Measured with the model being tuned only: the point of both is how that model finds the data. A record:

    {"model": FINGERPRINT, "model_id": ..., "tokens": KEY, "sample": SHA256, "kind": "ifd",
     "losses": [L_with_context, L_without], "truncated": false}
"""

from __future__ import annotations

from collections.abc import Sequence

from ..data.rows import RatingSample
from ..engine.batching import padding_id
from ..engine.losses import fit_target_requests, iter_loss_batches
from ..engine.targets import build_target_requests
from .base import Measure, Rater, finite_numbers, store_key


class Difficulty(Measure):
    """`kind="ifd"`: the response after the instruction and alone; `"rifd"`: the instruction after the
    response and alone."""

    field = "losses"
    noun = "losses"
    shape = (2,)

    def __init__(self, kind: str, config):
        self.kind, self.config = kind, config
        self.activity = f"Measuring {kind.upper()} losses"

    def raters(self, raters: Sequence[Rater]) -> list[Rater]:
        return list(raters[:1])

    def requests(self, rater: Rater, samples: Sequence[RatingSample]) -> tuple[list, list[bool]]:
        requests = build_target_requests(samples, rater.tokenizer, self.kind, self.config.selection_use_chat_template)
        return fit_target_requests(requests, rater.max_positions)

    def keys(self, rater: Rater, requests) -> list[str]:
        # Headed by the kind, so that a key never equals a rating record's (headed by the rating token ids).
        return [store_key(self.kind.encode("ascii"),
                          [*((b"|", request.sequence(c)) for c in range(len(request.contexts))),
                           (b"|target|", request.target)])
                for request in requests]

    def batches(self, model, rater: Rater, requests, **options):
        return iter_loss_batches(model, requests, padding_id(rater.tokenizer), **options)

    def record(self, value) -> dict:
        return {"kind": self.kind, "losses": value.tolist()}

    @staticmethod
    def whole(record: dict) -> bool:
        """Mean token losses, one per context: finite and not negative."""
        return finite_numbers(record.get("losses"), 0.0)
