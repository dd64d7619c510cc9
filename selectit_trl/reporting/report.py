"""`selectit-trl report OUTPUT_DIR`: what a selection did, from its score files alone (no model is loaded).

It writes `selection/report.md` and PNG plots beside it, and prints a short summary:

- the distribution of the final scores, with the cut-off;
- with a mix of strategies (`selection_strategy`), each strategy's values and their rank correlations;
- with peers, each model's sentence scores and the rank correlation (Spearman) between the models;
- agreement across the K rating prompts: the rank correlation of their token-level scores, and the share of
  rows whose top rating differs from prompt to prompt;
- score against response length, and the lengths of the kept and dropped rows;
- the signal probe's AUROC, the highest- and lowest-scored rows, and the rows that were truncated.

The statistics (`statistics`) and the plots (`write_plots`) are separate, so that the numbers can be checked
without drawing anything.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import rankdata

from ..errors import SelectionFilesError
from ..store import outputs
from ..store.summary import Summary

REPORT_FILE = "report.md"
PLOT_DPI = 100
KEPT_COLOUR, DROPPED_COLOUR = "#1b7837", "#9e9e9e"


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


def _figure(width: float, height: float):
    # The object API, not pyplot: no global state, no GUI backend, safe to call from any thread.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=PLOT_DPI, layout="constrained")


def _heatmap(axes, matrix: np.ndarray, labels: list[str], title: str) -> None:
    image = axes.imshow(matrix, vmin=-1, vmax=1, cmap="RdBu_r")
    axes.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    axes.set_yticks(range(len(labels)), labels)
    axes.set_title(title)
    for (row, col), value in np.ndenumerate(matrix):
        text = "n/a" if not np.isfinite(value) else f"{value:.2f}"
        axes.text(col, row, text, ha="center", va="center", fontsize=9,
                  color="white" if np.isfinite(value) and abs(value) > 0.6 else "black")
    axes.figure.colorbar(image, ax=axes, shrink=0.8, label="Spearman ρ")


def _short(model_id: str, limit: int = 28) -> str:
    name = model_id.rstrip("/").split("/")[-1]
    return name if len(name) <= limit else name[: limit - 1] + "…"


def _bins(values: np.ndarray, count: int = 40) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    return np.linspace(low, high if high > low else low + 1e-6, count + 1)


def plot_scores(files: ScoreFiles, stats: dict, path: Path) -> None:
    from matplotlib.ticker import MaxNLocator

    figure = _figure(8, 4.5)
    axes = figure.add_subplot()
    bins = _bins(files.scores)
    axes.hist([files.scores[files.selected], files.scores[~files.selected]], bins=bins, stacked=True,
              color=[KEPT_COLOUR, DROPPED_COLOUR], label=[f"kept ({stats['kept']:,})", f"dropped ({stats['total'] - stats['kept']:,})"])
    if stats["cutoff"] is not None:
        axes.axvline(stats["cutoff"], color="black", linestyle="--", linewidth=1.2, label=f"cut-off {stats['cutoff']:.3f}")
    axes.set_xlabel("Model-level score" if list(stats["strategy"]) == ["selectit"] else "Selection score")
    axes.set_ylabel("Rows")
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_title(f"Score distribution: {stats['kept']:,} of {stats['total']:,} rows kept")
    axes.legend()
    figure.savefig(path)


def plot_models(files: ScoreFiles, stats: dict, path: Path) -> None:
    from matplotlib.ticker import MaxNLocator

    models = stats["models"]
    figure = _figure(13, 5)
    left, right = figure.subplots(1, 2, width_ratios=[1.2, 1])
    everything = np.concatenate([files.sentence[m] for m in models])
    bins = _bins(everything)
    for m in models:
        left.hist(files.sentence[m], bins=bins, histtype="step", linewidth=1.6, label=_short(m))
    left.set_xlabel("Sentence-level score")
    left.set_ylabel("Rows")
    left.yaxis.set_major_locator(MaxNLocator(integer=True))
    left.set_title("Each model's scores")
    left.legend()
    _heatmap(right, stats["model_spearman"], [_short(m) for m in models] + ["combined"], "Rank agreement between models")
    figure.savefig(path)


def plot_prompts(files: ScoreFiles, stats: dict, path: Path) -> None:
    from matplotlib import colormaps

    models = stats["models"]
    figure = _figure(13, 5 * len(models))
    panels = figure.subfigures(len(models), 1, squeeze=False)[:, 0]
    for panel, m in zip(panels, models):
        prompts = stats["prompts"][m]
        panel.suptitle(f"{m}: top rating differs across prompts on {100 * prompts['top_rating_differs']:.0f}% of rows",
                       fontsize="large")
        left, right = panel.subplots(1, 2)
        labels = [f"P{k + 1}" for k in range(prompts["spearman"].shape[0])]
        _heatmap(left, prompts["spearman"], labels, "Token scores: rank agreement between prompts")
        shares = prompts["top_rating_shares"]  # [K, S]
        bottom = np.zeros(shares.shape[0])
        colours = colormaps["viridis"](np.linspace(0.1, 0.9, shares.shape[1]))
        for rating in range(shares.shape[1]):
            right.bar(labels, shares[:, rating], bottom=bottom, color=colours[rating], label=str(rating + 1))
            bottom += shares[:, rating]
        right.set_ylim(0, 1)
        right.set_xlabel("Rating prompt")
        right.set_ylabel("Share of rows")
        right.set_title("Top rating under each prompt")
        right.legend(title="Rating", loc="center left", bbox_to_anchor=(1.0, 0.5))
    figure.savefig(path)


def _length_axis(axes, lengths: np.ndarray) -> None:
    """A log-scaled x axis of characters, labelled 10, 20, 50, 100, ... rather than in powers of ten, with fewer
    labels the more decades it spans, so that they never overlap."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    decades = np.log10(max(lengths.max(), 1) / max(lengths.min(), 1))
    subs = (1.0, 2.0, 3.0, 5.0) if decades <= 1.5 else (1.0, 2.0, 5.0) if decades <= 2.5 else (1.0,)
    axes.set_xscale("log")
    axes.xaxis.set_major_locator(LogLocator(base=10, subs=subs))
    axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
    axes.xaxis.set_minor_formatter(NullFormatter())
    axes.set_xlabel("Response length (characters, log scale)")


