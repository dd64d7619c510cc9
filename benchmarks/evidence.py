"""Our own small-scale Table 1: which selection strategy trains the better model, on a pool with known bad rows.

    python benchmarks/evidence.py                 # hours on a 2-core CPU; resumable: run it again to go on
    python benchmarks/evidence.py --seeds 1 --pool-rows 300 --max-steps 5 --held-out-rows 40   # a quick look

The pool is real instruction data from ../shared/data (or $SELECTIT_TRL_DATA): the 999 Alpaca-format rows of
LLaMA-Factory's demo file (GPT-4 answers) and the 1,000 human-written Dolly rows that SelectLLM holds out. A
fixed share of it (30% by default, drawn with a fixed seed) is corrupted the ways real data goes wrong, in four
equal parts:

- swapped: the response is another corrupted row's response;
- truncated: the response is cut mid-sentence, after 20-50% of its words;
- empty: the response is a reply with no content ("Sure, here you go.");
- wrong language: the response is a passage of German, Russian, Chinese or Czech from ALMA's human-written
  parallel data, of about the original's length.

Which rows are corrupted is written beside the pool, never into it: the strategies see only the rows.

Then `selectit-trl compare` (the real command, in its own process) selects with each strategy at ratio 0.2,
trains one LoRA adapter per strategy and seed from the embedded SmolLM2-135M-Instruct for the same number of
optimizer steps, and evaluates each on the 805 AlpacaEval instructions with GPT-4's reference outputs (TRL's
mean token loss on the responses). The table goes to docs/evidence.md, the figures to
benchmarks/results/evidence.json. The work folder (default benchmarks/results/evidence-work, not committed)
keeps the score store and every finished run, so a second call resumes where the first stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from doc_section import replace_section

from selectit_trl.engine.hardware import cpu_kind

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "evidence.md"
RESULTS = REPO / "benchmarks" / "results" / "evidence.json"
START, END = "<!-- evidence:start -->", "<!-- evidence:end -->"
STRATEGIES = "selectit,ifd,rifd,selectit+ifd,random,all"
KINDS = ("swapped", "truncated", "empty", "wrong language")
# Replies that answer nothing, as scraped or badly filtered data holds them.
CONTENT_FREE = (
    "Sure, here you go.",
    "I'm not sure.",
    "N/A",
    "Here is the answer to your question.",
    "As an AI language model, I can help with that.",
    "...",
    "Thank you for your question!",
    "Yes.",
)
FOREIGN = {  # ALMA human-written training text, one sentence per line
    "German": "alma/human_written_data/deen/train.de-en.de",
    "Russian": "alma/human_written_data/ruen/train.ru-en.ru",
    "Chinese": "alma/human_written_data/zhen/train.zh-en.zh",
    "Czech": "alma/human_written_data/csen/train.cs-en.cs",
}


def data_root() -> Path:
    root = Path(os.environ.get("SELECTIT_TRL_DATA") or REPO.parent / "shared" / "data")
    if not (root / "alpaca_subsets").is_dir():
        sys.exit(f"{root} has no alpaca_subsets/: set SELECTIT_TRL_DATA or put ../shared/data beside the checkout.")
    return root


def dolly_rows(root: Path) -> list[dict]:
    """SelectLLM's Dolly split: prompts in an Alpaca layout (indented headers) and the human answers beside them."""
    prompts = json.loads((root / "dolly_subset" / "prompt_format.json").read_text(encoding="utf-8"))
    answers = json.loads((root / "dolly_subset" / "test_gts.json").read_text(encoding="utf-8"))
    layout = re.compile(r"^### Instruction:\s*(.*?)\s*### Input:\s*(.*?)\s*### Response:\s*$", re.S)
    rows = []
    for prompt, answer in zip(prompts, answers, strict=True):
        found = layout.match(prompt)
        if found is None:
            sys.exit(f"A Dolly prompt is not in the expected layout: {prompt[:120]!r}")
        rows.append({"instruction": found.group(1), "input": found.group(2), "output": answer.strip()})
    return rows


def pool_rows(root: Path) -> tuple[list[dict], list[str]]:
    """The pool's rows, and for each the source of its response: "gpt4" (Alpaca-GPT4) or "human" (Dolly)."""
    alpaca = json.loads((root / "alpaca_subsets" / "llamafactory_alpaca_en_demo.json").read_text(encoding="utf-8"))
    rows = [({"instruction": r["instruction"], "input": r.get("input", ""), "output": r["output"]}, "gpt4") for r in alpaca]
    rows += [(r, "human") for r in dolly_rows(root)]
    kept = [(r, source) for r, source in rows if r["instruction"].strip() and r["output"].strip()]
    return [r for r, _ in kept], [source for _, source in kept]


