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

from . import probability_store, probe, reflection, store
from .errors import (
    NonFiniteScoresError,
    RowFormatError,
    SelectionConfigError,
    StoredSelectionMismatch,
)
from .progress import ScoringProgress
from .prompts import (
    RatingSample,
    build_requests,
    load_prompts,
    rating_token_follows,
    score_token_ids,
    truncate_middle,
)
from .scoring import SampleRequests, iter_score_batches

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1


@dataclass
class Rater:
    """A model that rates samples, described without its weights, which `load` brings in only when needed."""

    model_id: str
    tokenizer: object
    fingerprint: str  # identity of the weights as they will run: config, dtype, quantisation, revision, files
    num_parameters: int  # theta, from the configuration
    load: Callable[[], torch.nn.Module]
    release_after_use: bool = False  # a peer is freed before the next model loads
    max_positions: int | None = None  # the context length; longer samples lose their middle


@dataclass
class _Scored:
    """Every model's probabilities for a list of samples, and what it took to get them."""

    probs_by_model: dict[str, np.ndarray]  # [N, K, S] per model, in sample order
    truncated: np.ndarray  # [N] bool: cut to fit the context of some model
    unique: int  # distinct samples among the N
    keys: dict[str, list[str]]  # model id -> token hash of each distinct sample
    scored_now: dict[str, int]  # model id -> samples scored by this run (absent: none)
    seconds: dict[str, float]  # model id -> seconds spent scoring
    fresh: dict[str, np.ndarray]  # model id -> [N] bool: scored by this run rather than read from the store


@dataclass
class SelectionResult:
    """The outcome of a selection, as also written to `OUTPUT_DIR/selection/`."""

    selected_indices: list[int]  # best first
    scores: np.ndarray  # model-level score of every sample, in dataset order
    summary: dict
    path: Path
    reused: bool  # True when no forward pass ran: every model's probabilities came from the store

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


def sample_hash(sample: RatingSample) -> str:
    """sha256 of a sample's content: what is rated, whatever row it sits in."""
    return hashlib.sha256(json.dumps([sample.instruction, sample.response], ensure_ascii=False).encode("utf-8")).hexdigest()


def token_hashes(requests: Sequence[SampleRequests], token_ids: Sequence[int]) -> list[str]:
    """For each sample, sha256 of every token id the model will read for it and of the rating tokens.

    This pins the sample, the prompts, the layout, the chat template, the tokenizer and any truncation at
    once: if any of them changes, so does the hash, and stored probabilities are not reused.
    """
    rating = np.asarray(token_ids, dtype=np.int64).tobytes()
    hashes = []
    for sample in requests:
        digest = hashlib.sha256(rating)
        # Whole sequences, as the model reads them: how they are split into prefix and suffixes is a matter of
        # speed, not of what is scored.
        for k in range(len(sample.suffixes)):
            digest.update(b"|")
            digest.update(sample.sequence(k).astype(np.int64).tobytes())
        hashes.append(digest.hexdigest())
    return hashes


def _combined_hash(hashes: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(hashes).encode("ascii")).hexdigest()


def check_keeps_rows(num_samples: int, config) -> None:
    """Refuse a ratio that would keep nothing: training on zero rows fails deep inside the Trainer."""
    if reflection.num_to_keep(num_samples, config.selection_ratio, config.selection_max_samples) == 0:
        raise SelectionConfigError(
            f"selection_ratio={config.selection_ratio} keeps floor({num_samples} x {config.selection_ratio}) = 0 "
            "rows: raise selection_ratio or set selection_max_samples."
        )


def empty_responses(samples: Sequence[RatingSample], strict: bool) -> list[int]:
    """Indices of the rows whose response is empty or blank: never kept, or an error with `strict`."""
    empty = [i for i, s in enumerate(samples) if not s.response.strip()]
    if empty and strict:
        listed = ", ".join(map(str, empty[:10])) + (" ..." if len(empty) > 10 else "")
        raise RowFormatError(
            f"Row {empty[0]}: the response is empty ({len(empty)} such row(s): {listed}). Fill them in or drop them, "
            "or set selection_strict: false to score them and never keep them."
        )
    return empty


