"""Every selection strategy on the same 999 Alpaca rows with the embedded model, side by side.

    python benchmarks/compare_strategies.py             # about 15 minutes on a 2-core CPU (make compare)
    python benchmarks/compare_strategies.py --rows 100 --probe-size 16   # a quick look

Each strategy runs `selectit-trl score` on the quickstart recipe (the embedded SmolLM2-135M-Instruct in 4-bit
NF4 with bf16 compute: the default user configuration) in a fresh process and output directory, with the
signal probe on. The diversity modes run after SelectIT in its output directory, so they reuse its scores and
their time is that of the embedding and the picking; the SelectIT + IFD mix starts from copies of the SelectIT
and IFD stores, so its time is that of combining them. Then it compares the kept sets (Jaccard), the rankings
(Spearman), the time, and each strategy's probe AUROC, and writes benchmarks/results/strategies.json and the
measured part of docs/strategies.md.

Data: llamafactory_alpaca_en_demo.json from $SELECTIT_TRL_DATA, else ../shared/data.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from doc_section import replace_section
from scipy.stats import spearmanr

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "strategies.md"
RESULTS = REPO / "benchmarks" / "results" / "strategies.json"
START, END = "<!-- compare_strategies:start -->", "<!-- compare_strategies:end -->"

# name -> extra command-line settings. "after" runs in that run's output directory, reusing its store; "reuse"
# starts from a copy of those runs' stores, so that a mix measures nothing its parts have measured.
RUNS = {
    "selectit": {"args": ["--selection_strategy", "selectit"]},
    "ifd": {"args": ["--selection_strategy", "ifd"]},
    "rifd": {"args": ["--selection_strategy", "rifd"]},
    "length": {"args": ["--selection_strategy", "length"]},
    "random": {"args": ["--selection_strategy", "random"]},
    "selectit+ifd": {"args": ["--selection_strategy", "selectit:0.5,ifd:0.5"], "reuse": ["selectit", "ifd"]},
    "selectit, kcenter": {"args": ["--selection_strategy", "selectit", "--selection_diversity", "kcenter"], "after": "selectit"},
    "selectit, clusters": {"args": ["--selection_strategy", "selectit", "--selection_diversity", "clusters"], "after": "selectit"},
}


def data_file() -> Path:
    root = Path(os.environ.get("SELECTIT_TRL_DATA") or REPO.parent / "shared" / "data")
    path = root / "alpaca_subsets" / "llamafactory_alpaca_en_demo.json"
    if not path.is_file():
        sys.exit(f"{path} not found: set SELECTIT_TRL_DATA or put ../shared/data beside the checkout.")
    return path


def run(name: str, dataset: Path, work: Path, probe_size: int) -> dict:
    spec = RUNS[name]
    output = work / spec.get("after", name).replace(", ", "-").replace("+", "-")
    command = [
        sys.executable, "-m", "selectit_trl.cli", "score", "--config", str(REPO / "recipes" / "quickstart.yaml"),
        "--dataset_name", str(dataset), "--output_dir", str(output), "--selection_probe_size", str(probe_size),
        *spec["args"],
    ]
    for part in spec.get("reuse", []):
        for source in (work / part / "selection" / "store").glob("*.jsonl"):
            target = output / "selection" / "store" / f"{part}-{source.name}"  # the store reads every *.jsonl
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode:
        sys.exit(f"{name} failed:\n{done.stderr[-4000:]}")
    selection = output / "selection"
    summary = json.loads((selection / "summary.json").read_text())
    records = [json.loads(line) for line in (selection / "scores.jsonl").read_text().splitlines()]
    probe = summary["probe"] or {}
    result = {
        "wall_seconds": wall,
        "scoring_seconds": summary["scoring_seconds"],
        "probe_seconds": probe.get("scoring_seconds"),
        "kept": [r["index"] for r in records if r["selected"]],
        "scores": [r["score"] for r in records],
        "barred": summary.get("barred", {}),
        "probe_auroc": probe.get("auroc", {}).get("combined"),
        "probe_auroc_by_strategy": probe.get("auroc_by_strategy"),
        "probe_pairs": probe.get("pairs"),
    }
    print(f"{name:20s} wall {wall:6.1f} s  scoring {result['scoring_seconds']:6.1f} s  kept {len(result['kept'])}  "
          f"probe AUROC {result['probe_auroc']}", flush=True)
    return result


def jaccard(a, b) -> float:
    a, b = set(a), set(b)
    return len(a & b) / len(a | b) if a | b else 1.0


def table(matrix, labels, digits=2) -> list[str]:
    lines = ["| | " + " | ".join(labels) + " |", "|---" + "|---:" * len(labels) + "|"]
    for label, row in zip(labels, matrix):
        lines.append(f"| {label} | " + " | ".join(f"{v:.{digits}f}" for v in row) + " |")
    return lines


def markdown(results: dict, meta: dict) -> str:
    names = list(results)
    rows = meta["rows"]
    lines = [
        f"Measured with `{meta['command']}` on {meta['machine']}: {rows} rows of `llamafactory_alpaca_en_demo.json`, "
        f"the embedded SmolLM2-135M-Instruct in 4-bit NF4 (bf16 compute), keeping ⌊{rows} × 0.2⌋ = {rows * 2 // 10} rows, "
        f"signal probe on {meta['probe_size']} clean against {meta['probe_size']} mismatched pairs.",
        "",
        "| Strategy | Rows kept | Barred (ratio > 1) | Scoring s (probe included) | Wall s (process) | Probe AUROC |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in names:
        r = results[name]
        barred = ", ".join(f"{n} {c}" for n, c in r["barred"].items() if c) or "-"
        auroc = "-" if r["probe_auroc"] is None else f"{r['probe_auroc']:.3f}"
        lines.append(f"| {name} | {len(r['kept'])} | {barred} | {r['scoring_seconds']:.1f} | {r['wall_seconds']:.1f} | {auroc} |")
    mixes = {n: r["probe_auroc_by_strategy"] for n, r in results.items() if r["probe_auroc_by_strategy"]}
    for name, by in mixes.items():
        lines += ["", f"Probe AUROC of each part of `{name}`: " + ", ".join(f"{k} {v:.3f}" for k, v in by.items()) + "."]
    overlap = [[jaccard(results[a]["kept"], results[b]["kept"]) for b in names] for a in names]
    lines += ["", "Overlap of the kept sets (Jaccard: shared rows over rows in either):", "", *table(overlap, names)]
    ranks = spearmanr(np.column_stack([results[n]["scores"] for n in names])).statistic
    ranks = np.atleast_2d(ranks)
    lines += ["", "Rank correlation (Spearman) of the scores each ranks by, over all rows:", "", *table(ranks, names)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=999)
    parser.add_argument("--probe-size", type=int, default=128)
    parser.add_argument("--only", nargs="*", choices=list(RUNS), help="some runs only (the doc is not rewritten)")
    parser.add_argument("--keep", type=Path, help="keep the output directories here")
    options = parser.parse_args()
    rows = json.loads(data_file().read_text(encoding="utf-8"))[: options.rows]
    work = Path(tempfile.mkdtemp(prefix="compare-strategies-")) if options.keep is None else options.keep
    work.mkdir(parents=True, exist_ok=True)
    dataset = work / "rows.json"
    dataset.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    names = options.only or list(RUNS)
    results = {}
    try:
        for name in names:
            for part in [RUNS[name].get("after"), *RUNS[name].get("reuse", [])]:
                if part and part not in results:
                    results[part] = run(part, dataset, work, options.probe_size)
            results[name] = run(name, dataset, work, options.probe_size)
    finally:
        if options.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    results = {n: results[n] for n in RUNS if n in results}
    argv = " ".join(sys.argv[1:])
    meta = {"rows": len(rows), "probe_size": options.probe_size,
            "command": f"python benchmarks/compare_strategies.py{' ' + argv if argv else ''}",
            "machine": f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()})"}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n", encoding="utf-8")
    text = markdown(results, meta)
    print(text)
    if not options.only:
        replace_section(DOC, START, END, text)


if __name__ == "__main__":
    main()
