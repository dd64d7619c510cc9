"""`selectit-trl report OUTPUT_DIR`: what a selection did, from its score files alone (no model is loaded).

It writes `selection/report.md` and PNG plots beside it, and prints a short summary:

- the distribution of the final scores, with the cut-off;
- with a mix of strategies (`selection_strategy`), each strategy's values and their rank correlations;
- with peers, each model's sentence scores and the rank correlation (Spearman) between the models;
- agreement across the K rating prompts: the rank correlation of their token-level scores, and the share of
  rows whose top rating differs from prompt to prompt;
- score against response length, and the lengths of the kept and dropped rows;
- the signal probe's AUROC, the highest- and lowest-scored rows, and the rows that were truncated.

The statistics (`score_files.statistics`) and the plots (`plots.write_plots`) are separate modules, so that the
numbers can be checked without drawing anything.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ..store import outputs
from ..store.summary import Summary
from .plots import number, short_id, write_plots
from .score_files import ScoreFiles, read_score_files, statistics

REPORT_FILE = "report.md"


def _table(matrix: np.ndarray, labels: list[str]) -> list[str]:
    lines = ["| | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    for label, row in zip(labels, matrix):
        lines.append(f"| {label} | " + " | ".join(number(v, 2) for v in row) + " |")
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
    if summary.selection_from:
        lines += [f"Selection made by another run: `{summary.selection_from}` (`selection_from`); this run scored "
                  "nothing.", ""]
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
            *[f"| {m} | {number(probe['auroc'][m])} |" for m in stats["models"]],
            *[f"| {name} | {number(value)} |" for name, value in probe.get("auroc_by_strategy", {}).items()],
            f"| combined | {number(probe['auroc']['combined'])} |",
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
        f"Quantiles: min {number(q[0.0])}, 25% {number(q[0.25])}, median {number(q[0.5])}, 75% {number(q[0.75])}, "
        f"max {number(q[1.0])}. Lowest kept score (the cut-off): {number(stats['cutoff'])}.",
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
        labels = [short_id(m) for m in stats["models"]] + ["combined"]
        lines += ["## Models", "", "![Models](models.png)", "", "Spearman rank correlation of the sentence-level scores:",
                  "", *_table(stats["model_spearman"], labels), ""]
    if stats["models"]:
        lines += ["## Agreement across rating prompts", "", "![Prompt agreement](prompt_agreement.png)", "",
                  "| Model | Mean Spearman ρ between prompts | Rows whose top rating differs across prompts |",
                  "|---|---:|---:|"]
        for m in stats["models"]:
            prompts = stats["prompts"][m]
            lines.append(f"| {m} | {number(prompts['mean_spearman'])} | {100 * prompts['top_rating_differs']:.1f}% |")
        lines += ["", "Prompts: " + "; ".join(f"P{k + 1}: “{p}”" for k, p in enumerate(summary.prompts)), ""]
    if "length" in stats:
        length = stats["length"]
        lines += [
            "## Score and length",
            "",
            "![Score against length](length.png)",
            "",
            f"Spearman ρ between score and response length: {number(length['spearman'])}. Median response length: "
            f"kept {number(length['kept_median_chars'], 0)} characters, dropped {number(length['dropped_median_chars'], 0)}.",
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
    lines = [f"{summary.label} kept {stats['kept']:,} of {stats['total']:,} samples; cut-off score {number(stats['cutoff'])} "
             f"(median {number(stats['quantiles'][0.5])})."]
    probe = stats["probe"]
    if probe:
        warning = f" (below {probe['threshold']}: close to chance)" if probe["below_threshold"] else ""
        lines.append(f"Signal probe AUROC {number(probe['auroc']['combined'])}{warning}.")
    for m in stats["models"]:
        prompts = stats["prompts"][m]
        lines.append(f"{m}: prompts agree with mean Spearman {number(prompts['mean_spearman'])}; top rating differs "
                     f"across prompts on {100 * prompts['top_rating_differs']:.0f}% of rows.")
    if "length" in stats:
        lines.append(f"Score against response length: Spearman {number(stats['length']['spearman'])}.")
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


REPORT_USAGE = """usage: selectit-trl report OUTPUT_DIR

Write OUTPUT_DIR/selection/report.md and its plots from the selection's files alone (scores.jsonl,
summary.json, probe.json), and print a short summary. No model loads: it takes seconds, and can run on another
machine than the one that scored. docs/report.md explains every section.
"""


def main(argv: list[str]) -> int:
    if argv in (["-h"], ["--help"]):
        print(REPORT_USAGE, end="")
        return 0
    if len(argv) != 1 or argv[0].startswith("-"):
        print(REPORT_USAGE.splitlines()[0], file=sys.stderr)
        return 2
    print(write_report(argv[0]), end="")
    return 0