def truncate(text: str, draw: random.Random) -> str:
    """The first 20-50% of the words (of at least 12), ending on a word that does not close a sentence."""
    words = text.split()
    cut = max(3, int(len(words) * draw.uniform(0.2, 0.5)))
    while cut > 3 and words[cut - 1][-1:] in ".!?:;":
        cut -= 1
    return " ".join(words[:cut])


def foreign_passage(lines: list[str], words: int, draw: random.Random, separator: str) -> str:
    """Consecutive lines of a foreign text, about as long as the answer they replace (at most ~200 words)."""
    start = draw.randrange(len(lines) - 50)
    passage, length = [], 0
    for line in lines[start:]:
        passage.append(line.strip())
        length += max(1, len(line) // 6)  # roughly a word per six characters, Chinese included
        if length >= min(words, 200):
            break
    return separator.join(passage)


def corrupt(rows: list[dict], share: float, root: Path, seed: int) -> list[str]:
    """Corrupts `share` of the rows in place, four kinds in equal parts; returns each row's label."""
    draw = random.Random(seed)
    labels = ["clean"] * len(rows)
    order = list(range(len(rows)))
    draw.shuffle(order)
    per_kind = int(len(rows) * share) // len(KINDS)
    foreign = {name: [line for line in (root / path).read_text(encoding="utf-8").splitlines() if line.strip()]
               for name, path in FOREIGN.items()}
    taken = iter(order)
    long_enough = [i for i in order if len(rows[i]["output"].split()) >= 12]
    for i in long_enough[:per_kind]:
        rows[i]["output"] = truncate(rows[i]["output"], draw)
        labels[i] = "truncated"
    for kind in ("swapped", "empty", "wrong language"):
        chosen = []
        while len(chosen) < per_kind:
            i = next(taken)
            if labels[i] == "clean":
                chosen.append(i)
        for i in chosen:
            labels[i] = kind
        if kind == "swapped":  # a derangement: every chosen row gets another chosen row's answer
            answers = [rows[i]["output"] for i in chosen]
            for k, i in enumerate(chosen):
                rows[i]["output"] = answers[(k + 1) % len(chosen)]
        elif kind == "empty":
            for i in chosen:
                rows[i]["output"] = draw.choice(CONTENT_FREE)
        else:
            names = sorted(foreign)
            for k, i in enumerate(chosen):
                language = names[k % len(names)]
                separator = "" if language == "Chinese" else " "
                rows[i]["output"] = foreign_passage(foreign[language], len(rows[i]["output"].split()), draw, separator)
    return labels


def held_out_rows(root: Path, limit: int | None) -> list[dict]:
    """The 805 AlpacaEval instructions with GPT-4's outputs as the references."""
    rows = json.loads((root / "alpaca_eval" / "gpt4_model_outputs.json").read_text(encoding="utf-8"))
    rows = [{"instruction": r["instruction"], "input": "", "output": r["output"]} for r in rows]
    return rows[:limit] if limit else rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


RECIPE = """\
# Written by benchmarks/evidence.py: the quickstart's model settings on the corrupted pool.
load_in_4bit: {load_in_4bit}
dtype: {dtype}
use_peft: true
lora_r: 8
lora_alpha: 16
lora_dropout: 0.05
lora_target_modules: [q_proj, k_proj, v_proj, o_proj]
dataset_name: {pool}
output_dir: {output}
max_steps: {max_steps}
per_device_train_batch_size: {batch}
per_device_eval_batch_size: 8
learning_rate: 2.0e-4
lr_scheduler_type: cosine
warmup_steps: 2
max_length: {max_length}
gradient_checkpointing: false
logging_steps: 5
save_strategy: "no"
report_to: none
use_cpu: true
seed: 42
selection_ratio: 0.2
selection_probe: false
selection_num_prompts: 5
selection_alpha: 0.2
selection_score_max: 5
selection_normalization: paper
selection_prompt_layout: sample_first
"""


# The base model's held-out loss, for reference: a trainer built as compare builds them, evaluated before any step
# (its LoRA adapter starts as the identity). It reads `all`'s selection, so nothing is scored again.
BASE_EVAL = """
import dataclasses, json, sys
from selectit_trl.arguments import parse_args
from selectit_trl.cli import build_trainer
from selectit_trl.data.loading import load_datasets
recipe, held_out, output_dir, selection = sys.argv[1:]
script, training, model, data = parse_args(["--config", recipe])
held, _ = load_datasets(dataclasses.replace(script, dataset_name=held_out, dataset_config=None,
                                            dataset_train_split="train"))
training = dataclasses.replace(training, output_dir=output_dir, selection_from=selection)
print(json.dumps(build_trainer(script, training, model, data, eval_dataset=held).evaluate()))
"""


def base_model_loss(recipe: Path, held_out: Path, work: Path, env: dict) -> float:
    saved = work / "base_eval.json"
    if not saved.is_file():
        done = subprocess.run([sys.executable, "-c", BASE_EVAL, str(recipe), str(held_out), str(work / "base"),
                               str(work / "run" / "compare" / "all")], cwd=REPO, env=env, check=True,
                              capture_output=True, text=True)
        saved.write_text(done.stdout.strip().splitlines()[-1] + "\n", encoding="utf-8")
    return json.loads(saved.read_text(encoding="utf-8"))["eval_loss"]


def kept_indices(selection: Path) -> list[int]:
    with open(selection / "scores.jsonl", encoding="utf-8") as handle:
        return [record["index"] for record in map(json.loads, handle) if record["selected"]]


def table(results: dict, labels: list[str], clean_gpt4: list[bool], strategies: list[str]) -> list[dict]:
    """One row per strategy; `clean_gpt4` marks the pool's undamaged rows whose response is GPT-4's."""
    rows = []
    corrupted = sum(label != "clean" for label in labels)
    for strategy in strategies:
        entry = results["strategies"].get(strategy)
        if entry is None:
            continue
        selection = Path(results["folder"]) / strategy / "selection"
        kept = kept_indices(selection)
        summary = json.loads((selection / "summary.json").read_text(encoding="utf-8"))
        by_kind = {kind: sum(labels[i] == kind for i in kept) for kind in KINDS}
        rows.append({
            "strategy": strategy, "seeds": entry["seeds"], "rows_kept": len(kept),
            "eval_loss": entry["eval_loss"], "train_loss": entry["train_loss"],
            "corrupted_kept": sum(by_kind.values()), "corrupted_kept_by_kind": by_kind,
            "corrupted_expected_at_random": corrupted * len(kept) / len(labels),
            # The held-out references are GPT-4's, so GPT-4's own responses lower the loss by their style alone.
            "clean_gpt4_kept": sum(clean_gpt4[i] for i in kept),
            "clean_gpt4_expected_at_random": sum(clean_gpt4) * len(kept) / len(labels),
            "scoring_seconds": summary.get("scoring_seconds") or 0.0,
            # The median over seeds: one run slowed by other work on the machine moves a mean, not a median.
            "training_seconds": statistics.median(r["seconds"] for key, r in results["runs"].items()
                                                  if key.split("/")[0] == strategy),
        })
    return rows


def markdown(rows: list[dict], meta: dict) -> str:
    kinds = ", ".join(f"{meta['corrupted_by_kind'][k]} {k}" for k in KINDS)
    lines = [
        f"Measured with `{meta['command']}` on {meta['machine']}, {meta['wall_seconds'] / 60:.0f} minutes in all.",
        f"Pool: {meta['pool_rows']} rows, of which {meta['corrupted']} corrupted "
        f"({kinds}). Held out: {meta['held_out_rows']} "
        f"AlpacaEval instructions with GPT-4's outputs. Each adapter: {meta['max_steps']} steps of "
        f"{meta['batch']} rows, max_length {meta['max_length']}; mean ± std over {meta['seeds']} seeds. "
        f"Of the clean rows, {meta['clean_gpt4_rows']} have GPT-4's responses (Alpaca-GPT4) and the rest human ones "
        "(Dolly).",
        "",
        "| Strategy | Rows kept | Held-out loss | Train loss | Corrupted kept (swapped/truncated/empty/language) "
        "| Clean GPT-4 rows kept | Scoring s | Training + evaluation s per seed (median) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines.append(f"| untrained (the base model) | - | {meta['base_eval_loss']:.4f} | - | - | - | - | - |")
    for r in rows:
        kinds = "/".join(str(r["corrupted_kept_by_kind"][k]) for k in KINDS)
        lines.append(
            f"| {r['strategy']} | {r['rows_kept']} | {r['eval_loss']['mean']:.4f} ± {r['eval_loss']['std']:.4f} "
            f"| {r['train_loss']['mean']:.4f} ± {r['train_loss']['std']:.4f} | {r['corrupted_kept']} ({kinds}) "
            f"| {r['clean_gpt4_kept']} | {r['scoring_seconds']:.0f} | {r['training_seconds']:.0f} |")
    subset = next((r for r in rows if r["strategy"] != "all"), None)
    if subset is not None:
        kept = subset["rows_kept"]
        lines += ["", f"At random, {kept} rows hold {subset['corrupted_expected_at_random']:.0f} corrupted rows and "
                  f"{subset['clean_gpt4_expected_at_random']:.0f} clean GPT-4 rows on average."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=REPO / "benchmarks" / "results" / "evidence-work")
    parser.add_argument("--strategies", default=STRATEGIES)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--corrupt", type=float, default=0.3, help="the share of the pool to corrupt")
    parser.add_argument("--pool-rows", type=int, help="use only this many rows of the pool (a quick look)")
    parser.add_argument("--held-out-rows", type=int, help="use only this many held-out rows (a quick look)")
    parser.add_argument("--max-steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=384)
    parser.add_argument("--dtype", default="auto", help="the recipe's dtype (auto: as the quickstart)")
    parser.add_argument("--load-in-4bit", action=argparse.BooleanOptionalAction, default=True,
                        help="QLoRA, as the quickstart (and, on this CPU, faster than bf16 LoRA)")
    options = parser.parse_args()
    root = data_root()
    work = options.work
    work.mkdir(parents=True, exist_ok=True)
    rows, sources = pool_rows(root)
    if options.pool_rows:
        picked = random.Random(1).sample(range(len(rows)), options.pool_rows)
        rows, sources = [rows[i] for i in picked], [sources[i] for i in picked]
    labels = corrupt(rows, options.corrupt, root, seed=0)
    clean_gpt4 = [source == "gpt4" and label == "clean" for source, label in zip(sources, labels)]
    pool, held_out, recipe = work / "pool.jsonl", work / "held_out.jsonl", work / "recipe.yaml"
    write_jsonl(pool, rows)
    (work / "labels.json").write_text(json.dumps(labels) + "\n", encoding="utf-8")
    write_jsonl(held_out, held_out_rows(root, options.held_out_rows))
    recipe.write_text(RECIPE.format(pool=pool, output=work / "run", max_steps=options.max_steps,
                                    batch=options.batch, max_length=options.max_length,
                                    load_in_4bit=str(options.load_in_4bit).lower(), dtype=options.dtype), encoding="utf-8")
    command = [sys.executable, "-m", "selectit_trl.cli", "compare", "--config", str(recipe),
               "--eval_dataset_name", str(held_out), "--compare_strategies", options.strategies,
               "--seeds", str(options.seeds)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    try:
        subprocess.run(command, cwd=REPO, env=env, check=True)
    finally:  # an interrupted call's time counts too, so that a resumed run reports its whole cost
        wall = time.perf_counter() - started + previous_wall(work)
        (work / "wall_seconds").write_text(f"{wall}\n", encoding="utf-8")
    folder = work / "run" / "compare"
    results = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    results["folder"] = str(folder)
    strategies = [s.strip() for s in options.strategies.split(",")]
    measured = table(results, labels, clean_gpt4, strategies)
    argv = " ".join(sys.argv[1:])
    meta = {
        "command": f"python benchmarks/evidence.py{' ' + argv if argv else ''}",
        "machine": f"{os.cpu_count()} CPU cores ({cpu_kind()})",
        "wall_seconds": wall,
        "pool_rows": len(rows), "corrupted": sum(label != "clean" for label in labels),
        "corrupted_by_kind": {k: labels.count(k) for k in KINDS}, "clean_gpt4_rows": sum(clean_gpt4),
        "held_out_rows": len(held_out_rows(root, options.held_out_rows)), "max_steps": options.max_steps, "batch": options.batch,
        "max_length": options.max_length, "seeds": options.seeds,
        "base_eval_loss": base_model_loss(recipe, held_out, work, env) if "all" in strategies else math.nan,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"meta": meta, "results": measured}, indent=1) + "\n", encoding="utf-8")
    text = markdown(measured, meta)
    print(text)
    if not (options.pool_rows or options.held_out_rows):
        replace_section(DOC, START, END, text)


def previous_wall(work: Path) -> float:
    """The time earlier calls spent."""
    path = work / "wall_seconds"
    return float(path.read_text()) if path.is_file() else 0.0


if __name__ == "__main__":
    main()
