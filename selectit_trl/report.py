"""A plain-text summary of a finished selection, read from the score files alone (no model is loaded)."""

from __future__ import annotations

import sys

import numpy as np

from . import store


def _histogram(scores: np.ndarray, cutoff: float | None, bins: int = 12, width: int = 40) -> list[str]:
    low, high = float(scores.min()), float(scores.max())
    if high == low:
        high = low + 1e-9
    counts, edges = np.histogram(scores, bins=bins, range=(low, high))
    peak = max(int(counts.max()), 1)
    lines = []
    for count, left, right in zip(counts, edges[:-1], edges[1:]):
        bar = "#" * round(width * count / peak)
        mark = "  <- cut-off" if cutoff is not None and left <= cutoff < right else ""
        lines.append(f"  {left:7.3f} .. {right:7.3f} | {bar:<{width}} {count:>6}{mark}")
    return lines


def build_report(output_dir) -> str:
    """The report as Markdown text: counts, models, score distribution with the cut-off, top and bottom samples."""
    summary = store.read_summary(output_dir)
    if summary is None:
        raise FileNotFoundError(
            f"No finished selection in {store.selection_dir(output_dir)}: run `selectit-trl score` or `train` first."
        )
    records = store.read_scores(output_dir)
    scores = np.array([r["score"] for r in records], dtype=np.float64)
    kept = [r["score"] for r in records if r["selected"]]
    cutoff = min(kept) if kept else None
    counts = summary["counts"]
    settings = summary["selection_config"]
    lines = [
        f"# SelectIT selection: {output_dir}",
        "",
        f"Kept {counts['selected']} of {counts['total']} samples "
        f"({100.0 * counts['selected'] / max(counts['total'], 1):.1f}%), "
        f"K={settings['selection_num_prompts']}, S={settings['selection_score_max']}, alpha={settings['selection_alpha']}, "
        f"normalization={settings['selection_normalization']}, layout={settings['selection_prompt_layout']}.",
        f"Scoring took {summary['scoring_seconds']:.1f} s.",
        "",
        "## Models",
        "",
        *[f"- {m['id']}: {m['num_parameters']:,} parameters, weight {m['weight']:.4f}" for m in summary["models"]],
        "",
        "## Score distribution",
        "",
        "```",
        *_histogram(scores, cutoff),
        "```",
        "",
        f"Scores: min {scores.min():.4f}, median {np.median(scores):.4f}, max {scores.max():.4f}"
        + (f"; lowest kept score {cutoff:.4f}." if cutoff is not None else "."),
    ]
    for title, key in (("Highest-scored samples", "top"), ("Lowest-scored samples", "bottom")):
        lines += ["", f"## {title}", ""]
        for example in summary["examples"][key]:
            lines.append(f"- #{example['index']} ({example['score']:.4f}) {example['instruction']} -> {example['response']}")
    return "\n".join(lines) + "\n"


def write_report(output_dir) -> str:
    """Build the report, write it to `selection/report.md`, and return its text."""
    text = build_report(output_dir)
    (store.selection_dir(output_dir) / "report.md").write_text(text, encoding="utf-8")
    return text


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: selectit-trl report OUTPUT_DIR", file=sys.stderr)
        return 2
    print(write_report(argv[0]), end="")
    return 0
