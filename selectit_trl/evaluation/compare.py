"""`selectit-trl compare`: selection strategies side by side, by the models they train, under equal compute.

Every strategy selects from the same pool in the recipe's `output_dir`, so each model measures the pool once and
the strategies share its score store; `all` keeps every row. Each subset then trains a LoRA adapter (as the
recipe says) from the same base for the same `max_steps`, once per seed, with `selection_from` pointing at that
strategy's selection. Each adapter is evaluated on the held-out set (`eval_dataset_name`) by TRL's own
evaluation: the mean token loss of its reference responses, computed as the training loss is.

Everything goes to `OUTPUT_DIR/compare/`: one folder per strategy with its selection files and one adapter per
seed, `results.json`, and `report.md` with its plot. A (strategy, seed) already in `results.json` is not trained
again, so an interrupted comparison resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from ..errors import SelectionConfigError
from ..store import outputs

logger = logging.getLogger(__name__)

COMPARE_DIR = "compare"
RESULTS_FILE = "results.json"
ALL = "all"  # no selection: every row


@dataclass
class CompareArguments:
    """The keys `selectit-trl compare` reads beside a recipe's."""

    compare_strategies: str = field(
        default="selectit,ifd,random,all",
        metadata={"help": "The strategies to compare, comma-separated; 'all' trains on every row."},
    )
    seeds: int = field(
        default=1, metadata={"help": "Train each subset this many times, with seeds 0..N-1 (mean and spread)."})
    eval_dataset_name: str | None = field(
        default=None,
        metadata={"help": "The held-out set every adapter is evaluated on: a local file or a hub id, in any format "
                  "the training data may have."},
    )
    eval_dataset_split: str = field(default="train", metadata={"help": "The held-out set's split."})
    lm_eval_tasks: str | None = field(
        default=None,
        metadata={"help": "lm-evaluation-harness tasks, comma-separated, each adapter is also evaluated on "
                  "(pip install 'selectit-trl[eval]'). Offline, use local task files: the repository's "
                  "lm_eval_tasks/ has mmlu_local, gsm8k_local and bbh_local on ../shared/data."},
    )
    lm_eval_include_path: str | None = field(
        default=None,
        metadata={"help": "A folder of lm-evaluation-harness task YAMLs, such as the repository's lm_eval_tasks/."})
    lm_eval_limit: int | None = field(
        default=None, metadata={"help": "Evaluate only this many examples of each lm_eval task (generation is slow "
                                "on a CPU)."})


def parse_strategies(text: str) -> list[str]:
    """The entries of `compare_strategies`: a strategy, `all`, or an even mix of strategies joined by '+'."""
    from ..strategies import strategy_names

    names = [name.strip() for name in text.split(",") if name.strip()]
    known = set(strategy_names())
    unknown = [name for name in names if name != ALL and not set(mix_parts(name)) <= known]
    if not names or unknown or len(set(names)) != len(names):
        raise SelectionConfigError(f"compare_strategies {text!r}: give distinct names among "
                                   f"{', '.join([*strategy_names(), ALL])}, or an even mix such as 'selectit+ifd', "
                                   "comma-separated.")
    return names


def mix_parts(entry: str) -> list[str]:
    """'selectit+ifd' -> ['selectit', 'ifd']; a single strategy is a mix of one."""
    return [part.strip() for part in entry.split("+")]


def read_results(folder: Path) -> dict:
    path = folder / RESULTS_FILE
    if not path.is_file():
        return {"settings": None, "runs": {}}
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _select(strategy: str, script_args, training_args, model_args, data_args, folder: Path) -> Path:
    """The strategy's selection, made in the shared output_dir (and its store), kept in the strategy's folder."""
    from ..cli import build_trainer

    target = folder / strategy
    if (target / "selection" / outputs.SUMMARY_FILE).is_file():
        return target
    overrides = {"selection_strategy": "random", "selection_ratio": 1.0, "selection_max_samples": None,
                 "selection_probe": False} if strategy == ALL else {"selection_strategy": ",".join(mix_parts(strategy))}
    args = dataclasses.replace(training_args, **overrides)
    trainer = build_trainer(script_args, args, model_args, data_args, scoring_only=True)
    trainer.select()
    del trainer  # its model, before the next strategy loads one
    gc.collect()
    made = outputs.selection_dir(training_args.output_dir)
    (target / "selection").mkdir(parents=True, exist_ok=True)
    for name in (outputs.SCORES_FILE, outputs.SUBSET_FILE, outputs.SUMMARY_FILE):  # the summary last: it marks done
        if (made / name).is_file():
            shutil.copyfile(made / name, target / "selection" / name)
    return target