def _pad_id(tokenizer) -> int:
    # Padded positions are masked out, so any valid id will do.
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return candidate
    return 0


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _lookup(stored: dict, fingerprint: str, key: str, shape: tuple[int, int]) -> np.ndarray | None:
    """A sample's stored probabilities [K, S], or None when there are none of the expected shape."""
    record = stored.get((fingerprint, key))
    if record is None:
        return None
    probs = np.asarray(record["probs"], dtype=np.float64)
    return probs if probs.shape == shape else None


class _Scorer:
    """Finds every model's probabilities for a list of samples in the store, and scores what is missing.

    One run (a selection, or a probe and then a selection) shares one scorer: the same models, prompts, store,
    and share of the work between processes.
    """

    def __init__(self, raters: Sequence[Rater], prompts, config, output_dir, allow_scoring: bool,
                 shard: tuple[int, int], barrier: Callable[[], None], progress: bool):
        self.raters, self.prompts, self.config, self.output_dir = raters, prompts, config, output_dir
        self.allow_scoring, self.shard, self.barrier, self.progress = allow_scoring, shard, barrier, progress
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

    def _requests(self, rater: Rater, unique: Sequence[RatingSample]) -> tuple[list, list[int], list[bool]]:
        config = self.config
        token_ids = score_token_ids(rater.tokenizer, config.selection_score_max)
        requests = build_requests(
            unique, self.prompts, rater.tokenizer, config.selection_prompt_layout, config.selection_use_chat_template
        )
        requests, cut = truncate_middle(requests, rater.max_positions)
        return requests, token_ids, cut

    def collect(self, samples: Sequence[RatingSample], label: str = "", row_word: str = "row",
                probed_rows: Sequence[int] = ()) -> _Scored:
        """Every model's probabilities [N, K, S] for `samples`, from the store where it has them.

        Args:
            label: put before the progress bars' text ("Probe: ").
            row_word: what a sample is called in error messages.
            probed_rows: rows the signal probe has just scored. They are left out of the batch plan, so that no
                batch runs again for their sake; the probe always runs first, so the plan is the same in every
                run, resumed or not.
        """
        # Identical samples are scored once: `unique` holds the first of each, `copy_of[i]` the position of i's in it.
        first_row: dict[RatingSample, int] = {}
        copy_of = np.array([first_row.setdefault(s, len(first_row)) for s in samples])
        unique = list(first_row)

        # What each model will see, and so the key of its probabilities in the store. The token arrays are dropped
        # once hashed and rebuilt for the models that must score: with prompt_first they hold K whole requests per
        # sample (about 200 MB per model on a 50k-row dataset), while tokenizing again takes seconds.
        content = [sample_hash(s) for s in unique]
        keys: dict[str, list[str]] = {}  # model id -> token hash of each unique sample
        truncated = np.zeros(len(unique), dtype=bool)  # cut to fit the context of any model
        for rater in self.raters:
            requests, token_ids, cut = self._requests(rater, unique)
            truncated |= cut
            keys[rater.model_id] = token_hashes(requests, token_ids)
            del requests

        rank, world = self.shard
        wanted = {(r.fingerprint, key) for r in self.raters for key in keys[r.model_id]}
        stored = probability_store.read_store(self.output_dir, wanted)
        # Rank 0's progress bars count the other processes' records too; it starts following their files before
        # any process can append to them.
        follower = probability_store.StoreFollower(self.output_dir, rank) if world > 1 and self.progress else None
        self.barrier()  # every process has read the same store before any appends to it, so they plan the same batches

        def found_in(stored: dict) -> dict[str, list]:
            """Each model's stored probabilities per unique sample, None where the store has none."""
            return {r.model_id: [_lookup(stored, r.fingerprint, key, self.shape) for key in keys[r.model_id]]
                    for r in self.raters}

        found = found_in(stored)
        fresh = {r.model_id: np.array([probs is None for probs in found[r.model_id]]) for r in self.raters}
        needing = [r for r in self.raters if fresh[r.model_id].any()]
        last_to_score = needing[-1] if needing else None
        probed = np.zeros(len(unique), dtype=bool)
        probed[copy_of[list(probed_rows)]] = True
        scored_now: dict[str, int] = {}
        seconds: dict[str, float] = {}
        for rater in needing:
            have = ~fresh[rater.model_id]
            if not self.allow_scoring:
                raise StoredSelectionMismatch(
                    f"The score store in {probability_store.store_dir(self.output_dir)} lacks {int((~have).sum())} "
                    f"sample(s) for {rater.model_id} under these data, prompts and weights. A resumed run must train "
                    "on the subset it started with: resume with the original settings, or start a fresh output_dir."
                )
            scored_now[rater.model_id] = int((~have).sum())
            rows_of: dict[str, list[int]] = {}  # token hash -> samples; distinct samples can render alike
            for j, key in enumerate(keys[rater.model_id]):
                rows_of.setdefault(key, []).append(j)
            progress = ScoringProgress(
                f"{label}Scoring with {rater.model_id}", enabled=self.progress,
                finished_elsewhere=(
                    (lambda fp=rater.fingerprint: [j for k in follower.take(fp) for j in rows_of.get(k, ())])
                    if follower else None
                ),
            )
            try:
                seconds[rater.model_id] = self._score_into_store(
                    rater, unique, have, copy_of, content, keys[rater.model_id], progress, row_word, probed & have
                )
                if rater is last_to_score:
                    # Rank 0 waits at the barrier below anyway; until then its bar follows the other processes.
                    # After an earlier model it goes straight on to the next, and that bar closes at its own share.
                    progress.wait_for_others()
            finally:
                progress.close()
            if rater.release_after_use:
                _free_memory()
        if scored_now:
            self.barrier()  # every process's share is in the store before anyone reads it back
            found = found_in(probability_store.read_store(self.output_dir, wanted))
        probs_by_model = {}
        for rater in self.raters:
            missing = [j for j, probs in enumerate(found[rater.model_id]) if probs is None]
            if missing:
                raise StoredSelectionMismatch(
                    f"{len(missing)} sample(s) of {rater.model_id} are missing from the score store after scoring, "
                    f"the first being {row_word} {int(np.flatnonzero(copy_of == missing[0])[0])}. Did another process fail?"
                )
            probs_by_model[rater.model_id] = np.stack(found[rater.model_id])[copy_of]
        return _Scored(probs_by_model, truncated[copy_of], len(unique), keys, scored_now, seconds,
                       {m: flags[copy_of] for m, flags in fresh.items()})

    def _score_into_store(self, rater: Rater, unique, have, copy_of, content, keys, progress, row_word, unplanned) -> float:
        """Score this process's share of the samples `have` lacks, appending each batch to the store as it finishes.

        Returns the seconds spent. A batch that also holds stored samples runs whole (so that every sample is
        always scored in the same batch), and only its new samples are written.
        """
        config, output_dir = self.config, self.output_dir
        requests, token_ids, cut = self._requests(rater, unique)
        model = rater.load()
        started = time.perf_counter()
        written = 0
        try:
            with probability_store.StoreWriter(output_dir, rank=self.shard[0]) as writer:
                batches = iter_score_batches(
                    model, requests, token_ids, _pad_id(rater.tokenizer), max_batch_tokens=config.selection_max_batch_tokens,
                    progress=progress, done=have, shard=self.shard, unplanned=unplanned,
                )
                for batch, probs in batches:
                    new = [(j, p) for j, p in zip(batch, probs) if not have[j]]
                    writer.append(
                        {"model": rater.fingerprint, "model_id": rater.model_id, "tokens": keys[j], "sample": content[j],
                         "prompts": self.prompt_set, "layout": config.selection_prompt_layout, "probs": p.tolist(),
                         "truncated": bool(cut[j])}
                        for j, p in new
                    )
                    written += len(new)
        except NonFiniteScoresError as error:
            row = int(np.flatnonzero(copy_of == error.sample_index)[0])
            raise NonFiniteScoresError(
                f"{rater.model_id} gave {row_word} {row} NaN or infinite rating probabilities: its logits overflowed or "
                "its weights hold NaN. Score in bf16 or fp32 rather than fp16, or check the weights. The samples scored "
                f"before it are kept in {probability_store.store_dir(output_dir)}; scores.jsonl and summary.json are "
                "unchanged.",
                sample_index=row,
            ) from None
        except KeyboardInterrupt:
            logger.warning(
                "Scoring with %s stopped: %d sample(s) of this run are saved in %s, with %d stored before. Run the same "
                "command again (without --overwrite) to resume from there.",
                rater.model_id, written, probability_store.store_dir(output_dir), int(have.sum()),
            )
            raise
        return time.perf_counter() - started


