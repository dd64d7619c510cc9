"""How much TRL preparation the drop-in trainer saves by preparing only the kept rows.

Before, `SFTTrainer.__init__` prepared (formatted, tokenized, truncated) every row of the pool, and `train()`
prepared the kept subset again. Now the pool's preparation is deferred and only the kept rows are prepared,
once. This script times, on the same trainer and in the same run:

* `construct`: building `SelectiveSFTTrainer` (the model loads; TRL prepares one row);
* `pool`: preparing the whole pool, the work the old `__init__` did (read through `trainer.train_dataset`,
  which prepares it exactly as SFTTrainer does);
* `subset`: preparing the kept rows, which `train()` does both before and now.

Old cost = construct + pool + subset; new cost = construct + subset. No scoring runs: the subset is the first
`ratio` of the rows, which costs what any subset of that size costs.

    .venv/bin/python benchmarks/prepare_once.py --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from datasets import disable_caching, load_dataset  # noqa: E402

from selectit_trl import SelectiveSFTConfig, SelectiveSFTTrainer  # noqa: E402

DATA = Path(os.environ.get("SELECTIT_TRL_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
ALPACA = DATA / "alpaca_subsets" / "cherry_alpaca_5_percent.json"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def one_run(rows, ratio: float, output_dir: str) -> dict:
    args = SelectiveSFTConfig(output_dir=output_dir, use_cpu=True, report_to="none", max_length=1024,
                              selection_ratio=ratio, dataset_num_proc=None)
    start = time.perf_counter()
    trainer = SelectiveSFTTrainer(args=args, train_dataset=rows)  # the embedded model and its tokenizer
    construct = time.perf_counter() - start

    start = time.perf_counter()
    pool = trainer.train_dataset  # the whole pool, prepared as SFTTrainer.__init__ prepared it
    pool_seconds = time.perf_counter() - start
    assert len(pool) == len(rows)

    kept = list(range(int(len(rows) * ratio)))
    start = time.perf_counter()
    subset = trainer._prepare_dataset(trainer._selection_pool.select(kept), trainer.processing_class, trainer.args,
                                      trainer.args.packing, trainer._formatting_func, "train")
    subset_seconds = time.perf_counter() - start
    assert len(subset) == len(kept)
    return {"construct": construct, "pool": pool_seconds, "subset": subset_seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ratio", type=float, default=0.2)
    parser.add_argument("--out", default="benchmarks/results/prepare_once.json")
    options = parser.parse_args()
    disable_caching()  # every run prepares from scratch, as a first run does
    rows = load_dataset("json", data_files=str(ALPACA), split="train")
    runs = []
    for _ in range(options.repeats):
        with tempfile.TemporaryDirectory() as folder:
            runs.append(one_run(rows, options.ratio, folder))
    median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    before = [r["construct"] + r["pool"] + r["subset"] for r in runs]
    after = [r["construct"] + r["subset"] for r in runs]
    result = {
        "cpu": cpu_name(),
        "rows": len(rows),
        "ratio": options.ratio,
        "repeats": options.repeats,
        "median_seconds": median,
        "median_before": statistics.median(before),
        "median_after": statistics.median(after),
        "median_saved": statistics.median(b - a for b, a in zip(before, after)),
        "median_ratio": statistics.median(b / a for b, a in zip(before, after)),
        "runs": runs,
    }
    Path(options.out).parent.mkdir(parents=True, exist_ok=True)
    Path(options.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
