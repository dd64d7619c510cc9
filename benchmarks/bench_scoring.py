"""Scoring throughput against the released procedure, in one run: `make bench`.

On the first 200 rows of the Alpaca demo subset, with K = 5, it times:

  a  released   the released scripts' procedure: prompt_first, one sequence per forward pass, logits at every
                position; whole rating prompts (benchmarks/whole_prompts.txt)
  b  pf         our prompt_first path, same prompts: batched by token budget, logits at the last position
  c  sf         our sample_first path with the default prompts (shared preamble, short requests)
  c  sf-whole   our sample_first path with the whole prompts of (a) after the sample
  e  sf-bf16    (c) in bf16
  d  default    the default user configuration: (c) on the model loaded in 4-bit NF4, with the compute dtype that
                `dtype: auto` picks for the hardware (bf16 on a CPU with AMX or AVX512-BF16, fp32 on others)
     sf-bf16-compiled, default-compiled   the same two with `selection_compile` (regional torch.compile)
     default-no-preamble   (d) with the leading tokens every sample shares read in each row, not once per run
                (not in a full run; --only default default-no-preamble measures what the preamble saves)
     default-padded   (d) with its batches' padding run through the layers, as before padding-free batches
                (not in a full run; --only default default-padded measures what padding-free batches save)

Every configuration runs in a fresh process (so its peak RSS is its own), times tokenisation and scoring
together, and repeats; medians are reported. The matmul peak of each dtype is measured here too, for the model
FLOP utilisation. Each path is also compared with our unbatched path (one whole sequence per forward pass) of
the same layout and dtype. On a shared machine whose speed drifts, `--rounds N --repeats 1` runs the
configurations in turn N times and also reports each round's ratio to (a), taken minutes apart.

    python benchmarks/bench_scoring.py                    # everything, ~1 hour on a 2-core CPU
    python benchmarks/bench_scoring.py --only sf default  # some configurations
    python benchmarks/bench_scoring.py --profile sf       # where the time goes, per operator
    python benchmarks/bench_scoring.py --sweep sf-bf16 --rows 100   # samples/s at each token budget
    python benchmarks/bench_scoring.py --memory-only      # memory as N grows
    python benchmarks/bench_scoring.py --fidelity         # how far each quantisation moves the ranking from fp32
    python benchmarks/bench_scoring.py --device cuda --random-model llama-1b --memory-rows 0   # on a GPU
    MKL_ENABLE_INSTRUCTIONS=AVX2 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 \
        python benchmarks/bench_scoring.py --only sf default  # as on an AVX2-only CPU, on an AMX one (docs/performance.md)

`--random-model` scores with a Llama-architecture model of random weights built from a configuration (the
embedded model's tokenizer and vocabulary), so that a GPU can be measured at a realistic size without
downloading weights. Throughput does not depend on the weights' values; the probabilities themselves mean
nothing, but their agreement between paths does.

Data comes from $SELECTIT_TRL_DATA, else ../shared/data. Results: benchmarks/results/scoring.json and a
Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WHOLE_PROMPTS = REPO / "benchmarks" / "whole_prompts.txt"
RESULTS = REPO / "benchmarks" / "results"
K = 5

# name: (layout, prompts, precision, engine); engine "compiled" is ours with selection_compile
CONFIGS = {
    "released": ("prompt_first", "whole", "fp32", "released"),
    "pf": ("prompt_first", "whole", "fp32", "ours"),
    "sf": ("sample_first", "default", "fp32", "ours"),
    "sf-whole": ("sample_first", "whole", "fp32", "ours"),
    "sf-bf16": ("sample_first", "default", "bf16", "ours"),
    "default": ("sample_first", "default", "4bit", "ours"),
    "sf-bf16-compiled": ("sample_first", "default", "bf16", "compiled"),
    "default-compiled": ("sample_first", "default", "4bit", "compiled"),
    # The default without the preamble (the leading tokens all samples share, run once): what it saves.
    "default-no-preamble": ("sample_first", "default", "4bit", "no-preamble"),
    # The default with padded rows through every layer: what padding-free batches save.
    "default-padded": ("sample_first", "default", "4bit", "padded"),
    # Other quantisations, for --fidelity only: NF4 with nested quantisation (as peers load), FP4, LLM.int8.
    "sf-nf4-nested": ("sample_first", "default", "4bit-nested", "ours"),
    "sf-fp4": ("sample_first", "default", "fp4", "ours"),
    "sf-int8": ("sample_first", "default", "int8", "ours"),
}
MAIN = ["released", "pf", "sf", "sf-whole", "sf-bf16", "default", "sf-bf16-compiled", "default-compiled"]
FIDELITY = ["sf", "sf-bf16", "default", "sf-nf4-nested", "sf-fp4", "sf-int8"]
LOW_PRECISION = ("bf16", "4bit", "4bit-nested", "fp4", "int8")  # in bf16, but for "4bit" (compute_dtype below)


def compute_dtype(precision: str, device: str) -> torch.dtype:
    """The dtype a configuration's matmuls run in: "4bit" is the default configuration, so its compute dtype is
    the one `dtype: auto` picks for this hardware; the other low-precision ones compute in bf16."""
    from selectit_trl.engine import hardware

    if precision == "4bit":
        return hardware.auto_compute_dtype(torch.device(device).type)
    return torch.bfloat16 if precision in LOW_PRECISION else torch.float32


def data_dir() -> Path:
    return Path(os.environ.get("SELECTIT_TRL_DATA", REPO.parent / "shared" / "data"))


def load_samples(path: Path, rows: int):
    from datasets import Dataset

    from selectit_trl.data.formats import rating_samples

    with open(path, encoding="utf-8") as handle:
        records = json.load(handle)[:rows]
    if len(records) < rows:
        raise SystemExit(f"{path} holds only {len(records)} rows, {rows} asked for.")
    return rating_samples(Dataset.from_list(records), None)


# Llama-architecture shapes for --random-model, all with the embedded tokenizer's 49,152-token vocabulary.
# llama-1b follows Llama-3.2-1B (hidden 2048, 16 layers, GQA with 8 KV heads, MLP 8192, tied embeddings): 1.07B
# parameters. llama2-7b is LLaMA-2-7B's shape, as in the 7B recipes (6.88B with this vocabulary). llama-tiny is
# for trying the scripts out on a CPU in seconds.
RANDOM_MODELS = {
    "llama-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=8, tie_word_embeddings=True),
    "llama2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32, tie_word_embeddings=False),
    "llama-tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, tie_word_embeddings=True),
}


def build_random_model(name: str, tokenizer_path: str, out: Path | None = None) -> Path:
    """Save a random-weight Llama of the named shape (bf16, with the tokenizer) once, so every configuration loads
    the same weights through from_pretrained, 4-bit quantisation included. Built on the GPU when there is one."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    out = out or RESULTS / f"random-{name}"
    if (out / "config.json").is_file():
        return out
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=4096,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **RANDOM_MODELS[name])
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out


