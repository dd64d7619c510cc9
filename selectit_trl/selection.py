"""Orchestration of one selection: measurements -> strategy scores -> (diversity) -> kept indices -> files.

The trainer calls `run_selection` and nothing below it. The strategy (`strategies.py`) says what to measure:
SelectIT's rating probabilities from every model, IFD's or reverse IFD's losses from the model being tuned.
`measuring.Measurer` finds them in the store or computes them, one model at a time; a peer is loaded just
before its turn and released right after, so that peak memory is that of the largest model.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import (
    diversity,
    probability_store,
    probe,
    recycling,
    reflection,
    store,
    strategies,
)
from .context import RunContext
from .summary import Summary
from .errors import DatasetError, RowFormatError, SelectionConfigError, StoredSelectionMismatch
from .measuring import Difficulty, Measured, Measurer, Rater, Ratings
from .prompts import RatingSample, load_prompts
from .text import is_blank

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
        digest.update(json.dumps([sample.instruction, sample.response], ensure_ascii=False).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def indices_hash(indices: Sequence[int]) -> str:
    """sha256 of the kept indices in ascending order, comma-separated: the identity of a training subset."""
    return hashlib.sha256(",".join(str(i) for i in sorted(indices)).encode("ascii")).hexdigest()


def _combined_hash(hashes: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(hashes).encode("ascii")).hexdigest()


def check_keeps_rows(num_samples: int, config) -> None:
    """Refuse a ratio that would keep nothing: training on zero rows fails deep inside the Trainer."""
    if reflection.num_to_keep(num_samples, config.selection_ratio, config.selection_max_samples) == 0:
        raise SelectionConfigError(
            f"selection_ratio={config.selection_ratio} keeps floor({num_samples} x {config.selection_ratio}) = 0 "
            "rows: raise selection_ratio or set selection_max_samples."
        )


def _without_instructions() -> str:
    """The strategies that work on rows without instructions, for messages."""
    return ", ".join(name for name in strategies.strategy_names() if not strategies.get_strategy(name).needs_instructions)


def check_instructions(samples: Sequence[RatingSample], config) -> None:
    """IFD and reverse IFD compare a response read with and without its instruction: whole texts have none, and
    a dataset with no instruction at all would keep nothing."""
    needing = strategies.needs_instructions(strategies.parse_strategy(config.selection_strategy))
    if needing and any(s.is_text for s in samples):
        usable = _without_instructions()
        raise SelectionConfigError(
            f"selection_strategy uses {' and '.join(needing)}, which need an instruction for each response, and this "
            f"dataset's rows are whole texts (a text column, a formatting_func's output, or token ids with no mask). "
            f"Use one of {usable}, or give rows with instructions (prompt/completion, messages, alpaca)."
        )
    if needing and samples and all(is_blank(s.instruction) for s in samples):
        raise DatasetError(
            f"selection_strategy uses {' and '.join(needing)}, which never keeps a row with an empty instruction, and "
            f"every one of the {len(samples)} rows has one. Fill in the instructions, or use one of {_without_instructions()}."
        )


def empty_responses(samples: Sequence[RatingSample], strict: bool) -> list[int]:
    """Indices of the rows whose response is empty or blank: never kept, or an error with `strict`. A dataset whose
    every response is empty is refused: nothing could be kept."""
    empty = [i for i, s in enumerate(samples) if is_blank(s.response)]
    if samples and len(empty) == len(samples):
        raise DatasetError(
            f"Every one of the {len(samples)} rows has an empty response (blank, or invisible characters only), so "
            "no row can be kept or trained on. Check that the response column (output, completion, the assistant "
            "turn) is the one filled in."
        )
    if empty and strict:
        listed = ", ".join(map(str, empty[:10])) + (" ..." if len(empty) > 10 else "")
        raise RowFormatError(
            f"Row {empty[0]}: the response is empty ({len(empty)} such row(s): {listed}). Fill them in or drop them, "
            "or set selection_strict: false to score them and never keep them."
        )
    return empty


def _shorten(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _examples(samples: Sequence[RatingSample], scores: np.ndarray, eligible: np.ndarray, count: int = 10) -> dict:
    """The highest- and lowest-scored samples, shortened, so a report can show them without the dataset. Rows that
    may never be kept (empty responses, IFD > 1) rank below all others."""
    order = reflection.rank(probe.bottom_barred(scores, eligible)).tolist()

    def describe(i: int) -> dict:
        instruction = None if samples[i].is_text else _shorten(samples[i].instruction)  # None: a whole text
        return {"index": i, "score": float(scores[i]), "instruction": instruction, "response": _shorten(samples[i].response)}

    return {"top": [describe(i) for i in order[:count]], "bottom": [describe(i) for i in order[::-1][:count]]}


@dataclass
class _Evaluation:
    """Every strategy's values for a list of samples, with what they were computed from."""

    values: dict[str, np.ndarray]  # strategy -> [N]
    measured: dict[str, Measured]  # measurement kind -> each model's values
    selectit: tuple | None  # (token scores by model, sentence scores by model) when SelectIT is used


