"""The `selectit-trl` command: `score`, `train`, `probe`, `report` and `export`.

YAML recipes use TRL's flat keys (`ModelConfig`, `SFTConfig`, `ScriptArguments`) plus the `selection_*` keys;
command-line flags override the file. TRL's own `trl sft` cannot be used for this: it hands keys it does not
know to accelerate, which rejects the `selection_*` keys.
"""

from __future__ import annotations

import dataclasses
import errno
import gc
import os
import signal
import sys

from .arguments import LAUNCHED_ENV, command_parser, launch_processes, parse_args
from .errors import PeerProcessFailed, SelectionConfigError, SelectITError

USAGE = """usage: selectit-trl {score,train,probe,report,export,compare} ...   (selectit-trl COMMAND --help for its options)

  selectit-trl score --config RECIPE.yaml [--key value ...]   rate the training data, write OUTPUT_DIR/selection/
  selectit-trl train --config RECIPE.yaml [--key value ...]   select (or reuse the selection), then train
  selectit-trl probe --config RECIPE.yaml [--key value ...]   check that the scorer tells good pairs from bad (AUROC)
  selectit-trl report OUTPUT_DIR                               report and plots of a finished selection
  selectit-trl export OUTPUT_DIR --to DIR [--push_to_hub ID]   the kept rows as a dataset, with its card
  selectit-trl compare --config RECIPE.yaml --eval_dataset_name HELD_OUT   strategies compared by what they train
  selectit-trl --version

score, train and probe run in several processes with --num_processes N (and --accelerate_config NAME_OR_FILE),
through accelerate, as `trl sft` does.
"""

def build_trainer(script_args, training_args, model_args, data_args=None, scoring_only: bool = False,
                  eval_dataset=None):
    """The trainer exactly as a recipe describes it: model, quantisation, LoRA and data.

    `eval_dataset` replaces the recipe's test split (`compare`'s held-out set).

    With `scoring_only` (`score`, `probe`), a quantized model without `use_peft` gets the default LoRA adapter:
    transformers refuses a quantized model without adapters in any Trainer, and scoring runs with adapters off,
    so the scores are the base model's either way.
    """
    from trl import get_peft_config, get_quantization_config

    from .data.loading import load_datasets
    from .engine import hardware
    from .training.trainer import SelectiveSFTTrainer

    if model_args.load_in_4bit and model_args.dtype in ("auto", None):
        # TRL gives the 4-bit compute dtype the value of `dtype`, and "auto" is no compute dtype: pick it for the
        # hardware here (bf16 where it runs natively). The trainer then loads the other layers in it too.
        compute = hardware.auto_compute_dtype(hardware.device_type(training_args))
        quantization = get_quantization_config(dataclasses.replace(model_args, dtype=str(compute).removeprefix("torch.")))
    else:
        quantization = get_quantization_config(model_args)

    quantized = model_args.load_in_4bit or model_args.load_in_8bit
    training_args.model_init_kwargs = {
        "revision": model_args.model_revision,
        "trust_remote_code": training_args.trust_remote_code,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
        **(training_args.model_init_kwargs or {}),
    }
    if model_args.model_name_or_path is None:
        # The embedded model is a local snapshot: there is no revision to ask for.
        training_args.model_init_kwargs.pop("revision")
    # The data's name, for summary.json, the model card's `datasets:` and `export`'s card.
    training_args.selection_dataset_name = training_args.selection_dataset_name or script_args.dataset_name
    # As `trl sft` does: an eval set only when something evaluates, from the recipe's test split.
    train, held_out = load_datasets(script_args, data_args, with_eval=training_args.eval_strategy != "no",
                                    seed=training_args.seed)
    return SelectiveSFTTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=train,
        eval_dataset=eval_dataset if eval_dataset is not None else held_out,
        quantization_config=quantization,
        peft_config=get_peft_config(model_args) or (get_peft_config(dataclasses.replace(model_args, use_peft=True))
                                                     if scoring_only and quantized else None),
    )


def version_line() -> str:
    """selectit-trl's version, and the versions of what it runs on, as a bug report wants them."""
    from . import __version__
    from .training.model_card import installed

    others = ", ".join(f"{name} {installed(name)}" for name in ("trl", "transformers", "peft", "torch"))
    return f"selectit-trl {__version__} ({others})"


def _show_progress_messages() -> None:
    """Our INFO messages (the probe's result, reused scores) on stderr, unless the user set up logging."""
    import logging
    import os

    package = logging.getLogger("selectit_trl")
    if os.environ.get("RANK", "0") != "0":  # under a launcher, the main process speaks for all
        return
    if not package.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("selectit-trl: %(message)s"))
        package.addHandler(handler)
        package.setLevel(logging.INFO)


def _print_probe(result: dict, output_dir) -> None:
    from .selection.probe import PROBE_FILE
    from .store.outputs import selection_dir

    # Per SelectIT model, then per strategy of a mix, then the ranking the selection uses.
    scorers = {**{m: v for m, v in result["auroc"].items() if m != "combined"}, **result.get("auroc_by_strategy", {}),
               "combined": result["auroc"]["combined"]}
    width = max(len(m) for m in scorers)
    print(f"Signal probe: {result['pairs']} real pairs against {result['pairs']} mismatched ones (0.5 is chance).")
    for scorer, value in scorers.items():
        print(f"  {scorer:<{width}}  AUROC {value:.3f}")
    if result["below_threshold"]:  # the log has said why this matters
        print(f"Below the threshold of {result['threshold']}.")
    print(f"Per-pair scores: {selection_dir(output_dir) / PROBE_FILE}")