def plot_length(files: ScoreFiles, stats: dict, path: Path) -> None:
    figure = _figure(13, 4.8)
    left, right = figure.subplots(1, 2)
    chars = np.maximum(files.response_chars, 1)
    groups = ((~files.selected, DROPPED_COLOUR, "dropped"), (files.selected, KEPT_COLOUR, "kept"))
    for mask, colour, label in groups:
        left.scatter(chars[mask], files.scores[mask], s=6, alpha=0.5, color=colour, label=label, rasterized=True)
    _length_axis(left, chars)
    left.set_ylabel("Model-level score")
    left.set_title(f"Score against length (Spearman ρ = {_number(stats['length']['spearman'], 2)})")
    left.legend(markerscale=3)
    # Bins of equal width on the log scale; each group's bars are shares of that group, so they compare.
    bins = np.geomspace(chars.min(), max(chars.max(), chars.min() * 1.01), 31)
    for mask, colour, label in groups:
        if mask.any():
            right.hist(chars[mask], bins=bins, weights=np.full(int(mask.sum()), 1 / mask.sum()), histtype="stepfilled",
                       alpha=0.55, color=colour, label=f"{label} (median {np.median(chars[mask]):,.0f})")
    _length_axis(right, chars)
    right.set_ylabel("Share of the group's rows")
    right.set_title("Lengths of kept and dropped rows")
    right.legend()
    figure.savefig(path)


def write_plots(files: ScoreFiles, stats: dict, folder: Path) -> dict[str, Path]:
    """Draw every plot that applies into `folder`; returns them by name."""
    plots = {"score_distribution": plot_scores}
    if stats["models"]:
        plots["prompt_agreement"] = plot_prompts
    if len(stats["models"]) > 1:
        plots["models"] = plot_models
    if "length" in stats:
        plots["length"] = plot_length
    written = {}
    for name, draw in plots.items():
        path = folder / f"{name}.png"
        draw(files, stats, path)
        written[name] = path
    return written


