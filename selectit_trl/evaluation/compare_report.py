"""`compare/report.md` and its plot: each strategy's held-out loss over its seeds, with the spread."""

from __future__ import annotations

from pathlib import Path

from ..reporting.plots import PLOT_DPI

PLOT_FILE = "eval_loss.png"


def write_compare_report(folder: Path, results: dict, strategies: list[str]) -> Path:
    from matplotlib.figure import Figure

    table = results["strategies"]
    names = [s for s in strategies if s in table]
    means = [table[s]["eval_loss"]["mean"] for s in names]
    spreads = [table[s]["eval_loss"]["std"] for s in names]
    figure = Figure(figsize=(max(4, 1.2 * len(names) + 2), 3.5), dpi=PLOT_DPI, layout="constrained")
    axis = figure.subplots()
    axis.bar(names, means, yerr=spreads, capsize=4, color="#4c72b0")
    axis.set_ylabel("Held-out loss (lower is better)")
    axis.set_title("Mean token loss of the held-out responses, by strategy")
    if means:
        low = min(m - s for m, s in zip(means, spreads))
        axis.set_ylim(bottom=max(0.0, low - 0.05 * abs(low) - 0.01))
    figure.savefig(folder / PLOT_FILE)
    harness = sorted({metric for s in names for metric in table[s] if " " in metric})  # 'task metric,filter'
    lines = [
        "# Strategy comparison",
        "",
        "Each strategy selected from the same pool; each subset trained the same base for the same number of steps, "
        "once per seed, and was evaluated on the same held-out set (mean token loss of its reference responses). "
        "Mean ± standard deviation over the seeds.",
        "",
        "| strategy | rows kept | held-out loss | train loss | seeds | seconds per adapter |",
        "|---|---:|---:|---:|---:|---:|",
        *(f"| {s} | {table[s]['rows_kept']:,} | {table[s]['eval_loss']['mean']:.4f} ± {table[s]['eval_loss']['std']:.4f} "
          f"| {table[s]['train_loss']['mean']:.4f} | {table[s]['seeds']} | {table[s]['seconds']['mean']:.1f} |"
          for s in names),
        "",
        f"![held-out loss by strategy]({PLOT_FILE})",
        "",
    ]
    if harness:
        lines += [
            "## lm-evaluation-harness",
            "",
            "Each task's metric as the harness names it (metric,filter); mean ± standard deviation over the seeds.",
            "",
            "| strategy | " + " | ".join(harness) + " |",
            "|---|" + "---:|" * len(harness),
            *("| " + s + " | " + " | ".join(_cell(table[s].get(m)) for m in harness) + " |" for s in names),
            "",
        ]
    path = folder / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _cell(value: dict | None) -> str:
    return "-" if value is None else f"{value['mean']:.4f} ± {value['std']:.4f}"
