"""GPU memory and selection speed of the 7B recipes, measured on a random-weight model of the recipes' shape.

    python benchmarks/recipe_memory.py                     # on a CUDA GPU; a few minutes on an H100
    python benchmarks/recipe_memory.py --shape llama-tiny --rows 16   # try the script out on a CPU

For each recipe under recipes/ (alpaca, wizardlm, alma) it:

1. builds the trainer exactly as `selectit-trl train --config RECIPE` does (4-bit NF4 with nested quantisation,
   bf16 compute, the recipe's LoRA, gradient checkpointing), with two substitutions: the model is a random-weight
   Llama of LLaMA-2-7B's shape (the values of the weights change neither memory nor speed, and no weights need
   downloading), and the data is `--rows` rows of the recipe's kind from ../shared/data;
2. times the selection phase, `trainer.select()`, and records its peak GPU memory;
3. trains 2 optimizer steps on the kept rows (accumulation 1: accumulation adds no memory), then runs one more
   step on a full batch of per_device_train_batch_size x max_length tokens, the largest the recipe can meet,
   and records the peak of training.

The model uses the embedded tokenizer (49,152 tokens; LLaMA-2 has 32,000), so its embeddings and LM head are
0.28 GB larger in bf16 than LLaMA-2-7B's: the figures are slightly high. Results go to
benchmarks/results/recipe-memory.json and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from bench_scoring import RANDOM_MODELS, build_random_model, data_dir  # noqa: E402  (benchmarks/ is the script's folder)

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
RECIPES = {
    "alpaca": REPO / "recipes" / "alpaca" / "llama2-7b_qlora.yaml",
    "wizardlm": REPO / "recipes" / "wizardlm" / "llama2-7b_qlora.yaml",
    "alma": REPO / "recipes" / "alma" / "alma-7b_qlora.yaml",
}
GIB = 2**30


def write_rows(kind: str, rows: int, folder: Path) -> tuple[Path, int]:
    """`rows` rows of the recipe's kind from the shared data, as a JSON Lines file, and how many there are."""
    alpaca = json.loads((data_dir() / "alpaca_subsets" / "llamafactory_alpaca_en_demo.json").read_text(encoding="utf-8"))
    if kind == "alpaca":
        records = [{k: r[k] for k in ("instruction", "input", "output")} for r in alpaca[:rows]]
    elif kind == "wizardlm":
        # WizardLM's columns: one instruction (the input folded in) and one output.
        records = [{"instruction": (r["instruction"] + "\n\n" + r["input"]).strip(), "output": r["output"]}
                   for r in alpaca[:rows]]
    else:
        records = []
        for pair in ("cs-en", "de-en"):
            source = pair.split("-")[0]
            path = data_dir() / "alma" / "human_written_data" / f"{source}en" / f"train.{pair}.json"
            for line in path.read_text(encoding="utf-8").splitlines()[: rows // 2]:
                records.append({"translation": json.loads(line)["translation"], "direction": pair})
    path = folder / f"{kind}.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path, len(records)


def measure(kind: str, model_path: Path, rows: int, work: Path) -> dict:
    from selectit_trl.cli import build_trainer, parse_args

    data, count = write_rows(kind, rows, work)
    argv = ["--config", str(RECIPES[kind]), "--model_name_or_path", str(model_path), "--dataset_name", str(data),
            "--output_dir", str(work / kind), "--max_steps", "2", "--gradient_accumulation_steps", "1",
            "--save_strategy", "no", "--logging_steps", "1", "--report_to", "none", "--disable_tqdm", "true"]
    script_args, training_args, model_args, data_args = parse_args(argv)
    data_args.dataset_directions = None  # the rows are already one file with a direction column
    on_gpu = torch.cuda.is_available()
    trainer = build_trainer(script_args, training_args, model_args, data_args)
    weights = torch.cuda.memory_allocated() / GIB if on_gpu else None

    def reset():
        if on_gpu:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def peaks():
        if not on_gpu:
            return None, None
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / GIB, torch.cuda.max_memory_reserved() / GIB

    reset()
    started = time.perf_counter()
    result = trainer.select()
    select_seconds = time.perf_counter() - started
    select_peak, select_reserved = peaks()

    reset()
    trainer.train()
    train_peak, train_reserved = peaks()

    # One more step on the largest batch the recipe allows, with the optimizer's states already allocated.
    batch, length = training_args.per_device_train_batch_size, training_args.max_length
    model = trainer.model
    model.train()
    ids = torch.randint(100, len(trainer.processing_class), (batch, length), device=model.device)
    reset()
    with trainer.accelerator.autocast():
        loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss
    trainer.accelerator.backward(loss)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad()
    full_peak, full_reserved = peaks()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    summary = json.loads((Path(training_args.output_dir) / "selection" / "summary.json").read_text())
    return {
        "recipe": str(RECIPES[kind].relative_to(REPO)),
        "rows": count,
        "kept": len(result.kept_indices),
        "selection_seconds": select_seconds,
        "scoring_seconds": summary["scoring_seconds"],
        "rows_per_second": count / select_seconds,
        "weights_gib": weights,
        "selection_peak_gib": select_peak,
        "selection_reserved_gib": select_reserved,
        "training_peak_gib": train_peak,
        "training_reserved_gib": train_reserved,
        "full_batch": [batch, length],
        "full_batch_peak_gib": full_peak,
        "full_batch_reserved_gib": full_reserved,
        "trainable_parameters": trainable,
        "lora": [model_args.lora_r, model_args.lora_target_modules],
    }


def child(kind: str, model_path: Path, rows: int, work: Path) -> dict:
    """Measure one recipe in a fresh interpreter, so that no memory of the one before is counted in its peaks."""
    out = work / f"{kind}.json"
    subprocess.run([sys.executable, __file__, "--child", kind, "--model-path", str(model_path), "--rows", str(rows),
                    "--work", str(work), "--out", str(out)], check=True)
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=list(RANDOM_MODELS), default="llama2-7b")
    parser.add_argument("--rows", type=int, default=500, help="rows scored per recipe")
    parser.add_argument("--only", nargs="*", choices=list(RECIPES))
    parser.add_argument("--tokenizer", help="tokenizer folder (default: the embedded model's)")
    parser.add_argument("--child", choices=list(RECIPES), help=argparse.SUPPRESS)
    parser.add_argument("--model-path", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = measure(args.child, Path(args.model_path), args.rows, Path(args.work))
        Path(args.out).write_text(json.dumps(result))
        return
    if args.tokenizer is None:
        from selectit_trl.engine.models import embedded_model_path

        args.tokenizer = embedded_model_path()
    RESULTS.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    model_path = build_random_model(args.shape, args.tokenizer)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.only or list(RECIPES):
            results[kind] = child(kind, model_path, args.rows, Path(tmp))
            print(f"{kind}: {json.dumps(results[kind])}", flush=True)
    report = {"device": device, "shape": args.shape, "torch": torch.__version__, "results": results}
    (RESULTS / f"recipe-memory-{args.shape}.json").write_text(json.dumps(report, indent=2))

    def gib(value):
        return "—" if value is None else f"{value:.1f}"

    print(f"\n{device}, random-weight {args.shape}, {args.rows} rows per recipe\n")
    print("| recipe | weights + LoRA (GiB) | selection peak (GiB) | rows/s | training peak, real rows (GiB) "
          "| full batch | full-batch peak (GiB) | reserved (GiB) |")
    print("|---|---|---|---|---|---|---|---|")
    for kind, r in results.items():
        print(f"| {kind} | {gib(r['weights_gib'])} | {gib(r['selection_peak_gib'])} | {r['rows_per_second']:.1f} "
              f"| {gib(r['training_peak_gib'])} | {r['full_batch'][0]} x {r['full_batch'][1]} "
              f"| {gib(r['full_batch_peak_gib'])} | {gib(r['full_batch_reserved_gib'])} |")


if __name__ == "__main__":
    main()