def run(command: str, argv: list[str], state: dict | None = None) -> int:
    if "-h" in argv or "--help" in argv:
        command_parser(command).print_help()
        return 0
    launch: list[str] = []
    parsed = parse_args(argv, launch, command)
    script_args, training_args, model_args, data_args = parsed[:4]
    if launch and command == "compare":
        raise SelectionConfigError("compare runs in one process: leave out --num_processes and --accelerate_config.")
    if launch and not os.environ.get(LAUNCHED_ENV):
        return launch_processes(command, argv, launch)
    _show_progress_messages()
    if command == "compare":  # one process: it runs a selection and several trainings in turn
        from .evaluation.compare import run_compare

        folder = run_compare(*parsed)
        print(f"Comparison: {folder / 'report.md'}")
        return 0
    if state is not None:
        state["output_dir"] = training_args.output_dir  # where the processes of a launch leave failure notes
    trainer = build_trainer(script_args, training_args, model_args, data_args, scoring_only=command != "train")
    _run_command(command, trainer, training_args)
    del trainer
    # Only after success: after a failure the other processes may still be inside a collective.
    leave_process_group()
    return 0


def leave_process_group() -> None:
    """Under accelerate, leave the process group once the trainer is gone, before the interpreter shuts down.

    A process group still alive at shutdown, or a DDP wrapper still holding it, can abort the process with gloo
    ("terminate called without an active exception", SIGABRT) after all the work is done, and the launcher
    then reports the run as failed. The DDP wrapper goes with the last reference to the trainer; collecting
    first also clears any reference cycle through it.
    """
    import torch

    gc.collect()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _run_command(command: str, trainer, training_args) -> None:
    from .reporting.report import write_report

    if command == "probe":
        result = trainer.probe()
        if trainer.accelerator.is_main_process:
            _print_probe(result, training_args.output_dir)
        return
    if command == "score":
        result = trainer.select()
    else:
        trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        trainer.save_model(training_args.output_dir)
        result = trainer.selection_result
    if trainer.accelerator.is_main_process:
        try:
            print(write_report(training_args.output_dir), end="")
        except Exception as error:  # the scores and the adapter are saved; a report is only a view of them
            print(f"selectit-trl: the report could not be written ({type(error).__name__}: {error}); the scores are "
                  f"intact. Try `selectit-trl report {training_args.output_dir}` to see why.", file=sys.stderr)
        print(f"Scores: {result.path}")
        if command == "train":
            print(f"Adapter and model card: {training_args.output_dir}")


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's stop, `kill`, a launcher stopping the other processes), raised where the run is, so
    that it stops as on Ctrl-C: the batch being written finishes or is not started, and what is saved is said."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


# OS errors that describe the machine, not a bug: a full disk, a quota, a file-size limit, a read-only or
# forbidden folder. They get one line; any other exception keeps its traceback.
_MACHINE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}


def _one_line(error: BaseException) -> tuple[int, str] | None:
    """(exit status, what to print after `selectit-trl COMMAND: `) for a failure the user can act on, or None."""
    if isinstance(error, Terminated):
        return 128 + signal.SIGTERM, "terminated (SIGTERM)."
    if isinstance(error, KeyboardInterrupt):
        return 128 + signal.SIGINT, "interrupted."
    if isinstance(error, (SelectITError, ValueError, FileNotFoundError)):  # ValueError covers JSON errors
        return 1, f"error: {error}"
    if isinstance(error, OSError) and error.errno in _MACHINE_ERRNOS:
        where = f" ({error.filename})" if error.filename else ""
        return 1, (f"error: {error.strerror or error}{where}. Everything stored before it is kept: free some space or "
                   "fix the folder's permissions, then run the same command again to resume.")
    from datasets.exceptions import DatasetGenerationError
    from pyarrow import ArrowException

    if isinstance(error, (DatasetGenerationError, ArrowException)):  # a streamed file, read only as it is rated
        from .data.loading import parser_reason

        return 1, f"error: the dataset cannot be read: {parser_reason(error)}."
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        print(version_line())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in ("score", "train", "probe", "report", "export", "compare"):
        print(f"selectit-trl: unknown command {command!r}.\n\n{USAGE}", end="", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _raise_terminated)
    run_state: dict = {}
    try:
        if command == "report":
            from .reporting.report import main as report_main

            return report_main(rest)
        if command == "export":
            from .reporting.export import main as export_main

            return export_main(rest)
        return run(command, rest, run_state)
    except BaseException as error:
        return _fail(command, error, run_state.get("output_dir"))


def _fail(command: str, error: BaseException, output_dir) -> int:
    """Print one line for `error` and return the exit status; re-raise a bug, with its traceback.

    Under accelerate, a process that fails leaves a note for the others (`processes.note_failure`), and a process
    stopped because another failed says which one and why. Such a process then exits at once: a collective still
    pending could otherwise hold its shutdown until the process-group timeout.
    """
    from .selection import processes

    rank, size = processes.world()
    outcome = _one_line(error)
    peer = processes.peer_failure(output_dir) if size > 1 and not isinstance(error, PeerProcessFailed) else None
    if size > 1 and peer is None and (outcome is None or isinstance(error, Terminated)):
        peer = processes.failure_soon(output_dir, seconds=1.0)  # the launcher stops us as the failed one exits
    if peer is not None:
        outcome = (1, f"error: {processes.stop_message(peer)}")
    elif size > 1 and not isinstance(error, PeerProcessFailed):
        processes.note_failure(output_dir, outcome[1].removeprefix("error: ") if outcome
                               else f"{type(error).__name__}: {error}")
    if outcome is None:
        raise error
    status, line = outcome
    print(f"selectit-trl {command}{f' (process {rank})' if size > 1 else ''}: {line}", file=sys.stderr)
    if size > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status


if __name__ == "__main__":
    sys.exit(main())