def _number(value, digits: int = 3) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _table(matrix: np.ndarray, labels: list[str]) -> list[str]:
    lines = ["| | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    for label, row in zip(labels, matrix):
        lines.append(f"| {label} | " + " | ".join(_number(v, 2) for v in row) + " |")
    return lines


def report_text(output_dir, files: ScoreFiles, stats: dict, plots: dict[str, Path]) -> str:
    summary = files.summary
    settings = summary.selection_config
    q = stats["quantiles"]
    selectit = (
        f" K={settings['selection_num_prompts']} rating prompts, S={settings['selection_score_max']}, "
        f"α={settings['selection_alpha']}, normalisation `{settings['selection_normalization']}`, layout "
        f"`{settings['selection_prompt_layout']}`." if stats["models"] else ""
    )
    diversity = settings.get("selection_diversity", "none")
    lines = [
        f"# Selection report: {output_dir}",
        "",
        f"Kept **{stats['kept']:,} of {stats['total']:,}** rows ({100 * stats['kept'] / max(stats['total'], 1):.1f}%) by "
        f"{summary.label}{'' if diversity == 'none' else f', spread by {diversity}'}.{selectit} "
        f"Scoring took {summary.scoring_seconds:.1f} s.",
        "",
        "| Model | Parameters | Weight |",
        "|---|---:|---:|",
        *[f"| {m['id']} | {m['num_parameters']:,} | {m['weight']:.4f} |" for m in summary.models],
        "",
    ]
    recycling = summary.recycling
    if recycling:
        def listed(counts):
            return ", ".join(f"{n:,} {version}" for version, n in counts.items())

        lines += [f"Recycled with the teacher {recycling['teacher']}: the rows took {listed(recycling['versions'])}; "
                  f"the kept rows, {listed(recycling['kept_versions'])} (`version` in scores.jsonl).", ""]
    lines += [
        "## Signal probe",
        "",
    ]
    probe = stats["probe"]
    if probe:
        lines += [
            f"AUROC of {probe['pairs']} real pairs against {probe['pairs']} mismatched ones (each instruction with "
            "another row's response); 0.5 is chance, 1.0 a perfect split:",
            "",
            "| Scorer | AUROC |",
            "|---|---:|",
            *[f"| {m} | {_number(probe['auroc'][m])} |" for m in stats["models"]],
            *[f"| {name} | {_number(value)} |" for name, value in probe.get("auroc_by_strategy", {}).items()],
            f"| combined | {_number(probe['auroc']['combined'])} |",
            "",
        ]
        if probe["below_threshold"]:
            lines += [f"**Below {probe['threshold']}:** these scores barely tell good pairs from bad ones here, so the "
                      "selection is close to random. A larger peer model (`selection_peer_models`) carries more signal.", ""]
    else:
        lines += ["Not run: `selection_probe: false`, fewer than two usable rows, or a run that may not score (a "
                  "resumed training run, ZeRO-3) without the probe's pairs in the store.", ""]
    lines += [
        "## Score distribution",
        "",
        "![Score distribution](score_distribution.png)",
        "",
        f"Quantiles: min {_number(q[0.0])}, 25% {_number(q[0.25])}, median {_number(q[0.5])}, 75% {_number(q[0.75])}, "
        f"max {_number(q[1.0])}. Lowest kept score (the cut-off): {_number(stats['cutoff'])}.",
        "",
    ]
    barred = [f"{count:,} row(s) with " + ("an empty instruction" if name == "empty_instruction" else f"{name.upper()} > 1")
              for name, count in stats["barred"].items() if count]
    if barred:
        lines += ["Never kept, as the strategy bars them: " + ", ".join(barred) + ".", ""]
    if "strategy_spearman" in stats:
        labels = [*files.strategy_values, "combined"]
        lines += ["## Strategies", "", "Spearman rank correlation of each strategy's values and the combined score:", "",
                  *_table(stats["strategy_spearman"], labels), ""]
    if "models" in plots:
        labels = [_short(m) for m in stats["models"]] + ["combined"]
        lines += ["## Models", "", "![Models](models.png)", "", "Spearman rank correlation of the sentence-level scores:",
                  "", *_table(stats["model_spearman"], labels), ""]
    if stats["models"]:
        lines += ["## Agreement across rating prompts", "", "![Prompt agreement](prompt_agreement.png)", "",
                  "| Model | Mean Spearman ρ between prompts | Rows whose top rating differs across prompts |",
                  "|---|---:|---:|"]
        for m in stats["models"]:
            prompts = stats["prompts"][m]
            lines.append(f"| {m} | {_number(prompts['mean_spearman'])} | {100 * prompts['top_rating_differs']:.1f}% |")
        lines += ["", "Prompts: " + "; ".join(f"P{k + 1}: “{p}”" for k, p in enumerate(summary.prompts)), ""]
    if "length" in stats:
        length = stats["length"]
        lines += [
            "## Score and length",
            "",
            "![Score against length](length.png)",
            "",
            f"Spearman ρ between score and response length: {_number(length['spearman'])}. Median response length: "
            f"kept {_number(length['kept_median_chars'], 0)} characters, dropped {_number(length['dropped_median_chars'], 0)}.",
            "",
        ]
    for title, key in (("Highest-scored rows", "top"), ("Lowest-scored rows", "bottom")):
        lines += [f"## {title}", "", "| Row | Score | Instruction | Response |", "|---:|---:|---|---|"]
        for example in summary.examples[key]:
            cells = [example["instruction"] if example["instruction"] is not None else "(whole text)", example["response"]]
            cells = [c.replace("|", "\\|") for c in cells]
            lines.append(f"| {example['index']} | {example['score']:.4f} | {cells[0]} | {cells[1]} |")
        lines.append("")
    truncated = stats["truncated"]
    lines += ["## Truncated rows", ""]
    if truncated["count"]:
        shown = ", ".join(map(str, truncated["indices"][:50])) + (" ..." if truncated["count"] > 50 else "")
        lines += [f"{truncated['count']} row(s) were longer than a rating model's context and lost their middle: {shown}.", ""]
    else:
        lines += ["None: every row fit every model's context.", ""]
    return "\n".join(lines)


def short_summary(summary: Summary, stats: dict, report_path: Path, plots: dict[str, Path]) -> str:
    """A few lines for the terminal."""
    lines = [f"{summary.label} kept {stats['kept']:,} of {stats['total']:,} samples; cut-off score {_number(stats['cutoff'])} "
             f"(median {_number(stats['quantiles'][0.5])})."]
    probe = stats["probe"]
    if probe:
        warning = f" (below {probe['threshold']}: close to chance)" if probe["below_threshold"] else ""
        lines.append(f"Signal probe AUROC {_number(probe['auroc']['combined'])}{warning}.")
    for m in stats["models"]:
        prompts = stats["prompts"][m]
        lines.append(f"{m}: prompts agree with mean Spearman {_number(prompts['mean_spearman'])}; top rating differs "
                     f"across prompts on {100 * prompts['top_rating_differs']:.0f}% of rows.")
    if "length" in stats:
        lines.append(f"Score against response length: Spearman {_number(stats['length']['spearman'])}.")
    lines.append(f"Report: {report_path} ({len(plots)} plots)")
    return "\n".join(lines) + "\n"


def write_report(output_dir) -> str:
    """Write `selection/report.md` and its plots; return the short summary."""
    files = read_score_files(output_dir)
    stats = statistics(files)
    folder = outputs.selection_dir(output_dir)
    plots = write_plots(files, stats, folder)
    path = folder / REPORT_FILE
    path.write_text(report_text(output_dir, files, stats, plots), encoding="utf-8")
    return short_summary(files.summary, stats, path, plots)


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: selectit-trl report OUTPUT_DIR", file=sys.stderr)
        return 2
    print(write_report(argv[0]), end="")
    return 0

