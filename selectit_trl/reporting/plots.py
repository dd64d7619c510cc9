"""The report's PNG plots: the score distribution, the models, the prompts, and score against length."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .score_files import ScoreFiles

PLOT_DPI = 100
KEPT_COLOUR, DROPPED_COLOUR = "#1b7837", "#9e9e9e"


def number(value, digits: int = 3) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


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


def short_id(model_id: str, limit: int = 28) -> str:
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
        left.hist(files.sentence[m], bins=bins, histtype="step", linewidth=1.6, label=short_id(m))
    left.set_xlabel("Sentence-level score")
    left.set_ylabel("Rows")
    left.yaxis.set_major_locator(MaxNLocator(integer=True))
    left.set_title("Each model's scores")
    left.legend()
    _heatmap(right, stats["model_spearman"], [short_id(m) for m in models] + ["combined"], "Rank agreement between models")
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
    left.set_title(f"Score against length (Spearman ρ = {number(stats['length']['spearman'], 2)})")
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


# Every plot the report may draw, as files beside report.md.
PLOT_FILES = ("score_distribution.png", "prompt_agreement.png", "models.png", "length.png")


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