def _train(strategy: str, seed: int, selection: Path, held_out, harness, script_args, training_args, model_args,
           data_args) -> dict:
    """One adapter on the strategy's subset, evaluated on the held-out set."""
    from ..cli import build_trainer

    run_dir = selection / f"seed{seed}"
    args = dataclasses.replace(training_args, output_dir=str(run_dir), seed=seed, selection_from=str(selection),
                               eval_strategy="no", save_strategy="no")
    started = time.perf_counter()
    trainer = build_trainer(script_args, args, model_args, data_args, eval_dataset=held_out)
    train = trainer.train()
    trainer.save_model()
    metrics = trainer.evaluate()
    harnessed = {} if harness is None else {
        "lm_eval": harness(trainer.model, trainer.processing_class, training_args.per_device_eval_batch_size)}
    result = {
        "rows_kept": trainer.selection_result.summary.counts["selected"],
        "subset_sha256": trainer.selection_result.summary.selected_indices_sha256,
        "train_loss": float(train.training_loss),
        "eval_loss": float(metrics["eval_loss"]),
        "steps": int(trainer.state.global_step),
        "seconds": time.perf_counter() - started,
        "adapter": str(run_dir),
        **harnessed,
    }
    del trainer  # its model and adapter, before the next run loads them
    gc.collect()
    return result


def run_metrics(run: dict) -> dict[str, float]:
    """A run's metrics by name: its losses and time, then each lm_eval task's as 'task metric,filter'."""
    metrics = {name: run[name] for name in ("eval_loss", "train_loss", "seconds")}
    for task, values in run.get("lm_eval", {}).items():
        metrics.update({f"{task} {name}": value for name, value in values.items()})
    return metrics


def summarise(runs: dict, strategies: list[str]) -> dict:
    """Per strategy: the mean and standard deviation of each metric over its seeds."""
    table = {}
    for strategy in strategies:
        mine = [r for key, r in runs.items() if key.split("/")[0] == strategy]
        if not mine:
            continue
        entry = {"seeds": len(mine), "rows_kept": mine[0]["rows_kept"]}
        measured = [run_metrics(r) for r in mine]
        for metric in measured[0]:
            values = [m[metric] for m in measured if metric in m]
            mean = sum(values) / len(values)
            entry[metric] = {"mean": mean, "std": math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))}
        table[strategy] = entry
    return table


def _harness(compare_args: CompareArguments):
    """model, tokenizer, batch size -> the lm_eval metrics, or None when no task is asked for. The tasks are
    checked here, before anything trains."""
    from .harness import check_tasks, harness_metrics

    tasks = [task.strip() for task in (compare_args.lm_eval_tasks or "").split(",") if task.strip()]
    if not tasks:
        return None
    if compare_args.lm_eval_limit is not None and compare_args.lm_eval_limit < 1:
        raise SelectionConfigError(f"lm_eval_limit must be >= 1, got {compare_args.lm_eval_limit}.")
    manager = check_tasks(tasks, compare_args.lm_eval_include_path)
    return lambda model, tokenizer, batch_size: harness_metrics(model, tokenizer, tasks, manager,
                                                                compare_args.lm_eval_limit, batch_size)


# What a run's result depends on, besides its strategy and seed: a comparison resumes only under the same.
_TRAINING_SETTINGS = ("max_steps", "per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate",
                      "lr_scheduler_type", "warmup_steps", "warmup_ratio", "weight_decay", "max_length",
                      "completion_only_loss", "assistant_only_loss", "packing")
_MODEL_SETTINGS = ("model_name_or_path", "model_revision", "dtype", "load_in_4bit", "load_in_8bit", "use_peft",
                   "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules")