def rating_prompts(config):
    """The rating prompts the `selection_*` settings name (`prompts.load_prompts`); raises on a bad setting."""
    return load_prompts(
        config.selection_num_prompts,
        config.selection_score_max,
        config.selection_prompts,
        config.selection_prompts_file,
        config.selection_rating_preamble,
    )


class _Plan:
    """What a run measures: the strategies and their weights, and the measurements they need."""

    def __init__(self, raters: Sequence[Rater], config):
        model_ids = [r.model_id for r in raters]
        if len(set(model_ids)) != len(model_ids):
            raise SelectionConfigError(f"Each scoring model must appear once, got {model_ids}.")
        self.config, self.raters = config, list(raters)
        self.weights = strategies.parse_strategy(config.selection_strategy)
        self.strategies = strategies.strategies_of(self.weights, config)
        kinds = strategies.needed_measurements(self.weights)
        self.measures = {kind: Ratings(rating_prompts(config), config, raters) if kind == "ratings"
                         else Difficulty(kind, config) for kind in kinds}
        if "ratings" not in self.measures and len(raters) > 1:
            logger.warning("selection_peer_models only rate for strategies that read ratings (selectit); %s does not.",
                           config.selection_strategy)
        self.model_weights = (
            reflection.model_weights({r.model_id: r.num_parameters for r in raters}, config.selection_model_weights)
            if "ratings" in self.measures else {raters[0].model_id: 1.0}
        )

    @property
    def ratings(self) -> Ratings | None:
        return self.measures.get("ratings")

    @property
    def needs_instructions(self) -> bool:
        """Whether a strategy of the mix compares contexts with and without the instruction (IFD, r-IFD), which an
        empty one makes equal."""
        return bool(strategies.needs_instructions(self.weights))

    def keepable(self, samples: Sequence[RatingSample]) -> np.ndarray:
        """Rows that may be kept whatever their scores: a response, and an instruction where the strategy needs one."""
        return np.array([not is_blank(s.response) and (not is_blank(s.instruction) or not self.needs_instructions)
                         for s in samples], dtype=bool)

    def models(self) -> list[Rater]:
        """The models whose measurements the strategy uses."""
        return self.raters if self.ratings else self.raters[:1]

    def rank(self, values: dict[str, np.ndarray], keepable: np.ndarray, only: str | None = None):
        """`strategies.score` under this plan's mix, or under one of its strategies alone."""
        weights = {only: 1.0} if only else self.weights
        return strategies.score(weights, values, keepable, self.strategies)

    def evaluate(self, measurer: Measurer, samples: Sequence[RatingSample], **collect_options) -> _Evaluation:
        """Measure what the strategies need (from the store where it can) and compute every strategy's values."""
        measured = {kind: measurer.collect(measure, samples, **collect_options) for kind, measure in self.measures.items()}
        tuned = self.raters[0].model_id
        measurements = strategies.Measurements(
            ratings=measured["ratings"].values_by_model if "ratings" in measured else None,
            losses={kind: result.values_by_model[tuned] for kind, result in measured.items() if kind != "ratings"},
            tokenizer=self.raters[0].tokenizer, model_weights=self.model_weights, config=self.config,
        )
        # The API's promise: .instruction is a string, "" for a row rated as a whole text.
        rows = [s if s.instruction is not None else RatingSample("", s.response) for s in samples]
        values = {}
        for name, strategy in self.strategies.items():
            values[name] = np.asarray(strategy.values(rows, measurements), dtype=np.float64)
            if values[name].shape != (len(samples),):
                raise SelectionConfigError(
                    f"Strategy {name!r} gave values of shape {values[name].shape} for {len(samples)} samples: "
                    "`values` returns one float per sample.")
        selectit = getattr(self.strategies.get("selectit"), "by_model", None)
        return _Evaluation(values, measured, selectit)


