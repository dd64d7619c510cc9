"""What a training run records of its selection: metrics for `report_to`, and the "Data selection" section of the
model card (`model_card.py`) and of an exported dataset's card (`reporting/export.py`).

Both are read from `summary.json` alone, so the numbers a tracker or a card shows are the selection's own.
"""

from __future__ import annotations

from ..store.summary import Summary

SECTION_TITLE = "## Data selection"
PAPER = "[SelectIT](https://arxiv.org/abs/2402.16705) (Liu et al., 2024)"


def selection_metrics(summary: Summary) -> dict[str, float]:
    """Flat numeric metrics for the trainer's loggers (TensorBoard, W&B, ...), all under `selection/`."""
    counts = summary.counts
    metrics = {
        "selection/kept": float(counts["selected"]),
        "selection/total": float(counts["total"]),
        "selection/kept_fraction": counts["selected"] / max(counts["total"], 1),
        "selection/scoring_seconds": float(summary.scoring_seconds),
    }
    for quantile, value in summary.score_quantiles.items():
        metrics[f"selection/score_q{quantile}"] = float(value)
    for model in summary.models:
        metrics[f"selection/weight/{model['id']}"] = float(model["weight"])
    probe = summary.probe
    if probe:
        metrics["selection/probe_auroc"] = float(probe["auroc"]["combined"])
        # Per SelectIT model, and per strategy of a mix: other strategies have only the combined value.
        for scorer, value in {**probe["auroc"], **probe.get("auroc_by_strategy", {})}.items():
            if scorer != "combined":
                metrics[f"selection/probe_auroc/{scorer}"] = float(value)
    return metrics


def card_section(summary: Summary, about: str = "model") -> str:
    """The "Data selection" section, in Markdown: of a model card, or (`about="dataset"`) of an exported subset's."""
    settings = summary.selection_config
    counts = summary.counts
    probe = summary.probe
    selectit = "selectit" in summary.strategy
    label = summary.label
    rows = [
        ("Method", f"{PAPER}, run by selectit-trl" if label == "SelectIT" else f"{label}, run by selectit-trl"),
        ("Kept", f"{counts['selected']:,} of {counts['total']:,} rows ({100 * counts['selected'] / max(counts['total'], 1):.1f}%)"),
        ("Ratio", f"{settings['selection_ratio']}" if not settings.get("selection_max_samples")
         else f"unused: selection_max_samples = {settings['selection_max_samples']}"),
    ]
    if selectit:
        rows += [
            ("Rating prompts (K)", str(settings["selection_num_prompts"])),
            ("Rating scale (S)", f"1..{settings['selection_score_max']}"),
            ("α (prompt disagreement penalty)", str(settings["selection_alpha"])),
            ("Normalisation", settings["selection_normalization"]),
            ("Prompt layout", settings["selection_prompt_layout"]),
        ]
    if settings.get("selection_diversity", "none") != "none":
        rows.append(("Diversity", settings["selection_diversity"]))
    if summary.recycling:
        kept = summary.recycling["kept_versions"]
        rows.append(("Recycled by a teacher", f"{summary.recycling['teacher']}; kept rows: "
                     + ", ".join(f"{n:,} {version}" for version, n in kept.items())))
    if summary.selection_from:
        rows.append(("Selection made by another run", f"`{summary.selection_from}`"))
    rows += [
        ("Signal probe AUROC", f"{probe['auroc']['combined']:.3f} on {probe['pairs']} clean against {probe['pairs']} "
                               "mismatched pairs (0.5 is chance)" if probe else "not run"),
        ("Kept indices (sha256)", f"`{summary.selected_indices_sha256}`"),
    ]
    models = [f"| {m['id']} | {m['num_parameters']:,} | {m['weight']:.4f} |" for m in summary.models]
    subject = "This model was tuned on a subset of its training data" if about == "model" else "These rows were"
    return "\n".join([
        SECTION_TITLE,
        "",
        f"{subject} chosen by the model being tuned itself: it rated every row with several rating prompts, and the "
        "rows rated highest and most consistently were kept." if label == "SelectIT" else
        f"{subject} chosen by {label} (see docs/strategies.md of selectit-trl).",
        "",
        "| Setting | Value |",
        "|---|---|",
        *[f"| {name} | {value} |" for name, value in rows],
        "",
        "| Model | Parameters | Weight |",
        "|---|---:|---:|",
        *models,
        "",
        *(["The scores of every row are in `selection/scores.jsonl` and the settings in `selection/summary.json`; "
           "`selectit-trl report` summarises them.", ""] if about == "model" else []),
    ])