def load_model(precision: str, model_path: str, device: str):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    placement = {"device_map": {"": device}} if device != "cpu" else {}
    compute = compute_dtype(precision, device)
    quantizations = {
        "4bit": dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute),
        "4bit-nested": dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
                            bnb_4bit_use_double_quant=True),
        "fp4": dict(load_in_4bit=True, bnb_4bit_quant_type="fp4", bnb_4bit_compute_dtype=torch.bfloat16),
        "int8": dict(load_in_8bit=True),
    }
    if precision in quantizations:
        quantization = BitsAndBytesConfig(**quantizations[precision])
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=compute, quantization_config=quantization,
                                                     **placement)
    else:
        model = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=torch.float32 if precision == "fp32" else torch.bfloat16, **placement
        )
    return model.eval()


def _return_freed_memory() -> None:
    """Give memory freed while loading back to the OS (glibc), so that the resident size before scoring does not
    depend on how loading happened to fragment the heap: it varied by 300 MiB between identical starts."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark, so the next reading covers scoring only (Linux)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


@torch.no_grad()
def released_probs(model, tokenizer, samples, lines, token_ids) -> tuple[np.ndarray, int]:
    """The released procedure: each request alone, unpadded, logits over the vocabulary at every position."""
    from selectit_trl.engine.prompts import render_prompt_first

    out = np.zeros((len(samples), len(lines), len(token_ids)))
    tokens = 0
    for i, sample in enumerate(samples):
        for k, line in enumerate(lines):
            ids = tokenizer(render_prompt_first(sample, line), return_tensors="pt").input_ids.to(model.device)
            logits = model(input_ids=ids, logits_to_keep=0).logits
            out[i, k] = torch.softmax(logits[0, -1].float(), dim=-1)[token_ids].double().cpu().numpy()
            tokens += ids.shape[1]
    return out, tokens


def processed_tokens(requests, shared: bool, preamble: bool = True) -> int:
    """Real tokens a path runs through the model (padding not counted)."""
    from selectit_trl.engine.preamble import common_leading_tokens
    from selectit_trl.engine.scoring import packed_width

    if shared:
        # The leading tokens all prefixes share run once, as the preamble (engine/preamble.py).
        once = common_leading_tokens([r.prefix for r in requests]) * (len(requests) - 1) if preamble else 0
        return sum(packed_width(r) for r in requests) - once
    return sum(len(r.prefix) + len(s) for r in requests for s in r.suffixes)


def setup(name: str, data: Path, rows: int, model_path: str, device: str):
    """Samples, tokenizer, prompts and model of one configuration, loaded as the timed runs use them."""
    from transformers import AutoTokenizer

    from selectit_trl.engine.prompts import load_prompts

    layout, prompt_set, precision, engine = CONFIGS[name]
    samples = load_samples(data, rows)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    prompts = load_prompts(K, 5, prompts_file=WHOLE_PROMPTS if prompt_set == "whole" else None)
    return samples, tokenizer, prompts, load_model(precision, model_path, device)


def run_config(name: str, data: Path, rows: int, repeats: int, reference_rows: int, budget: int | None, save: Path | None,
               model_path: str, device: str) -> dict:
    """One configuration in this process: warm up, time `repeats` runs, then compare with the unbatched path."""
    from selectit_trl.engine.batching import default_max_batch_tokens
    from selectit_trl.engine.models import compiled_blocks, scoring_mode
    from selectit_trl.engine.prompts import build_requests, score_token_ids
    from selectit_trl.engine.scoring import can_share_prefixes, last_token_probs, score_requests

    layout, prompt_set, precision, engine = CONFIGS[name]
    samples, tokenizer, prompts, model = setup(name, data, rows, model_path, device)
    token_ids, pad = score_token_ids(tokenizer, 5), tokenizer.pad_token_id
    on_gpu = device.startswith("cuda")

    def once(subset):
        if engine == "released":
            return released_probs(model, tokenizer, subset, prompts.whole(), token_ids)
        requests = build_requests(subset, prompts, tokenizer, layout)
        preamble = engine != "no-preamble"
        probs = score_requests(model, requests, token_ids, pad, max_batch_tokens=budget, progress=False,
                               share_preamble=preamble, padding_free=engine != "padded")
        shared = layout == "sample_first" and can_share_prefixes(model)
        return probs, processed_tokens(requests, shared, preamble)

    compiled = engine == "compiled"
    with scoring_mode(model):
        with compiled_blocks(model, enabled=compiled):
            # Warm-up: first-call allocations and kernel selection. A compiled model warms up on every row, so that
            # its compiles (one per kind of batch) happen here; that first run's time is reported too.
            started = time.perf_counter()
            once(samples if compiled else samples[:4])
            first_seconds = time.perf_counter() - started
            _return_freed_memory()
            rss_before = _status_kib("VmRSS")
            peak_reset = reset_peak_rss()
            if on_gpu:
                torch.cuda.reset_peak_memory_stats()
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                probs, tokens = once(samples)
                times.append(time.perf_counter() - started)
            peak = _status_kib("VmHWM")
            gpu_peak = torch.cuda.max_memory_allocated() / 2**20 if on_gpu else None
        reference_difference = None
        if reference_rows:
            # Our unbatched path for the same layout and dtype: each whole sequence alone, not compiled.
            requests = build_requests(samples[:reference_rows], prompts, tokenizer, layout)
            unbatched = np.array(
                [[last_token_probs(model, [r.sequence(k)], token_ids, pad)[0] for k in range(K)] for r in requests]
            )
            reference_difference = float(np.abs(probs[:reference_rows] - unbatched).max())
    if save:
        np.save(save, probs)
    return {
        "name": name,
        "layout": layout,
        "prompts": prompt_set,
        "precision": precision,
        "compute_dtype": str(compute_dtype(precision, device)).removeprefix("torch."),
        "rows": rows,
        "repeats": repeats,
        "seconds": times,
        "median_seconds": statistics.median(times),
        "warmup_seconds": first_seconds,
        "warmup_rows": len(samples) if compiled else 4,
        "tokens": tokens,
        "rss_before_mib": rss_before / 1024,
        "peak_rss_mib": peak / 1024,
        "peak_covers": "scoring only" if peak_reset else "whole process",
        "peak_gpu_mib": gpu_peak,
        "device": torch.cuda.get_device_name() if on_gpu else "cpu",
        "max_difference_from_unbatched": reference_difference,
        "reference_rows": reference_rows,
        "budget": budget or default_max_batch_tokens(model),
    }


def matmul_peak(dtype: torch.dtype, device: str = "cpu", repeats: int = 7) -> float:
    """Median GFLOP/s of a square matmul: the most this device gives a dense product of this dtype."""
    size = 2048 if device == "cpu" else 8192
    a, b = (torch.randn(size, size, dtype=dtype, device=device) for _ in range(2))
    synchronize = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(2):
        a @ b
    rates = []
    for _ in range(repeats):
        synchronize()
        started = time.perf_counter()
        a @ b
        synchronize()
        rates.append(2 * size**3 / (time.perf_counter() - started) / 1e9)
    return statistics.median(rates)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    return float(np.corrcoef(rx, ry)[0, 1])


def kept_overlap(x: np.ndarray, y: np.ndarray, ratio: float = 0.2) -> float:
    """Share of the rows kept under one set of scores that the other keeps too (the default ratio)."""
    from selectit_trl.selection import ranking

    a, b = (set(ranking.select(s, ratio, None).tolist()) for s in (x, y))
    return len(a & b) / len(a)


def selectit_scores(probs: np.ndarray) -> np.ndarray:
    from selectit_trl.strategies import reflection

    token = reflection.token_scores(reflection.normalize(probs, "paper"))
    return reflection.sentence_scores(token, 0.2)


def ranking_change(probs: np.ndarray, reference: np.ndarray) -> dict:
    """How far one set of rating probabilities moves the selection from a reference set of the same rows."""
    scores, reference_scores = selectit_scores(probs), selectit_scores(reference)
    return {"max_difference": float(np.abs(probs - reference).max()), "spearman": spearman(scores, reference_scores),
            "kept_overlap": kept_overlap(scores, reference_scores)}


def fidelity(data: Path, rows: int, budget: int | None, model_path: str, device: str) -> None:
    """Each precision of FIDELITY against fp32, on the same rows, and how much the ranking moves with the wording of
    the prompts alone: fp32 scores from two of the K prompts against those from the other three."""
    probs = {}
    for name in FIDELITY:
        r = child(name, rows, 1, budget, data, 0, f"fidelity-{name}", model_path, device)
        probs[name] = np.load(RESULTS / f"fidelity-{name}.npy")
        print(f"{name}: {r['median_seconds']:.1f} s", flush=True)
    changes = {name: ranking_change(probs[name], probs["sf"]) for name in FIDELITY if name != "sf"}

    fp32 = probs["sf"]  # [N, K, S]: selectit_scores of a slice over K scores with those prompts alone
    floor = {"two_prompts_vs_three": spearman(selectit_scores(fp32[:, [0, 1]]), selectit_scores(fp32[:, [2, 3, 4]])),
             "leave_one_prompt_out": [spearman(selectit_scores(fp32), selectit_scores(np.delete(fp32, k, axis=1)))
                                      for k in range(K)]}
    (RESULTS / "fidelity.json").write_text(json.dumps({"rows": rows, "changes": changes, "prompt_wording": floor}, indent=2))
    print()
    print("| config | dtype | max prob. difference | Spearman of scores | top-20% kept by both |")
    print("|---|---|---|---|---|")
    for name, change in changes.items():
        print(f"| {name} | {CONFIGS[name][2]} | {change['max_difference']:.3f} | {change['spearman']:.3f} "
              f"| {change['kept_overlap']:.1%} |")
    print()
    print(json.dumps(floor, indent=2))


def child(name: str, rows: int, repeats: int, budget: int | None, data: Path, reference_rows: int, tag: str,
          model_path: str, device: str) -> dict:
    """Run one configuration in a fresh interpreter and read back its result."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{tag}.json"
    command = [sys.executable, __file__, "--child", name, "--rows", str(rows), "--data", str(data),
               "--repeats", str(repeats), "--reference-rows", str(reference_rows),
               "--save", str(RESULTS / f"{tag}.npy"), "--out", str(out), "--model-path", model_path, "--device", device]
    if budget:
        command += ["--budget", str(budget)]
    subprocess.run(command, check=True)
    return json.loads(out.read_text())


