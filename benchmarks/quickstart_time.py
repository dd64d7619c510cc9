"""Time the quickstart (`selectit-trl train --config recipes/quickstart.yaml`) end to end, several times.

Reports the median wall time of the whole command (process start to exit, model loading and training
included) and the median `scoring_seconds` from summary.json. Each run gets a fresh output directory, so
every run scores from scratch.

    python benchmarks/quickstart_time.py --runs 3
    MKL_ENABLE_INSTRUCTIONS=AVX2 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 \
        python benchmarks/quickstart_time.py --runs 3   # as on an AVX2-only CPU, on an AMX one
    python benchmarks/quickstart_time.py --runs 3 --load_in_4bit false   # any recipe field, as on the CLI

The recipe's `dtype: auto` computes in bf16 on a CPU with AMX or AVX512-BF16 and in fp32 elsewhere; the CPU
kind this saw is printed with the result.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args, overrides = parser.parse_known_args()  # the rest goes to `selectit-trl train`, e.g. --load_in_4bit false
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    walls, scoring = [], []
    for run in range(args.runs):
        with tempfile.TemporaryDirectory() as out:
            command = [sys.executable, "-m", "selectit_trl.cli", "train", "--config", "recipes/quickstart.yaml",
                       "--output_dir", out, "--disable_tqdm", "true", *overrides]
            started = time.perf_counter()
            subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True)
            walls.append(time.perf_counter() - started)
            summary = json.loads((Path(out) / "selection" / "summary.json").read_text())
            scoring.append(summary["scoring_seconds"])
            print(f"run {run + 1}: wall {walls[-1]:.1f} s, scoring {scoring[-1]:.1f} s "
                  f"({summary['counts']['total'] / scoring[-1]:.2f} samples/s)", flush=True)
    from selectit_trl.engine.hardware import auto_compute_dtype, cpu_kind

    print(f"CPU: {cpu_kind()}, compute dtype {str(auto_compute_dtype('cpu')).removeprefix('torch.')}"
          + (f", overrides: {' '.join(overrides)}" if overrides else ""))
    print(f"median wall {statistics.median(walls):.1f} s, median scoring {statistics.median(scoring):.1f} s, "
          f"scoring share {statistics.median(s / w for s, w in zip(scoring, walls)):.2f} of wall, over {args.runs} runs")


if __name__ == "__main__":
    main()
