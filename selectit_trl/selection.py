"""Orchestration of one selection: each model in turn -> probabilities -> scores -> kept indices -> files.

The trainer calls `run_selection` and nothing below it. Models are scored one at a time; a peer is loaded
just before its turn and released right after, so that peak memory is that of the largest model.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import reflection, store
from .prompts import RatingSample, build_requests, load_prompts, prompt_set_hash, score_token_ids
from .scoring import score_requests

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1


class StoredSelectionMismatch(RuntimeError):
    """A resumed run found no stored selection, or one made from other inputs or settings."""


@dataclass
class Scorer:
    """A model that rates samples, with what selection needs to know about it."""

    model_id: str
    model: torch.nn.Module
    tokenizer: object
    num_parameters: int


@dataclass
class SelectionResult:
    """The outcome of a selection, as also written to `OUTPUT_DIR/selection/`."""

    selected_indices: list[int]  # best first
    scores: np.ndarray  # model-level score of every sample, in dataset order
    summary: dict
    path: Path
    reused: bool  # True when the probabilities came from a stored selection instead of new forward passes

    @property
    def kept_indices(self) -> list[int]:
        """The selected indices in dataset order, as the training subset is built."""
        return sorted(self.selected_indices)


def dataset_hash(samples: Sequence[RatingSample]) -> str:
    digest = hashlib.sha256()
    for sample in samples:
        digest.update(json.dumps([sample.instruction, sample.response], ensure_ascii=False).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def indices_hash(indices: Sequence[int]) -> str:
    """sha256 of the kept indices in ascending order, comma-separated: the identity of a training subset."""
    return hashlib.sha256(",".join(str(i) for i in sorted(indices)).encode("ascii")).hexdigest()


def _pad_id(tokenizer) -> int:
    # Padded positions are masked out, so any valid id will do.
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return candidate
    return 0


def score_with(scorer: Scorer, samples: Sequence[RatingSample], prompts: Sequence[str], config, progress: bool) -> np.ndarray:
    """Raw rating probabilities [N, K, S] of one model."""
    token_ids = score_token_ids(scorer.tokenizer, config.selection_score_max)
    requests = build_requests(
        samples, prompts, scorer.tokenizer, config.selection_prompt_layout, config.selection_use_chat_template
    )
    return score_requests(
        scorer.model,
        requests,
        token_ids,
        _pad_id(scorer.tokenizer),
        max_batch_tokens=config.selection_max_batch_tokens,
        progress=progress,
        desc=f"Scoring with {scorer.model_id}",
    )


def _shorten(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _examples(samples: Sequence[RatingSample], scores: np.ndarray, count: int = 10) -> dict:
    """The highest- and lowest-scored samples, shortened, so a report can show them without the dataset."""
    order = reflection.rank(scores).tolist()

    def describe(i: int) -> dict:
        return {"index": i, "score": float(scores[i]), "instruction": _shorten(samples[i].instruction), "response": _shorten(samples[i].response)}

    return {"top": [describe(i) for i in order[:count]], "bottom": [describe(i) for i in order[::-1][:count]]}


def _release(scorer: Scorer) -> None:
    scorer.model = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_selection(
    samples: Sequence[RatingSample],
    base: Scorer,
    config,
    output_dir,
    peer_ids: Sequence[str] = (),
    load_peer: Callable[[str], Scorer] | None = None,
    require_stored: bool = False,
    progress: bool = True,
) -> SelectionResult:
    """Score, combine, select and write the files, or reuse a stored selection made from the same inputs.

    A stored selection is reused whenever its probabilities came from the same data, models, prompts and
    layout; alpha, the normalisation, the ratio and the weights are then recomputed from the stored
    probabilities without a forward pass.

    Args:
        require_stored: fail instead of scoring when no matching stored selection exists (used on resume, where
            training must continue on exactly the subset it started with).
    """
    prompts = load_prompts(
        config.selection_num_prompts, config.selection_score_max, config.selection_prompts, config.selection_prompts_file
    )
    model_ids = [base.model_id, *peer_ids]
    if len(set(model_ids)) != len(model_ids):
        raise ValueError(f"Each scoring model must appear once, got {model_ids}.")
    scoring_key = {
        "dataset_sha256": dataset_hash(samples),
        "num_samples": len(samples),
        "models": model_ids,
        "prompts_sha256": prompt_set_hash(prompts),
        "layout": config.selection_prompt_layout,
        "use_chat_template": config.selection_use_chat_template,
        "score_max": config.selection_score_max,
    }
    settings = config.selection_settings()
    stored = store.read_summary(output_dir)
    reusable = stored is not None and stored.get("scoring_key") == scoring_key
    if require_stored and not (reusable and stored.get("selection_config") == settings):
        raise StoredSelectionMismatch(
            f"Resuming needs the finished selection in {store.selection_dir(output_dir)} made with the same data, "
            "models and selection_* settings, so that training continues on the same subset. It is missing or "
            "differs: resume with the original settings, or start a fresh run in a new output_dir."
        )

    if reusable:
        logger.info("Reusing the stored rating probabilities in %s.", store.selection_dir(output_dir))
        records = store.read_scores(output_dir)
        probs_by_model = {m: np.array([r["probs"][m] for r in records], dtype=np.float64) for m in model_ids}
        parameter_counts = {m["id"]: m["num_parameters"] for m in stored["models"]}
        scoring_seconds = stored["scoring_seconds"]
    else:
        if stored is not None:
            logger.warning("Replacing the selection in %s, made from other inputs.", store.selection_dir(output_dir))
        probs_by_model, parameter_counts, scoring_seconds = {}, {}, 0.0
        for model_id in model_ids:
            scorer = base if model_id == base.model_id else load_peer(model_id)
            started = time.perf_counter()
            probs_by_model[model_id] = score_with(scorer, samples, prompts, config, progress)
            scoring_seconds += time.perf_counter() - started
            parameter_counts[model_id] = scorer.num_parameters
            if scorer is not base:
                _release(scorer)

    weights = reflection.model_weights(parameter_counts, config.selection_model_weights)
    token_by_model, sentence_by_model, scores = reflection.score_samples(
        probs_by_model, weights, config.selection_normalization, config.selection_alpha
    )
    selected = reflection.select(scores, config.selection_ratio, config.selection_max_samples).tolist()
    is_selected = np.zeros(len(samples), dtype=bool)
    is_selected[selected] = True

    records = (
        {
            "index": i,
            "score": float(scores[i]),
            "selected": bool(is_selected[i]),
            "sentence_scores": {m: float(sentence_by_model[m][i]) for m in model_ids},
            "token_scores": {m: token_by_model[m][i].tolist() for m in model_ids},
            "probs": {m: probs_by_model[m][i].tolist() for m in model_ids},
        }
        for i in range(len(samples))
    )
    summary = {
        "format_version": FORMAT_VERSION,
        "selection_config": settings,
        "counts": {"total": len(samples), "selected": len(selected)},
        "models": [{"id": m, "num_parameters": int(parameter_counts[m]), "weight": weights[m]} for m in model_ids],
        "prompts": prompts,
        "scoring_key": scoring_key,
        "scoring_seconds": scoring_seconds,
        "score_quantiles": {
            q: float(np.quantile(scores, float(q))) for q in ("0.0", "0.25", "0.5", "0.75", "1.0")
        },
        "selected_indices_sha256": indices_hash(selected),
        "examples": _examples(samples, scores),
    }
    path = store.write_selection(output_dir, records, summary)
    return SelectionResult(selected, scores, summary, path, reused=reusable)
