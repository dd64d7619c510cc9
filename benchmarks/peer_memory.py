"""Peak memory of scoring with peers: base + two peers against the largest of them alone.

    python benchmarks/peer_memory.py              # about 5 minutes on a 2-core CPU
    python benchmarks/peer_memory.py --rows 40 --repeats 1

Two runs of `SelectiveSFTTrainer.select()`, each in fresh processes, `--repeats` times:

  largest alone   the embedded SmolLM2-135M-Instruct as the model being tuned, no peers
  base + 2 peers  a small random Llama as the model being tuned, with a medium random Llama and SmolLM2-135M
                  as peers, loaded one after the other

Everything is in fp32 (peers with `load_in_4bit: false`), so that resident memory follows parameter counts.
The peak is the kernel's high-water mark of the whole process (VmHWM), loading and releasing included. The
model being tuned stays loaded throughout, since it is trained next; peers are loaded, used and released in
turn. If peers piled up, the second run would peak near the sum of all three models.

Data: the first --rows rows of the Alpaca demo subset in ../shared/data (or $SELECTIT_TRL_DATA).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench_scoring import data_dir  # noqa: E402  (benchmarks/ is the script's folder)

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SHAPES = {  # random Llamas with the embedded tokenizer's vocabulary
    "small": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
    "medium": dict(hidden_size=384, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=6, num_key_value_heads=2),
}


def data_file() -> Path:
    return data_dir() / "alpaca_subsets" / "llamafactory_alpaca_en_demo.json"


def build(shape: str, folder: Path) -> str:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from selectit_trl.engine.models import embedded_model_path

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_path())
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **SHAPES[shape])
    LlamaForCausalLM(config).save_pretrained(folder / shape)
    tokenizer.save_pretrained(folder / shape)
    return str(folder / shape)


def child(base: str, peers: list[str], rows: int, out: Path) -> None:
    """One selection in this process; writes the process's peak resident memory."""
    from datasets import Dataset

    from selectit_trl import SelectiveSFTConfig, SelectiveSFTTrainer

    records = json.loads(data_file().read_text(encoding="utf-8"))[:rows]
    config = SelectiveSFTConfig(
        output_dir=str(out.parent / f"{out.stem}-run"), use_cpu=True, report_to="none", disable_tqdm=True,
        selection_num_prompts=3, selection_overwrite=True,
        selection_peer_models=[{"model": p, "load_in_4bit": False, "dtype": "float32"} for p in peers],
        model_init_kwargs={"dtype": "float32"},
    )
    trainer = SelectiveSFTTrainer(model=base, args=config, train_dataset=Dataset.from_list(records))
    result = trainer.select()
    with open("/proc/self/status", encoding="ascii") as handle:
        peak = next(int(line.split()[1]) for line in handle if line.startswith("VmHWM:")) / 1024
    models = [{"id": m["id"], "num_parameters": m["num_parameters"]} for m in result.summary["models"]]
    out.write_text(json.dumps({"peak_rss_mib": peak, "models": models}))


def measure(name: str, base: str, peers: list[str], rows: int, repeats: int, folder: Path) -> dict:
    runs = []
    for repeat in range(repeats):
        out = folder / f"{name}-{repeat}.json"
        subprocess.run([sys.executable, __file__, "--child", base, *peers, "--rows", str(rows), "--out", str(out)],
                       check=True)
        runs.append(json.loads(out.read_text()))
    peaks = [r["peak_rss_mib"] for r in runs]
    return {"peak_rss_mib": statistics.median(peaks), "runs_mib": peaks, "models": runs[0]["models"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1:], args.rows, Path(args.out))
        return
    from selectit_trl.engine.models import embedded_model_path

    largest = embedded_model_path()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        small, medium = build("small", folder), build("medium", folder)
        results = {
            "largest alone": measure("alone", largest, [], args.rows, args.repeats, folder),
            "base + 2 peers": measure("peers", small, [medium, largest], args.rows, args.repeats, folder),
        }
    RESULTS.mkdir(parents=True, exist_ok=True)
    ratio = results["base + 2 peers"]["peak_rss_mib"] / results["largest alone"]["peak_rss_mib"]
    (RESULTS / "peer-memory.json").write_text(json.dumps({"rows": args.rows, "results": results, "ratio": ratio}, indent=2))
    print(f"\n{args.rows} rows, K = 3, fp32, medians of {args.repeats} fresh processes\n")
    print("| run | models (parameters) | peak RSS (MiB) | runs |")
    print("|---|---|---|---|")
    for name, r in results.items():
        models = ", ".join(f"{Path(m['id']).name} ({m['num_parameters'] / 1e6:.1f}M)" for m in r["models"])
        print(f"| {name} | {models} | {r['peak_rss_mib']:.0f} | {', '.join(f'{p:.0f}' for p in r['runs_mib'])} |")
    print(f"\nbase + 2 peers / largest alone: {ratio:.3f}")


if __name__ == "__main__":
    main()