def _shorten(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _examples(samples: Sequence[RatingSample], scores: np.ndarray, count: int = 10) -> dict:
    """The highest- and lowest-scored samples, shortened, so a report can show them without the dataset."""
    order = reflection.rank(scores).tolist()

    def describe(i: int) -> dict:
        return {"index": i, "score": float(scores[i]), "instruction": _shorten(samples[i].instruction), "response": _shorten(samples[i].response)}

    return {"top": [describe(i) for i in order[:count]], "bottom": [describe(i) for i in order[::-1][:count]]}


def run_selection(
    samples: Sequence[RatingSample],
    raters: Sequence[Rater],
    config,
    output_dir,
    allow_scoring: bool = True,
    expected_indices_sha256: str | None = None,
    write: bool = True,
    progress: bool = True,
    dataset_format: str | None = None,
    shard: tuple[int, int] = (0, 1),
    barrier: Callable[[], None] = lambda: None,
    overwrite: bool | None = None,
) -> SelectionResult:
    """Run the signal probe (with `config.selection_probe`), then score with each rater in turn, combine, select,
    and write `OUTPUT_DIR/selection/`.

    Probabilities go to the score store (`probability_store`) batch by batch as they are made, and every
    sample whose probabilities the store already holds for the same token ids and weights (see
    `token_hashes` and `Rater.fingerprint`) is not scored again: an interrupted run picks up where it
    stopped. Alpha, the normalisation, the ratio and the weights are always recomputed, which costs no
    forward pass.

    Args:
        raters: the model being tuned first, then the peers.
        dataset_format: the row format the samples were read in, recorded in `summary.json`.
        allow_scoring: when False, every model's probabilities must come from the store (a resumed run, or a
            process that is not the main one); otherwise `StoredSelectionMismatch` is raised.
        expected_indices_sha256: the subset a checkpoint was trained on; a selection that differs is refused
            before anything is written.
        write: whether this process writes the files (only the main process does).
        shard: (rank, number of processes). Each process scores its share of the batches into its own file
            of the store; `barrier` waits for all of them before the store is read back and the selection made,
            the same in every process.
        overwrite: set the store aside and score everything; by default `config.selection_overwrite`. The
            trainer passes it once only, so that `select()` then `train()` does not score twice.
    """
    check_keeps_rows(len(samples), config)
    empty = empty_responses(samples, config.selection_strict)
    if empty:
        logger.warning(
            "%d row(s) have an empty response and will not be kept (first: %s). They are listed in summary.json; "
            "set selection_strict: true to stop on them instead.", len(empty), ", ".join(map(str, empty[:10]))
        )
    scorer = _scorer(raters, config, output_dir, allow_scoring, shard, barrier, progress)
    rank, world = shard
    if overwrite is None:
        overwrite = config.selection_overwrite
    if overwrite and allow_scoring:
        if rank == 0:
            probability_store.set_aside(output_dir)
        barrier()
    probe_summary, probed_rows, probe_scored = None, [], None
    if config.selection_probe:
        probe_summary, probed_rows, probe_scored = _probe(scorer, samples, empty, write, required=False)

    scored = scorer.collect(samples, probed_rows=probed_rows)
    # What this run scored, the probe included: its clean rows count as rows, its mismatched pairs do not.
    scored_now, seconds = dict(scored.scored_now), dict(scored.seconds)
    if probe_scored is not None:
        for model, flags in probe_scored.fresh.items():
            if flags[: len(probed_rows)].any():
                scored_now[model] = scored_now.get(model, 0) + int(flags[: len(probed_rows)].sum())
        for model, spent in probe_scored.seconds.items():
            seconds[model] = seconds.get(model, 0.0) + spent
    if scored.unique < len(samples):
        logger.info("%d duplicate row(s) are scored once and share their first copy's score.", len(samples) - scored.unique)
    if not scored_now:
        logger.info("Every probability came from the score store in %s.", probability_store.store_dir(output_dir))
    probs_by_model = scored.probs_by_model
    model_ids = [r.model_id for r in raters]
    parameter_counts = {r.model_id: r.num_parameters for r in raters}
    weights = reflection.model_weights(parameter_counts, config.selection_model_weights)
    token_by_model, sentence_by_model, scores = reflection.score_samples(
        probs_by_model, weights, config.selection_normalization, config.selection_alpha
    )
    eligible = np.ones(len(samples), dtype=bool)
    eligible[empty] = False
    selected = reflection.select(scores, config.selection_ratio, config.selection_max_samples, eligible).tolist()
    if expected_indices_sha256 is not None and indices_hash(selected) != expected_indices_sha256:
        raise StoredSelectionMismatch(
            "These selection_* settings choose a different subset from the one the checkpoint was trained on. "
            "Resume with the original settings, or start a fresh output_dir."
        )
    is_selected = np.zeros(len(samples), dtype=bool)
    is_selected[selected] = True

    truncated = scored.truncated
    records = (
        {
            "index": i,
            "score": float(scores[i]),
            "selected": bool(is_selected[i]),
            "sentence_scores": {m: float(sentence_by_model[m][i]) for m in model_ids},
            "token_scores": {m: token_by_model[m][i].tolist() for m in model_ids},
            "probs": {m: probs_by_model[m][i].tolist() for m in model_ids},
            "truncated": bool(truncated[i]),
            "response_chars": len(samples[i].response),
        }
        for i in range(len(samples))
    )
    prompts = scorer.prompts
    summary = {
        "format_version": FORMAT_VERSION,
        "selection_config": config.selection_settings(),
        "counts": {"total": len(samples), "selected": len(selected)},
        "dataset_format": dataset_format,
        "empty_responses": {"count": len(empty), "indices": empty},
        "truncated": {"count": int(truncated.sum()), "indices": np.flatnonzero(truncated).tolist()},
        "duplicates": len(samples) - scored.unique,
        "models": [{"id": m, "num_parameters": int(parameter_counts[m]), "weight": weights[m]} for m in model_ids],
        "prompts": list(prompts.requests),
        "rating_preamble": prompts.preamble,
        "scoring_key": {
            "dataset_sha256": dataset_hash(samples),
            "num_samples": len(samples),
            "prompts_sha256": scorer.prompt_set,
            "models": [
                {"id": r.model_id, "fingerprint": r.fingerprint, "requests_sha256": _combined_hash(scored.keys[r.model_id])}
                for r in raters
            ],
        },
        "scored_this_run": scored_now,
        "scoring_seconds": sum(seconds.values()),
        "scoring_seconds_by_model": seconds,
        "score_quantiles": {q: float(np.quantile(scores, float(q))) for q in ("0.0", "0.25", "0.5", "0.75", "1.0")},
        "selected_indices_sha256": indices_hash(selected),
        "probe": probe_summary,
        "examples": _examples(samples, scores),
    }
    path = store.write_selection(output_dir, records, summary) if write else store.selection_dir(output_dir)
    probe_ran = probe_scored is not None and bool(probe_scored.scored_now)
    return SelectionResult(selected, scores, summary, path, reused=not scored_now and not probe_ran)


def _scorer(raters, config, output_dir, allow_scoring, shard, barrier, progress) -> _Scorer:
    model_ids = [r.model_id for r in raters]
    if len(set(model_ids)) != len(model_ids):
        raise SelectionConfigError(f"Each scoring model must appear once, got {model_ids}.")
    prompts = load_prompts(
        config.selection_num_prompts,
        config.selection_score_max,
        config.selection_prompts,
        config.selection_prompts_file,
        config.selection_rating_preamble,
    )
    return _Scorer(raters, prompts, config, output_dir, allow_scoring, shard, barrier, progress)


def _probe(scorer: _Scorer, samples: Sequence[RatingSample], empty: Sequence[int], write: bool,
           required: bool) -> tuple[dict | None, list[int], _Scored | None]:
    """Score the probe's clean and mismatched pairs, compute their AUROC per model and combined, and say so.

    Returns what `summary.json` records of the probe (None when it could not run), the rows it scored, and
    the probabilities of its clean rows then mismatched pairs; `probe.json` gets the per-pair scores too. With `required`, a probe that cannot run is an error.
    """
    config = scorer.config
    eligible = np.ones(len(samples), dtype=bool)
    eligible[list(empty)] = False
    rows = probe.probe_rows(samples, eligible, config.selection_probe_size, seed=config.seed)
    if len(rows) < 2:
        message = "The signal probe needs at least two rows with different, non-empty responses."
        if required:
            raise SelectionConfigError(message)
        logger.info("%s Skipping it.", message)
        return None, [], None
    pairs = [samples[i] for i in rows] + probe.mismatched_pairs(samples, rows)
    labels = np.array([1] * len(rows) + [0] * len(rows))
    try:
        scored = scorer.collect(pairs, label="Probe: ", row_word="probe pair")
    except StoredSelectionMismatch:
        if required:
            raise
        logger.info("The signal probe's pairs are not all in the score store, and this run may not score: skipping it.")
        return None, [], None
    model_ids = [r.model_id for r in scorer.raters]
    weights = reflection.model_weights({r.model_id: r.num_parameters for r in scorer.raters}, config.selection_model_weights)
    _, sentence_by_model, combined = reflection.score_samples(
        scored.probs_by_model, weights, config.selection_normalization, config.selection_alpha
    )
    aurocs = {m: probe.auroc(sentence_by_model[m], labels) for m in model_ids}
    aurocs["combined"] = probe.auroc(combined, labels)
    threshold = config.selection_probe_threshold
    result = {
        "pairs": len(rows),
        "auroc": aurocs,
        "threshold": threshold,
        "below_threshold": aurocs["combined"] < threshold,
        "scoring_seconds": sum(scored.seconds.values()),
    }
    per_pair = {
        "rows": rows,
        "partners": rows[1:] + rows[:1],
        "labels": labels.tolist(),
        "scores": combined.tolist(),
        "sentence_scores": {m: sentence_by_model[m].tolist() for m in model_ids},
    }
    if write:
        store.write_json(store.selection_dir(scorer.output_dir) / probe.PROBE_FILE, {**result, **per_pair})
    listed = ", ".join(f"{m} {aurocs[m]:.3f}" for m in model_ids)
    if result["below_threshold"]:
        logger.warning(
            "Signal probe: AUROC %.3f on %d real pairs against %d mismatched ones (0.5 is chance; per model: %s). "
            "These scores barely tell this dataset's good pairs from bad ones, so the selection will be close to "
            "random. A larger model as a peer (selection_peer_models) usually carries far more signal.",
            aurocs["combined"], len(rows), len(rows), listed,
        )
    else:
        logger.info("Signal probe: AUROC %.3f on %d real pairs against %d mismatched ones (0.5 is chance; per model: %s).",
                    aurocs["combined"], len(rows), len(rows), listed)
    return result, rows, scored


def run_probe(
    samples: Sequence[RatingSample],
    raters: Sequence[Rater],
    config,
    output_dir,
    write: bool = True,
    progress: bool = True,
    shard: tuple[int, int] = (0, 1),
    barrier: Callable[[], None] = lambda: None,
    allow_scoring: bool = True,
) -> dict:
    """The signal probe on its own (`selectit-trl probe`): score `config.selection_probe_size` clean rows and as
    many mismatched pairs, and return the AUROC of clean against mismatched, per model and combined.

    Its scores go to the store, so a selection run afterwards does not score the clean rows again. It never sets
    the store aside: `selection_overwrite` applies to selections only. With `allow_scoring=False` every score
    must come from the store (`StoredSelectionMismatch` otherwise).
    """
    empty = empty_responses(samples, strict=False)
    scorer = _scorer(raters, config, output_dir, allow_scoring, shard, barrier, progress)
    return _probe(scorer, samples, empty, write, required=True)[0]