# Selection settings that change nothing in the kept rows: how fast, how loudly, or which strategy (per entry).
_RUNTIME_SELECTION = {"selection_strategy", "selection_max_batch_tokens", "selection_compile", "selection_strict",
                      "selection_overwrite", "selection_from", "selection_probe", "selection_probe_size",
                      "selection_probe_threshold", "selection_teacher_batch_size", "selection_dataset_name"}


def compare_settings(script_args, training_args, model_args, compare_args: CompareArguments) -> dict:
    """The settings every run of a comparison shares, as JSON values."""
    settings = {"dataset_name": script_args.dataset_name, "dataset_config": script_args.dataset_config,
                "eval_dataset_name": compare_args.eval_dataset_name,
                "eval_dataset_split": compare_args.eval_dataset_split,
                "lm_eval_tasks": compare_args.lm_eval_tasks, "lm_eval_limit": compare_args.lm_eval_limit}
    settings.update({name: getattr(training_args, name, None) for name in _TRAINING_SETTINGS})
    settings.update({name: getattr(model_args, name, None) for name in _MODEL_SETTINGS})
    settings.update({f.name: getattr(training_args, f.name) for f in dataclasses.fields(training_args)
                     if f.name.startswith("selection_") and f.name not in _RUNTIME_SELECTION})
    return json.loads(json.dumps(settings, default=str))


def check_same_settings(folder: Path, recorded: dict | None, settings: dict) -> None:
    """Refuses to add runs to a comparison made under other settings: their results would not compare."""
    if recorded is None or recorded == settings:
        return
    changed = [f"{name} {recorded.get(name)!r} -> {settings.get(name)!r}"
               for name in sorted(set(recorded) | set(settings)) if recorded.get(name) != settings.get(name)]
    raise SelectionConfigError(f"{folder} holds runs made with other settings ({'; '.join(changed)}). Give another "
                               "output_dir, or remove that folder to start the comparison again.")


def run_compare(script_args, training_args, model_args, data_args, compare_args: CompareArguments) -> Path:
    """Select, train and evaluate every (strategy, seed) not done yet; returns `OUTPUT_DIR/compare/`."""
    from ..data.loading import load_datasets
    from .compare_report import write_compare_report

    strategies = parse_strategies(compare_args.compare_strategies)
    if compare_args.seeds < 1:
        raise SelectionConfigError(f"seeds must be >= 1, got {compare_args.seeds}.")
    if not compare_args.eval_dataset_name:
        raise SelectionConfigError("compare needs eval_dataset_name: the held-out set every adapter is evaluated on.")
    if training_args.max_steps is None or training_args.max_steps <= 0:
        raise SelectionConfigError("compare trains every subset for the same number of optimizer steps: set max_steps.")
    folder = Path(training_args.output_dir) / COMPARE_DIR
    results = read_results(folder)
    settings = compare_settings(script_args, training_args, model_args, compare_args)
    check_same_settings(folder, results.get("settings"), settings)
    results["settings"] = settings
    held_out, _ = load_datasets(dataclasses.replace(script_args, dataset_name=compare_args.eval_dataset_name,
                                                    dataset_config=None,
                                                    dataset_train_split=compare_args.eval_dataset_split))
    harness = _harness(compare_args)
    runs = results["runs"]
    units = [(s, seed) for s in strategies for seed in range(compare_args.seeds)]
    with tqdm(total=len(units), desc="Compare", unit="adapter", disable=training_args.disable_tqdm) as bar:
        for strategy in strategies:
            pending = [seed for seed in range(compare_args.seeds) if f"{strategy}/seed{seed}" not in runs]
            bar.update(compare_args.seeds - len(pending))
            if not pending:
                continue
            selection = _select(strategy, script_args, training_args, model_args, data_args, folder)
            for seed in pending:
                runs[f"{strategy}/seed{seed}"] = _train(strategy, seed, selection, held_out, harness, script_args,
                                                        training_args, model_args, data_args)
                results["strategies"] = summarise(runs, strategies)
                outputs.write_json(folder / RESULTS_FILE, results)
                bar.update(1)
    results["strategies"] = summarise(runs, strategies)
    outputs.write_json(folder / RESULTS_FILE, results)
    write_compare_report(folder, results, strategies)
    return folder
