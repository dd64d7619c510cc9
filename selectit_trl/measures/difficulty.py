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
from ..engine.released import released_requests
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

    @property
    def released(self) -> bool:
        return self.config.selection_ifd_layout == "released"

    def requests(self, rater: Rater, samples: Sequence[RatingSample]) -> tuple[list, list[bool]]:
        """The requests, and which rows were cut to fit the model (or, in the released layout, are left out)."""
        if self.released:
            requests, left_out = released_requests(samples, rater.tokenizer, self.kind)
            # The released limits are within any model's context this project scores with; a row over it is left out.
            over = [bool(rater.max_positions) and max(r.width(c) for c in range(2)) > rater.max_positions
                    for r in requests]
            return requests, [a or b for a, b in zip(left_out, over)]
        requests = build_target_requests(samples, rater.tokenizer, self.kind, self.config.selection_use_chat_template)
        return fit_target_requests(requests, rater.max_positions)

    def keys(self, rater: Rater, requests) -> list[str]:
        # Headed by the kind, so that a key never equals a rating record's (headed by the rating token ids); the
        # released layout's own targets make its keys differ from the default layout's.
        head = f"{self.kind}|released" if self.released else self.kind
        return [store_key(head.encode("ascii"),
                          [*((b"|", request.sequence(c)) for c in range(len(request.contexts))),
                           (b"|target|", request.target),
                           *((b"|own-target|", target) for target in request.targets or ())])
                for request in requests]

    def batches(self, model, rater: Rater, requests, **options):
        return iter_loss_batches(model, requests, padding_id(rater.tokenizer), **options)

    def record(self, value) -> dict:
        return {"kind": self.kind, "losses": value.tolist()}

    @staticmethod
    def whole(record: dict) -> bool:
        """Mean token losses, one per context: finite and not negative."""
        return finite_numbers(record.get("losses"), 0.0)