def table(results: dict, peaks: dict, parameters: int) -> str:
    base = results["released"]
    base_rate = base["rows"] / base["median_seconds"]
    last_position_gain = (results["pf"]["rows"] / results["pf"]["median_seconds"]) / base_rate if "pf" in results else None
    lines = [
        "| config | layout | prompts | dtype | samples/s | tokens/s | × (a) | token bound | bound | share of bound | peak RSS (MiB) | peak GPU (MiB) | MFU | max diff vs unbatched |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        if name.startswith("memory"):
            continue
        rate = r["rows"] / r["median_seconds"]
        speedup = rate / base_rate
        token_bound = base["tokens"] / r["tokens"]
        # The bound of a path: fewer tokens (prefix sharing), times the last-position gain (b) measures over (a).
        bound = token_bound * (last_position_gain if (last_position_gain and name != "released") else 1.0)
        peak = peaks["bf16" if r.get("compute_dtype", "bfloat16") == "bfloat16" and r["precision"] in LOW_PRECISION
                     else "fp32"]
        mfu = 2 * parameters * r["tokens"] / r["median_seconds"] / (peak * 1e9)
        diff = r["max_difference_from_unbatched"]
        if name == "pf" and "released" in results:
            diff = float(np.abs(np.load(RESULTS / "pf.npy") - np.load(RESULTS / "released.npy")).max())
        lines.append(
            f"| {name} | {r['layout']} | {r['prompts']} | {r['precision']}"
            f"{', ' + r['compute_dtype'] + ' compute' if r['precision'] == '4bit' else ''} | {rate:.2f} | {r['tokens'] / r['median_seconds']:.0f} "
            f"| {speedup:.2f} | {token_bound:.2f} | {bound:.2f} | {speedup / bound:.0%} | {r['peak_rss_mib']:.0f} "
            f"| {'—' if r.get('peak_gpu_mib') is None else format(r['peak_gpu_mib'], '.0f')} | {'—' if math.isnan(mfu) else format(mfu, '.0%')} "
            f"| {'—' if diff is None else f'{diff:.1e}'} |"
        )
    return "\n".join(lines)


def profile(name: str, data: Path, rows: int, budget: int | None, model_path: str, device: str) -> None:
    """Per-operator CPU time of one scoring run of `name`."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from selectit_trl.engine.models import compiled_blocks, scoring_mode
    from selectit_trl.engine.prompts import build_requests, score_token_ids
    from selectit_trl.engine.scoring import score_requests

    layout, compiled = CONFIGS[name][0], CONFIGS[name][3] == "compiled"
    samples, tokenizer, prompts, model = setup(name, data, rows, model_path, device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with scoring_mode(model), compiled_blocks(model, enabled=compiled):
        requests = build_requests(samples, prompts, tokenizer, layout)
        warm_up = requests if compiled else requests[:4]  # a compiled model compiles every kind of batch first
        score_requests(model, warm_up, score_token_ids(tokenizer, 5), tokenizer.pad_token_id, progress=False)
        with torch_profile(activities=activities) as prof:
            requests = build_requests(samples, prompts, tokenizer, layout)
            score_requests(model, requests, score_token_ids(tokenizer, 5), tokenizer.pad_token_id,
                           max_batch_tokens=budget, progress=False)
    sort = "self_cuda_time_total" if device.startswith("cuda") else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=15))


def sweep(name: str, data: Path, rows: int, budgets: list[int], model_path: str, device: str) -> None:
    """Samples/s of one configuration at each token budget, to choose a device's default budget."""
    rates = {}
    for budget in budgets:
        r = child(name, rows, 1, budget, data, 0, f"sweep-{name}-{budget}", model_path, device)
        rates[budget] = r["rows"] / r["median_seconds"]
        print(f"{name}, budget {budget}: {rates[budget]:.2f} samples/s, peak RSS {r['peak_rss_mib']:.0f} MiB", flush=True)
    (RESULTS / f"sweep-{name}.json").write_text(json.dumps({"rows": rows, "samples_per_second": rates}, indent=2))
    print()
    print("| budget (tokens) | " + " | ".join(map(str, budgets)) + " |")
    print("|---" * (len(budgets) + 1) + "|")
    print(f"| `{name}` samples/s | " + " | ".join(f"{rates[b]:.2f}" for b in budgets) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=list(CONFIGS), help="configurations to run (default: all)")
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1,
                        help="run the configurations in turn this many times, --repeats each, in fresh processes: "
                        "slow drift of a shared machine then falls on every configuration alike, and each round "
                        "gives its own ratio to (a)")
    parser.add_argument("--reference-rows", type=int, default=50, help="rows compared with the unbatched path")
    parser.add_argument("--memory-rows", type=int, default=2000, help="rows of the memory check (0 skips it)")
    parser.add_argument("--memory-only", action="store_true", help="run only the memory check")
    parser.add_argument("--fidelity", action="store_true",
                        help="score once in each precision of FIDELITY and compare the rankings with fp32 (no timing)")
    parser.add_argument("--memory-repeats", type=int, default=3,
                        help="fresh processes per size in the memory check; medians are reported")
    parser.add_argument("--budget", type=int, default=None, help="selection_max_batch_tokens (default: the library's default for the device)")
    parser.add_argument("--profile", choices=list(CONFIGS))
    parser.add_argument("--sweep", choices=[c for c in CONFIGS if c != "released"],
                        help="time one configuration at each of --budgets (one repeat each, fresh processes)")
    parser.add_argument("--budgets", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192, 16384])
    parser.add_argument("--device", default="cpu", help="cpu, or cuda / cuda:N (default: cpu)")
    parser.add_argument("--random-model", choices=list(RANDOM_MODELS),
                        help="score with a random-weight Llama of this shape instead of the embedded model")
    parser.add_argument("--tokenizer", help="tokenizer for --random-model (default: the embedded model's)")
    parser.add_argument("--child", choices=list(CONFIGS), help=argparse.SUPPRESS)
    parser.add_argument("--model-path", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--save", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    from selectit_trl.engine.scoring import cap_onednn_cache

    cap_onednn_cache()  # as the trainer does, so that the figures are those users get; children inherit it
    alpaca = data_dir() / "alpaca_subsets" / "llamafactory_alpaca_en_demo.json"
    if args.child:
        result = run_config(args.child, Path(args.data), args.rows, args.repeats, args.reference_rows, args.budget,
                            Path(args.save) if args.save else None, args.model_path, args.device)
        Path(args.out).write_text(json.dumps(result, indent=2))
        return
    if not alpaca.is_file():
        raise SystemExit(f"{alpaca} not found: set SELECTIT_TRL_DATA to the shared data folder.")

    from transformers import AutoConfig

    from selectit_trl.engine.models import parameter_count

    if args.random_model:
        model_path = str(build_random_model(args.random_model, args.tokenizer or _embedded()))
    else:
        model_path = _embedded()
    device = args.device
    if args.profile:
        profile(args.profile, alpaca, args.rows, args.budget, model_path, device)
        return
    if args.sweep:
        sweep(args.sweep, alpaca, args.rows, args.budgets, model_path, device)
        return

    parameters = parameter_count(AutoConfig.from_pretrained(model_path))
    from selectit_trl.engine import hardware

    # Where bf16 is emulated (an AVX2-only CPU) its peak takes minutes to time and measures nothing useful.
    native_bf16 = device.startswith("cuda") or hardware.native_cpu_bf16()
    peaks = {"fp32": matmul_peak(torch.float32, device),
             "bf16": matmul_peak(torch.bfloat16, device) if native_bf16 else float("nan")}

    where = (torch.cuda.get_device_name(device) if device.startswith("cuda")
             else f"{torch.get_num_threads()} threads of a {hardware.cpu_kind()} CPU")
    bf16_peak = f"{peaks['bf16']:.0f} GFLOP/s" if native_bf16 else "not timed (emulated here)"
    print(f"model {model_path}: {parameters:,} parameters; matmul peak on {where}: fp32 {peaks['fp32']:.0f} GFLOP/s, "
          f"bf16 {bf16_peak}", flush=True)
    if args.fidelity:
        fidelity(alpaca, args.rows, args.budget, model_path, device)
        return
    names = [] if args.memory_only else (args.only or MAIN)
    if names and "released" not in names:
        names = ["released", *names]
    results = {}
    round_medians: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(args.rounds):
        for name in names:
            # (a) is itself the unbatched prompt_first fp32 path (one whole sequence per pass), so (a) and (b) are
            # compared with each other below instead of running it a second time. Later rounds only time.
            reference_rows = 0 if name in ("released", "pf") or round_index else args.reference_rows
            r = child(name, args.rows, args.repeats, args.budget, alpaca, reference_rows, name, model_path, device)
            round_medians[name].append(r["median_seconds"])
            if name in results:  # the first round's result holds the checks; later rounds add their times
                results[name]["seconds"] += r["seconds"]
                r = results[name]
                r["median_seconds"], r["repeats"] = statistics.median(r["seconds"]), len(r["seconds"])
            results[name] = r
            print(f"{name} (round {round_index + 1} of {args.rounds}): median {r['median_seconds']:.1f} s over "
                  f"{r['repeats']}, {r['tokens']} tokens, peak RSS {r['peak_rss_mib']:.0f} MiB, diff "
                  f"{r['max_difference_from_unbatched']}, first run {r['warmup_seconds']:.1f} s on {r['warmup_rows']} rows",
                  flush=True)
    if args.rounds > 1:
        # Paired ratios: each round's (a) against the same round's configuration, run minutes apart.
        for name, medians in round_medians.items():
            ratios = [a / s for a, s in zip(round_medians["released"], medians)]
            results[name]["ratio_to_released_per_round"] = ratios
            print(f"{name}: × (a) per round {', '.join(f'{x:.2f}' for x in ratios)}; median {statistics.median(ratios):.2f}",
                  flush=True)

    comparisons = {}
    saved = {name: np.load(RESULTS / f"{name}.npy") for name in results}
    if "pf" in saved:
        comparisons["pf_vs_released_max_difference"] = float(np.abs(saved["pf"] - saved["released"]).max())
    for low in saved:
        if CONFIGS[low][2] in LOW_PRECISION and CONFIGS[low][1] == "default" and "sf" in saved:
            comparisons.update({f"{low}_vs_fp32_{k}": v for k, v in ranking_change(saved[low], saved["sf"]).items()})
    memory = {}
    if args.memory_rows:
        # Memory as N grows: the default configuration on `memory_rows` rows of a larger subset, and on `rows` of
        # them taken evenly in order of length, longest included. Both then hold samples of the same lengths, and
        # only N differs: longer samples need more activation memory whatever N is.
        larger = data_dir() / "alpaca_subsets" / "cherry_alpaca_5_percent.json"
        records = json.loads(larger.read_text(encoding="utf-8"))[: args.memory_rows]
        by_length = sorted(records, key=lambda r: -len(r["instruction"] + r["input"] + r["output"]))
        step = max(1, args.memory_rows // args.rows)
        RESULTS.mkdir(parents=True, exist_ok=True)
        smaller = RESULTS / "memory-rows.json"
        smaller.write_text(json.dumps(by_length[::step][: args.rows]), encoding="utf-8")
        # A process's resident memory before scoring varies by about 100 MiB from one start to the next (allocator
        # state after loading), so each size runs in several fresh processes and the medians are compared.
        for rows in (args.rows, args.memory_rows):
            source = smaller if rows == args.rows else larger
            runs = [child("default", rows, 1, args.budget, source, 0, f"memory-{rows}", model_path, device)
                    for _ in range(args.memory_repeats)]
            memory[rows] = {
                "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in runs),
                "growth_mib": statistics.median(r["peak_rss_mib"] - r["rss_before_mib"] for r in runs),
                "peaks_mib": [r["peak_rss_mib"] for r in runs],
                "rss_before_mib": [r["rss_before_mib"] for r in runs],
                "seconds": statistics.median(r["median_seconds"] for r in runs),
            }
            m = memory[rows]
            print(f"memory check, {rows} rows: median peak RSS {m['peak_rss_mib']:.0f} MiB (runs: "
                  f"{', '.join(f'{p:.0f}' for p in m['peaks_mib'])}), median growth during scoring {m['growth_mib']:.0f} MiB, "
                  f"{m['seconds']:.0f} s", flush=True)
    report = {"peaks_gflops": peaks, "threads": torch.get_num_threads(), "parameters": parameters, "cpu": hardware.cpu_kind(),
              "emulation": hardware.emulation_overrides(),
              "model": args.random_model or "embedded", "device": where,
              "results": results, "comparisons": comparisons, "memory": memory}
    # A memory-only run keeps the full run's results file.
    suffix = (f"-{hardware.cpu_kind().lower()}" if (device == "cpu" and not args.random_model)
              else f"-{device.replace(':', '')}-{args.random_model or 'embedded'}")
    (RESULTS / (f"memory{suffix}.json" if args.memory_only else f"scoring{suffix}.json")).write_text(json.dumps(report, indent=2))
    if results:
        print()
        print(table(results, peaks, parameters))
    print()
    print(json.dumps({"comparisons": comparisons, "memory": memory}, indent=2))


def _embedded() -> str:
    from selectit_trl.engine.models import embedded_model_path

    return str(embedded_model_path())


if __name__ == "__main__":
    main()
