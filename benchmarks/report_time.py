"""Wall time of `selectit-trl report` on a large selection, from process start to exit.

    python benchmarks/report_time.py                 # 50,000 rows, 2 models, K=5, S=5; about a minute
    python benchmarks/report_time.py --rows 5000 --runs 1

The score files are made up (random probabilities, written in the format `run_selection` writes), because the
report reads nothing else: no model is loaded. Each run is a fresh `python -m selectit_trl.cli report` process,
so imports count. Prints the per-run times, their median and the score files' size.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from selectit_trl.selection import ranking  # noqa: E402
from selectit_trl.store.outputs import write_selection  # noqa: E402
from selectit_trl.strategies import reflection  # noqa: E402


def make_selection(output_dir: Path, rows: int, k: int = 5, s: int = 5, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    models = {"org/tuned-7b": 7_000_000_000, "org/peer-13b": 13_000_000_000}
    probs = {m: rng.dirichlet(np.full(s, 0.5), size=(rows, k)) * rng.uniform(0.3, 1.0, size=(rows, k, 1)) for m in models}
    weights = reflection.model_weights(models)
    token, sentence, scores = reflection.score_samples(probs, weights, "paper", 0.2)
    selected = set(ranking.select(scores, 0.2).tolist())
    chars = rng.lognormal(6, 1, size=rows).astype(int) + 1
    records = (
        {"index": i, "score": float(scores[i]), "selected": i in selected,
         "sentence_scores": {m: float(sentence[m][i]) for m in models},
         "token_scores": {m: token[m][i].tolist() for m in models},
         "probs": {m: probs[m][i].tolist() for m in models},
         "truncated": False, "response_chars": int(chars[i])}
        for i in range(rows)
    )
    example = {"index": 0, "score": float(scores[0]), "instruction": "An instruction.", "response": "A response."}
    summary = {
        "selection_config": {"selection_num_prompts": k, "selection_score_max": s, "selection_alpha": 0.2,
                             "selection_normalization": "paper", "selection_prompt_layout": "sample_first"},
        "counts": {"total": rows, "selected": len(selected)},
        "models": [{"id": m, "num_parameters": n, "weight": weights[m]} for m, n in models.items()],
        "scoring_seconds": 0.0, "prompts": [f"Prompt {j}" for j in range(k)], "truncated": {"count": 0, "indices": []},
        "probe": None, "selected_indices_sha256": "", "examples": {"top": [example] * 10, "bottom": [example] * 10},
    }
    write_selection(output_dir, records, summary)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=3)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        output_dir = Path(folder)
        make_selection(output_dir, options.rows)
        size = (output_dir / "selection" / "scores.jsonl").stat().st_size
        times = []
        for run in range(options.runs):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "selectit_trl.cli", "report", str(output_dir)], cwd=REPO, check=True,
                           capture_output=True)
            times.append(time.perf_counter() - started)
            print(f"run {run + 1}: {times[-1]:.2f} s")
        plots = sorted(p.name for p in (output_dir / "selection").glob("*.png"))
    print(json.dumps({"rows": options.rows, "scores_jsonl_mb": round(size / 2**20, 1), "runs_s": [round(t, 2) for t in times],
                      "median_s": round(statistics.median(times), 2), "plots": plots}))


if __name__ == "__main__":
    main()