def _label(kind: str, model_id: str) -> str:
    """How `summary.json` names a model's measurement: rating models by id, losses as "kind:model"."""
    return model_id if kind == "ratings" else f"{kind}:{model_id}"


def _merged(measured: dict[str, Measured], field: str) -> dict[str, float | int]:
    """Per-model counts or seconds of every measurement, by `_label`."""
    return {_label(kind, model): value for kind, result in measured.items() for model, value in getattr(result, field).items()}


def _this_run(measured: dict[str, Measured], probe: _Evaluation | None, probed: int) -> tuple[dict, dict]:
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

    Measurements go to the score store (`probability_store`) batch by batch as they are made, and every one
    the store already holds for the same token ids and weights (see `measuring.token_hashes` and
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
    plan = _Plan(raters, config)
    measurer = Measurer(raters, config, context)
    output_dir, write = context.output_dir, context.is_main
    if overwrite is None:
        overwrite = config.selection_overwrite
    if overwrite and context.allow_scoring:
        if context.is_main:
            probability_store.set_aside(output_dir)
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
        probe_summary, probed_rows, probe_evaluation = _probe(plan, measurer, samples, empty, write, required=False)

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
        logger.info("Every measurement came from the score store in %s.", probability_store.store_dir(output_dir))

    ranked = plan.rank(evaluation.values, plan.keepable(samples))
    scores, eligible = ranked.ranking, ranked.eligible
    barred = dict(ranked.barred)
    if plan.needs_instructions:
        barred["empty_instruction"] = sum(is_blank(s.instruction) for s in samples)
    wanted = reflection.num_to_keep(len(samples), config.selection_ratio, config.selection_max_samples)
    if int(eligible.sum()) < wanted:
        logger.warning(
            "Only %d row(s) may be kept (%s), fewer than the %d asked for: keeping them all.",
            int(eligible.sum()), ", ".join(f"{n} barred by {name}" for name, n in barred.items()) or "empty responses",
            wanted,
        )
    clusters = None
    if config.selection_diversity == "none":
        selected = reflection.select(scores, config.selection_ratio, config.selection_max_samples, eligible).tolist()
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
    path = store.write_selection(output_dir, records, summary.to_json()) if write else store.selection_dir(output_dir)
    probe_ran = probe_evaluation is not None and any(r.scored_now for r in probe_evaluation.measured.values())
    changed = {i: samples[i] for i in range(len(samples)) if recycled is not None and recycled.versions[i] != "original"}
    return SelectionResult(selected, scores, summary, path, reused=not scored_now and not probe_ran, recycled=changed)


def _probe(plan: _Plan, measurer: Measurer, samples: Sequence[RatingSample], empty: Sequence[int], write: bool,
           required: bool) -> tuple[dict | None, list[int], _Evaluation | None]:
    """Measure the probe's clean and mismatched pairs, compute their AUROC, and say so.

    The AUROC is of the strategy's ranking, with the rows it would never keep (IFD > 1, say) ranked last; with
    SelectIT it is also given per model, and with several strategies per strategy. Returns what `summary.json`
    records of the probe (None when it could not run), the rows it measured, and its evaluation (clean rows,
    then mismatched pairs); `probe.json` gets the per-pair scores too. With `required`, a probe that cannot run
    is an error.
    """
    config = plan.config
    if any(s.is_text for s in samples):
        # Mismatched pairs join one row's instruction to another's response; whole texts have no instruction.
        message = ("The signal probe pairs instructions with other rows' responses, and this dataset's rows are whole "
                   "texts with no instruction.")
        if required:
            raise SelectionConfigError(message + " Set selection_dataset_format if the rows do hold instruction pairs.")
        logger.info("%s Skipping it.", message)
        return None, [], None
    eligible = np.ones(len(samples), dtype=bool)
    eligible[list(empty)] = False
    rows = probe.probe_rows(samples, eligible, config.selection_probe_size, seed=config.seed)
    if len(rows) < 2:
        message = (f"The signal probe needs at least two rows with different instructions and different, non-empty "
                   f"responses, and this dataset has {len(rows)}: its rows repeat each other, or their responses are "
                   "empty.")
        if required:
            raise SelectionConfigError(message)
        logger.warning("%s Skipping it (summary.json records probe: null).", message)
        return None, [], None
    if len(rows) < probe.MIN_PAIRS:
        logger.warning(
            "The signal probe has only %d pair(s) of each kind, fewer than %d: its AUROC is uncertain by about +/-%.2f "
            "(95%%), so read it as a rough sign only. Raise selection_probe_size, or give it more distinct rows.",
            len(rows), probe.MIN_PAIRS, probe.auroc_uncertainty(len(rows)),
        )
    pairs = [samples[i] for i in rows] + probe.mismatched_pairs(samples, rows)
    labels = np.array([1] * len(rows) + [0] * len(rows))
    try:
        evaluation = plan.evaluate(measurer, pairs, label="Probe: ", row_word="probe pair")
    except StoredSelectionMismatch:
        if required:
            raise
        logger.info("The signal probe's pairs are not all in the store, and this run may not measure: skipping it.")
        return None, [], None
    keepable = plan.keepable(pairs)
    ranked = plan.rank(evaluation.values, keepable)
    combined = probe.bottom_barred(ranked.ranking, ranked.eligible)
    aurocs = {}
    if evaluation.selectit:
        aurocs.update({m: probe.auroc(scores, labels) for m, scores in evaluation.selectit[1].items()})
    aurocs["combined"] = probe.auroc(combined, labels)
    by_strategy = {}
    if len(plan.weights) > 1:
        for name in plan.weights:
            alone = plan.rank(evaluation.values, keepable, only=name)
            by_strategy[name] = probe.auroc(probe.bottom_barred(alone.ranking, alone.eligible), labels)
    threshold = config.selection_probe_threshold
    result = {
        "pairs": len(rows),
        "auroc": aurocs,
        **({"auroc_by_strategy": by_strategy} if by_strategy else {}),
        "threshold": threshold,
        "below_threshold": aurocs["combined"] < threshold,
        "scoring_seconds": sum(sum(r.seconds.values()) for r in evaluation.measured.values()),
    }
    per_pair = {
        "rows": rows,
        "partners": rows[1:] + rows[:1],
        "labels": labels.tolist(),
        "scores": combined.tolist(),
        "strategy_scores": {name: values.tolist() for name, values in evaluation.values.items()},
        "sentence_scores": {m: s.tolist() for m, s in (evaluation.selectit[1].items() if evaluation.selectit else [])},
    }
    if write:
        store.write_json(store.selection_dir(measurer.output_dir) / probe.PROBE_FILE, {**result, **per_pair})
    listed = ", ".join(f"{m} {value:.3f}" for m, value in {**aurocs, **by_strategy}.items() if m != "combined")
    detail = f"; {listed}" if listed else ""
    if result["below_threshold"]:
        logger.warning(
            "Signal probe: AUROC %.3f on %d real pairs against %d mismatched ones (0.5 is chance%s). These scores "
            "barely tell this dataset's good pairs from bad ones, so the selection will be close to random. A larger "
            "model as a peer (selection_peer_models), or selection_strategy: ifd, usually carries far more signal.",
            aurocs["combined"], len(rows), len(rows), detail,
        )
    else:
        logger.info("Signal probe: AUROC %.3f on %d real pairs against %d mismatched ones (0.5 is chance%s).",
                    aurocs["combined"], len(rows), len(rows), detail)
    return result, rows, evaluation


def run_probe(samples: Sequence[RatingSample], raters: Sequence[Rater], config, context: RunContext) -> dict:
    """The signal probe on its own (`selectit-trl probe`): measure `config.selection_probe_size` clean rows and
    as many mismatched pairs, and return the AUROC of clean against mismatched.

    Its measurements go to the store, so a selection run afterwards does not compute the clean rows again. It
    never sets the store aside: `selection_overwrite` applies to selections only. Without the context's
    `allow_scoring` everything must come from the store (`StoredSelectionMismatch` otherwise).
    """
    empty = empty_responses(samples, strict=False)
    plan = _Plan(raters, config)
    return _probe(plan, Measurer(raters, config, context), samples, empty, context.is_main, required=True)[0]
