"""Orchestration of one selection: measurements -> strategy scores -> (diversity) -> kept indices -> files.

The trainer calls `run_selection` and `run_probe`, and checks its inputs first (`checks.py`). The strategies
(`strategies/`, through `plan.Plan`) say what to measure:
SelectIT's rating probabilities from every model, IFD's or reverse IFD's losses from the model being tuned.
`measurer.Measurer` finds them in the store or computes them, one model at a time; a peer is loaded just
before its turn and released right after, so that peak memory is that of the largest model.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..context import RunContext
from ..data.rows import RatingSample
from ..data.text import is_blank
from ..errors import StoredSelectionMismatch
from ..measures.base import Rater
from ..measures.measurer import Measured, Measurer
from ..store import ledger, outputs
from ..store.summary import Summary
from . import diversity, probe, ranking, recycling
from .checks import check_keeps_rows, empty_responses
from .plan import Evaluation, Plan
from .probing import measure_probe

logger = logging.getLogger(__name__)



@dataclass
class SelectionResult:
    """The outcome of a selection, as also written to `OUTPUT_DIR/selection/`."""

    selected_indices: list[int]  # in selection order: best first, or the order selection_diversity picked them
    scores: np.ndarray  # what the selection ranked by, for every sample in dataset order (see `strategies.score`)
    summary: Summary  # what summary.json holds
    path: Path
    reused: bool  # True when no forward pass ran: every measurement came from the store
    recycled: dict[int, RatingSample] = field(default_factory=dict)  # rows that took a teacher's rewrite: the version

    @property
    def kept_indices(self) -> list[int]:
        """The selected indices in dataset order, as the training subset is built."""
        return sorted(self.selected_indices)


def dataset_hash(samples: Sequence[RatingSample]) -> str:
    digest = hashlib.sha256()
    for sample in samples:
        digest.update(sample.content)
        digest.update(b"\n")
    return digest.hexdigest()


def indices_hash(indices: Sequence[int]) -> str:
    """sha256 of the kept indices in ascending order, comma-separated: the identity of a training subset."""
    return hashlib.sha256(",".join(str(i) for i in sorted(indices)).encode("ascii")).hexdigest()


def _combined_hash(hashes: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(hashes).encode("ascii")).hexdigest()


def _shorten(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _examples(samples: Sequence[RatingSample], scores: np.ndarray, eligible: np.ndarray, count: int = 10) -> dict:
    """The highest- and lowest-scored samples, shortened, so a report can show them without the dataset. Rows that
    may never be kept (empty responses, IFD > 1) rank below all others."""
    order = ranking.rank(probe.bottom_barred(scores, eligible)).tolist()

    def describe(i: int) -> dict:
        instruction = None if samples[i].is_text else _shorten(samples[i].instruction)  # None: a whole text
        return {"index": i, "score": float(scores[i]), "instruction": instruction, "response": _shorten(samples[i].response)}

    return {"top": [describe(i) for i in order[:count]], "bottom": [describe(i) for i in order[::-1][:count]]}


def _label(kind: str, model_id: str) -> str:
    """How `summary.json` names a model's measurement: rating models by id, losses as "kind:model"."""
    return model_id if kind == "ratings" else f"{kind}:{model_id}"


def _merged(measured: dict[str, Measured], field: str) -> dict[str, float | int]:
    """Per-model counts or seconds of every measurement, by `_label`."""
    return {_label(kind, model): value for kind, result in measured.items() for model, value in getattr(result, field).items()}


def _this_run(measured: dict[str, Measured], probe: Evaluation | None, probed: int) -> tuple[dict, dict]:
    """What this run measured, and the seconds it took, by `_label`: the probe's clean rows (its first `probed`
    samples) count as rows, its mismatched pairs do not, and its seconds count in full."""
    scored_now, seconds = _merged(measured, "scored_now"), _merged(measured, "seconds")
    for kind, result in (probe.measured.items() if probe is not None else ()):
        for model, flags in result.fresh.items():
            if flags[:probed].any():
                scored_now[_label(kind, model)] = scored_now.get(_label(kind, model), 0) + int(flags[:probed].sum())
        for model, spent in result.seconds.items():
            seconds[_label(kind, model)] = seconds.get(_label(kind, model), 0.0) + spent
    return scored_now, seconds


