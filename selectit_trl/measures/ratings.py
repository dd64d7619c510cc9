"""SelectIT's measure: the probabilities of the rating tokens "1".."S" under each of K rating prompts.

Measured by every model of the run (the tuned one and its peers). A record:

    {"model": FINGERPRINT, "model_id": ..., "tokens": KEY, "sample": SHA256, "prompts": SHA256, "layout": ...,
     "probs": [[p_1 .. p_S] x K], "truncated": false}
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence

import numpy as np

from ..data.rows import RatingSample
from ..engine.batching import padding_id
from ..engine.prompts import RatingPrompts, build_requests, rating_token_follows, score_token_ids, truncate_middle
from ..engine.scoring import SampleRequests, iter_score_batches
from .base import Measure, Rater, finite_numbers, store_key

logger = logging.getLogger(__name__)


def token_hashes(requests: Sequence[SampleRequests], token_ids: Sequence[int]) -> list[str]:
    """Each sample's store key: every token id the model reads for it, under the rating tokens' ids.

    Whole sequences, as the model reads them: how they are split into prefix and suffixes is a matter of speed,
    not of what is scored.
    """
    head = np.asarray(token_ids, dtype=np.int64).tobytes()
    return [store_key(head, ((b"|", sample.sequence(k)) for k in range(len(sample.suffixes)))) for sample in requests]


class Ratings(Measure):
    kind = "ratings"
    field = "probs"
    noun = "rating probabilities"
    activity = "Scoring"

    def __init__(self, prompts: RatingPrompts, config, raters: Sequence[Rater]):
        self.prompts, self.config = prompts, config
        # Names the prompts in each record, for people inspecting the store; the keys already cover them.
        self.prompt_set = hashlib.sha256(json.dumps(
            [prompts.preamble, list(prompts.requests), config.selection_score_max], ensure_ascii=False
        ).encode("utf-8")).hexdigest()
        self.shape = (len(prompts.requests), config.selection_score_max)
        for rater in raters:
            first = score_token_ids(rater.tokenizer, config.selection_score_max)[0]
            if not rating_token_follows(rater.tokenizer, config.selection_prompt_layout, config.selection_use_chat_template, first):
                logger.warning(
                    "With the tokenizer of %s, a rating digit after the request merges with the preceding text into "
                    "another token, so the model seldom predicts the bare digit there and its ratings carry less "
                    "signal. Prefer sample_first; keep prompt_first only to reproduce the released scripts' scores.",
                    rater.model_id,
                )

    def requests(self, rater: Rater, samples: Sequence[RatingSample]) -> tuple[list, list[bool]]:
        config = self.config
        requests = build_requests(
            samples, self.prompts, rater.tokenizer, config.selection_prompt_layout, config.selection_use_chat_template
        )
        return truncate_middle(requests, rater.max_positions)

    def keys(self, rater: Rater, requests) -> list[str]:
        return token_hashes(requests, score_token_ids(rater.tokenizer, self.config.selection_score_max))

    def batches(self, model, rater: Rater, requests, **options):
        token_ids = score_token_ids(rater.tokenizer, self.config.selection_score_max)
        return iter_score_batches(model, requests, token_ids, padding_id(rater.tokenizer), **options)

    def record(self, value) -> dict:
        return {"prompts": self.prompt_set, "layout": self.config.selection_prompt_layout, "probs": value.tolist()}

    @staticmethod
    def whole(record: dict) -> bool:
        """K rows of S probabilities, each finite and in [0, 1]."""
        probs = record.get("probs")
        return (
            isinstance(probs, list) and bool(probs)
            and all(finite_numbers(row, 0.0, 1.0) and len(row) == len(probs[0]) for row in probs)
        )
