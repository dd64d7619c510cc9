"""The columns of `scores.jsonl` and `summary.json` that the report reads, and the statistics computed from them.

Apart from the plots, so that the numbers can be checked without drawing anything.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

from ..errors import SelectionFilesError
from ..store import outputs
from ..store.summary import Summary


@dataclass
class ScoreFiles:
    """The columns of `scores.jsonl` that the report reads, with `summary.json`."""

    summary: Summary
    scores: np.ndarray  # [N] final score
    selected: np.ndarray  # [N] bool
    sentence: dict[str, np.ndarray]  # model id -> [N]
    token: dict[str, np.ndarray]  # model id -> [N, K]
    top_rating: dict[str, np.ndarray]  # model id -> [N, K]: the rating 1..S with the highest probability
    response_chars: np.ndarray | None  # [N]; None for score files written before it was recorded
    strategy_values: dict[str, np.ndarray]  # strategy -> [N] (SelectIT score, IFD, r-IFD, length, draw)


def read_score_files(output_dir) -> ScoreFiles:
    raw = outputs.read_summary(output_dir)
    if raw is None:
        raise FileNotFoundError(
            f"No finished selection in {outputs.selection_dir(output_dir)}: run `selectit-trl score` or `train` first."
        )
    summary = Summary.from_json(raw, str(outputs.selection_dir(output_dir) / outputs.SUMMARY_FILE))
    models = summary.rating_models
    names = list(summary.strategy)
    scores, selected, chars = [], [], []
    values = {name: [] for name in names}
    sentence = {m: [] for m in models}
    token = {m: [] for m in models}
    top = {m: [] for m in models}
    scores_file = outputs.selection_dir(output_dir) / outputs.SCORES_FILE
    for number, record in enumerate(outputs.iter_scores(output_dir), start=1):  # streamed: 50k rows are ~75 MB of JSON
        try:
            scores.append(record["score"])
            selected.append(record["selected"])
            chars.append(record.get("response_chars"))
            for name in names:
                values[name].append(record.get("strategy_scores", {}).get(name, record["score"]))
            for m in models:
                sentence[m].append(record["sentence_scores"][m])
                token[m].append(record["token_scores"][m])
                # argmax takes the first maximum, i.e. the lowest rating on ties, as the token score does.
                top[m].append(np.argmax(record["probs"][m], axis=-1) + 1)
        except (KeyError, TypeError, IndexError, AttributeError):
            raise SelectionFilesError(
                f"{scores_file}: record {number} lacks a field the report reads (edited, or from another run). "
                f"{outputs.REBUILD_SCORES}") from None
    total = summary.counts.get("total", len(scores))
    if len(scores) != total:
        raise SelectionFilesError(
            f"{scores_file} holds {len(scores)} records, and summary.json counts {total} rows: the file was cut short "
            f"or edited. {outputs.REBUILD_SCORES}")
    return ScoreFiles(
        summary=summary,
        scores=np.asarray(scores, dtype=np.float64),
        selected=np.asarray(selected, dtype=bool),
        sentence={m: np.asarray(v, dtype=np.float64) for m, v in sentence.items()},
        token={m: np.asarray(v, dtype=np.float64).reshape(len(scores), -1) for m, v in token.items()},
        top_rating={m: np.asarray(v, dtype=np.int64).reshape(len(scores), -1) for m, v in top.items()},
        response_chars=None if any(c is None for c in chars) else np.asarray(chars, dtype=np.float64),
        strategy_values={name: np.asarray(v, dtype=np.float64) for name, v in values.items()},
    )


def _spearman_matrix(columns: np.ndarray) -> np.ndarray:
    """Spearman correlation between the columns of [N, C], always C x C: the Pearson correlation of the ranks
    (ties averaged). A constant column has no defined correlation and gives NaN in its row and column.

    (`scipy.stats.spearmanr` returns a single NaN for a whole matrix as soon as one column is constant.)
    """
    ranks = rankdata(np.asarray(columns, dtype=np.float64), axis=0)
    centred = ranks - ranks.mean(axis=0)
    norms = np.sqrt((centred**2).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (centred.T @ centred) / np.outer(norms, norms)


def _mean_off_diagonal(matrix: np.ndarray) -> float:
    size = matrix.shape[0]
    if size < 2:
        return float("nan")
    values = matrix[~np.eye(size, dtype=bool)]
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else float("nan")


def statistics(files: ScoreFiles) -> dict:
    """Every number the report shows, from the score files."""
    summary = files.summary
    models = summary.rating_models
    kept = files.scores[files.selected]
    stats = {
        "total": int(files.scores.size),
        "kept": int(files.selected.sum()),
        "cutoff": float(kept.min()) if kept.size else None,
        "quantiles": {q: float(np.quantile(files.scores, q)) for q in (0.0, 0.25, 0.5, 0.75, 1.0)},
        "models": models,
        "prompts": {},
        "strategy": summary.strategy,
        "barred": summary.barred,
    }
    if len(files.strategy_values) > 1:
        names = list(files.strategy_values)
        columns = np.column_stack([files.strategy_values[n] for n in names] + [files.scores])
        stats["strategy_spearman"] = _spearman_matrix(columns)  # strategies, then the combined score
    if len(models) > 1:
        columns = np.column_stack([files.sentence[m] for m in models] + [files.scores])
        stats["model_spearman"] = _spearman_matrix(columns)  # models, then the combined score
    for m in models:
        rho = _spearman_matrix(files.token[m])
        top = files.top_rating[m]
        stats["prompts"][m] = {
            "spearman": rho,
            "mean_spearman": _mean_off_diagonal(rho),
            "top_rating_differs": float((top.max(axis=1) != top.min(axis=1)).mean()),
            "top_rating_shares": np.stack([
                np.bincount(top[:, k] - 1, minlength=summary.selection_config["selection_score_max"]) / top.shape[0]
                for k in range(top.shape[1])
            ]),  # [K, S]
        }
    if files.response_chars is not None:
        dropped = files.response_chars[~files.selected]
        stats["length"] = {
            "spearman": float(_spearman_matrix(np.column_stack([files.scores, files.response_chars]))[0, 1]),
            "kept_median_chars": float(np.median(files.response_chars[files.selected])) if kept.size else None,
            "dropped_median_chars": float(np.median(dropped)) if dropped.size else None,
        }
    stats["truncated"] = summary.truncated
    stats["probe"] = summary.probe
    return stats