def run_selection(
    samples: Sequence[RatingSample],
    raters: Sequence[Rater],
    config,
    context: RunContext,
    expected_indices_sha256: str | None = None,
    dataset_format: str | None = None,
    overwrite: bool | None = None,
    teacher: Rater | None = None,
) -> SelectionResult:
    """Select rows as `config` says, and write `OUTPUT_DIR/selection/`.

    In order: recycle the rows with `teacher` (when given; `recycling.py`), run the signal probe (with
    `config.selection_probe`), measure what `config.selection_strategy` needs, rank, and select (with
    `config.selection_diversity`).

    Measurements go to the score store (`store/ledger.py`) batch by batch as they are made, and every one
    the store already holds for the same token ids and weights (see `measures.base.store_key` and
    `Rater.fingerprint`) is not computed again: an interrupted run picks up where it stopped. Alpha, the
    normalisation, the ratio, the model weights and the strategies' weights are always recomputed, which costs
    no forward pass.

    Args:
        raters: the model being tuned first, then the peers.
        context: the output directory, and this process among the others (`RunContext`). Each process measures
            its share of the batches into its own file of the store; the barrier waits for all of them before
            the store is read back and the selection made, the same in every process; the main process writes
            the files. Without `allow_scoring`, every measurement must come from the store (a resumed run),
            else `StoredSelectionMismatch` is raised.
        dataset_format: the row format the samples were read in, recorded in `summary.json`.
        expected_indices_sha256: the subset a checkpoint was trained on; a selection that differs is refused
            before anything is written.
        overwrite: set the store aside and measure everything; by default `config.selection_overwrite`. The
            trainer passes it once only, so that `select()` then `train()` does not score twice.
        teacher: the model that rewrites instructions and responses (`selection_teacher_model`). Each row then
            goes on to selection as the version the model being tuned chose.
    """
    check_keeps_rows(len(samples), config)
    empty = empty_responses(samples, config.selection_strict)
    if empty:
        logger.warning(
            "%d row(s) have an empty response and will not be kept (first: %s). They are listed in summary.json; "
            "set selection_strict: true to stop on them instead.", len(empty), ", ".join(map(str, empty[:10]))
        )
    plan = Plan(raters, config)
    measurer = Measurer(raters, config, context)
    output_dir, write = context.output_dir, context.is_main
    if overwrite is None:
        overwrite = config.selection_overwrite
    if overwrite and context.allow_scoring:
        if context.is_main:
            ledger.set_aside(output_dir)
        context.barrier()
    original = samples
    recycled = None
    if teacher is not None:
        usable = np.ones(len(samples), dtype=bool)
        usable[empty] = False
        recycled = recycling.recycle(samples, teacher, measurer, config, usable)
        samples = recycled.samples
    probe_summary, probed_rows, probe_evaluation = None, [], None
    if config.selection_probe:
        probe_summary, probed_rows, probe_evaluation = measure_probe(plan, measurer, samples, empty, write, required=False)

    evaluation = plan.evaluate(measurer, samples)
    measured = evaluation.measured
    scored_now, seconds = _this_run(measured, probe_evaluation, len(probed_rows))
    if recycled is not None:
        for label, count in ((f"rewrite:{teacher.model_id}", recycled.generated),
                             (f"recycling:{raters[0].model_id}", recycled.measured)):
            if count:
                scored_now[label] = count
    first = next(iter(measured.values()), None)
    unique = first.unique if first else len(set(samples))
    if unique < len(samples):
        logger.info("%d duplicate row(s) are measured once and share their first copy's score.", len(samples) - unique)
    if measured and not scored_now:
        logger.info("Every measurement came from the score store in %s.", ledger.store_dir(output_dir))

    ranked = plan.rank(evaluation.values, plan.keepable(samples))
    scores, eligible = ranked.ranking, ranked.eligible
    barred = dict(ranked.barred)
    if plan.needs_instructions:
        barred["empty_instruction"] = sum(is_blank(s.instruction) for s in samples)
    wanted = ranking.num_to_keep(len(samples), config.selection_ratio, config.selection_max_samples)
    if int(eligible.sum()) < wanted:
        logger.warning(
            "Only %d row(s) may be kept (%s), fewer than the %d asked for: keeping them all.",
            int(eligible.sum()), ", ".join(f"{n} barred by {name}" for name, n in barred.items()) or "empty responses",
            wanted,
        )
    clusters = None
    if config.selection_diversity == "none":
        selected = ranking.select(scores, config.selection_ratio, config.selection_max_samples, eligible).tolist()
    else:
        embeddings = diversity.embeddings_for(samples, config, context)
        selected, clusters = diversity.pick(config, embeddings, scores, eligible, wanted)
    if expected_indices_sha256 is not None and indices_hash(selected) != expected_indices_sha256:
        raise StoredSelectionMismatch(
            "These selection_* settings choose a different subset from the one the checkpoint was trained on. "
            "Resume with the original settings, or start a fresh output_dir."
        )
    is_selected = np.zeros(len(samples), dtype=bool)
    is_selected[selected] = True

    truncated = np.zeros(len(samples), dtype=bool)
    for result in measured.values():
        truncated |= result.truncated
    rating_models = [r.model_id for r in raters] if plan.ratings else []
    token_by_model, sentence_by_model = evaluation.selectit or ({}, {})
    probs_by_model = measured["ratings"].values_by_model if plan.ratings else {}
    losses = {kind: result.values_by_model[raters[0].model_id] for kind, result in measured.items() if kind != "ratings"}
    records = (
        {
            "index": i,
            "score": float(scores[i]),
            "selected": bool(is_selected[i]),
            "sentence_scores": {m: float(sentence_by_model[m][i]) for m in rating_models},
            "token_scores": {m: token_by_model[m][i].tolist() for m in rating_models},
            "probs": {m: probs_by_model[m][i].tolist() for m in rating_models},
            "strategy_scores": {name: float(values[i]) for name, values in evaluation.values.items()},
            **({"losses": {kind: values[i].tolist() for kind, values in losses.items()}} if losses else {}),
            **({"cluster": int(clusters[i])} if clusters is not None else {}),
            **({"version": recycled.versions[i]} if recycled is not None else {}),
            **({"recycled": {"instruction": samples[i].instruction, "response": samples[i].response}}
               if recycled is not None and recycled.versions[i] != "original" else {}),
            "truncated": bool(truncated[i]),
            "response_chars": len(samples[i].response),
        }
        for i in range(len(samples))
    )
    summary = Summary(
        selection_config=config.selection_settings(),
        strategy=plan.weights,
        counts={"total": len(samples), "selected": len(selected)},
        dataset_format=dataset_format,
        empty_responses={"count": len(empty), "indices": empty},
        barred=barred,
        truncated={"count": int(truncated.sum()), "indices": np.flatnonzero(truncated).tolist()},
        duplicates=len(samples) - unique,
        models=[{"id": r.model_id, "num_parameters": int(r.num_parameters), "weight": plan.model_weights[r.model_id]}
                for r in plan.models()],
        prompts=list(plan.ratings.prompts.requests) if plan.ratings else [],
        rating_preamble=plan.ratings.prompts.preamble if plan.ratings else None,
        scoring_key={
            "dataset_sha256": dataset_hash(original),
            "num_samples": len(samples),
            "prompts_sha256": plan.ratings.prompt_set if plan.ratings else None,
            "models": [
                {"id": r.model_id, "fingerprint": r.fingerprint,
                 **{f"{'requests' if kind == 'ratings' else kind}_sha256": _combined_hash(result.keys[r.model_id])
                    for kind, result in measured.items() if r.model_id in result.keys}}
                for r in plan.models()
            ],
        },
        scored_this_run=scored_now,
        scoring_seconds=sum(seconds.values()),
        scoring_seconds_by_model=seconds,
        score_quantiles={q: float(np.quantile(scores, float(q))) for q in ("0.0", "0.25", "0.5", "0.75", "1.0")},
        selected_indices_sha256=indices_hash(selected),
        probe=probe_summary,
        examples=_examples(samples, scores, eligible),
        clusters=int(clusters.max()) + 1 if clusters is not None else None,
    )
    if recycled is not None:
        kept_versions = [recycled.versions[i] for i in selected]
        summary.recycling = {
            "teacher": teacher.model_id,
            "versions": {v: recycled.versions.count(v) for v in recycling.VERSIONS},
            "kept_versions": {v: kept_versions.count(v) for v in recycling.VERSIONS},
            "seconds": recycled.seconds,
        }
    path = outputs.write_selection(output_dir, records, summary.to_json()) if write else outputs.selection_dir(output_dir)
    probe_ran = probe_evaluation is not None and any(r.scored_now for r in probe_evaluation.measured.values())
    changed = {i: samples[i] for i in range(len(samples)) if recycled is not None and recycled.versions[i] != "original"}
    return SelectionResult(selected, scores, summary, path, reused=not scored_now and not probe_ran, recycled=changed)
