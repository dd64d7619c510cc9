"""The command line's arguments: a recipe and flags read by TRL's `TrlParser`, each command's `--help`, a
did-you-mean for misspelt keys and flags, and the launch of a command in several processes through accelerate.
"""

from __future__ import annotations

import difflib
import os

from .errors import SelectionConfigError

# What `selectit-trl COMMAND --help` says first.
DESCRIPTIONS = {
    "score": (
        "Rate every row of the training data with the model (and its peers), keep the best by selection_strategy, "
        "and write OUTPUT_DIR/selection/: scores.jsonl, summary.json and report.md. Nothing is trained. Every "
        "measurement is stored as it is made, so an interrupted run resumes, and a later `train` with the same "
        "settings reuses the scores without a forward pass."
    ),
    "train": (
        "Select as `score` does (or reuse its stored scores), then train on the kept rows with TRL's SFTTrainer: "
        "LoRA or QLoRA with use_peft, packing, completion-only loss, checkpoints and report_to as in `trl sft`. "
        "The model card in OUTPUT_DIR says what was trained on which rows, and how they were chosen."
    ),
    "compare": (
        "Compare selection strategies by the models they train: each strategy in compare_strategies selects from the "
        "same pool (sharing the score store), each subset trains a LoRA adapter for the same max_steps once per seed, "
        "and each adapter is evaluated on eval_dataset_name. Writes OUTPUT_DIR/compare/: results.json, report.md "
        "and the adapters. A rerun trains only what is missing."
    ),
    "probe": (
        "Check that the selection can tell good pairs from bad before a long run: score clean rows against "
        "mismatched ones (each instruction with another row's response) and print the AUROC of the configured "
        "strategy (0.5 is chance). Writes OUTPUT_DIR/selection/probe.json."
    ),
}
# Options that go to `accelerate launch` rather than to the run, as in `trl sft`.
LAUNCH_OPTIONS = ("num_processes", "accelerate_config", "main_process_port")
# Set in the launched processes, so that a recipe's num_processes does not launch them again.
LAUNCHED_ENV = "SELECTIT_TRL_LAUNCHED"


def command_parser(command: str | None = None):
    from trl import ModelConfig, ScriptArguments, TrlParser

    from .data.loading import DataArguments
    from .training.config import SelectiveSFTConfig

    types = (ScriptArguments, SelectiveSFTConfig, ModelConfig, DataArguments)
    if command == "compare":
        from .evaluation.compare import CompareArguments

        types += (CompareArguments,)
    parser = TrlParser(
        types,
        prog=f"selectit-trl {command}" if command else "selectit-trl",
        # argparse's own usage line would list all ~400 options.
        usage=f"selectit-trl {command or 'COMMAND'} --config RECIPE.yaml [--key value ...]"
              + (" --eval_dataset_name HELD_OUT" if command == "compare" else " [--num_processes N]"),
        description=DESCRIPTIONS.get(command),
        epilog="Launch options: --num_processes N, --accelerate_config NAME_OR_FILE (a file, or one of TRL's named "
               "configs such as zero2), --main_process_port PORT. Recipe keys may be given as flags: --key value.",
    )
    _selection_options_first(parser)
    return parser


def _selection_options_first(parser) -> None:
    """Show the selection_* options first in --help, under their own heading, before the ~400 of TRL and transformers.

    argparse prints its groups in order, so the selection options move to a group of their own at the front.
    """
    group = parser.add_argument_group("selection options (selectit-trl; docs/config.md)")
    others = parser._optionals  # where HfArgumentParser puts every dataclass field
    for action in [a for a in others._group_actions if a.dest.startswith("selection_")]:
        others._group_actions.remove(action)
        group._group_actions.append(action)
    others.title = "training, model and data options (TRL's SFTConfig, ModelConfig, ScriptArguments)"
    parser._action_groups.remove(group)
    parser._action_groups.insert(0, group)


def _launch_option(item: str) -> bool:
    return item.startswith("--") and item[2:].split("=", 1)[0] in LAUNCH_OPTIONS


def _split_leftovers(strings: list[str]) -> tuple[list[str], list[str]]:
    """What the parser did not know: (launch options with their values, unknown flags and words)."""
    launch, unknown = [], []
    i = 0
    while i < len(strings):
        item = strings[i]
        # A flag's value is the next string, unless the flag carries it (--key=value) or the next is a flag too.
        takes_value = item.startswith("-") and "=" not in item and i + 1 < len(strings) and not strings[i + 1].startswith("--")
        if _launch_option(item):
            launch += strings[i : i + 1 + takes_value]
        else:
            unknown.append(item.split("=", 1)[0])
        i += 1 + takes_value
    return launch, unknown


def _hints(unknown: list[str], known: list[str], strip: int) -> str:
    """Each unknown name, with the closest known one; `strip` leading characters are compared and shown bare."""
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=1)
        hints.append(repr(name[strip:] if name.startswith("--") else name)
                     + (f" (did you mean {close[0][strip:]!r}?)" if close else ""))
    return ", ".join(hints)


def parse_args(argv: list[str], launch: list[str] | None = None, command: str | None = None):
    """Recipe plus flags -> (script_args, training_args, model_args, data_args), with a hint for misspelt keys;
    `compare` adds its own arguments at the end.

    Launch options (`LAUNCH_OPTIONS`), from the recipe or the flags, are added to `launch` when it is given.
    """
    argv = ["--selection_overwrite" if arg == "--overwrite" else arg for arg in argv]
    parser = command_parser(command if command == "compare" else None)
    *parsed, from_recipe, from_flags = parser.parse_args_and_config(
        argv, return_remaining_strings=True, separate_remaining_strings=True
    )
    flags = [option for action in parser._actions for option in action.option_strings if option.startswith("--")]
    recipe_launch, unknown_keys = _split_leftovers(from_recipe)  # a recipe's keys come back as --key value
    if unknown_keys:
        raise SelectionConfigError(f"Unknown key(s) in the recipe: {_hints(unknown_keys, flags, strip=2)}.")
    flag_launch, unknown_flags = _split_leftovers(from_flags)
    if unknown_flags:
        raise SelectionConfigError(
            f"Unknown option(s): {_hints(unknown_flags, flags, strip=0)}. `selectit-trl COMMAND --help` lists them.")
    if launch is not None:
        launch.extend(recipe_launch + flag_launch)
    return tuple(parsed)


def launch_processes(command: str, argv: list[str], launch: list[str]) -> int:
    """Run this command again in several processes through `accelerate launch`, as `trl sft` does, and wait.

    Without an accelerate config file, more than one process means accelerate's multi-process launcher (which
    runs on CPUs too, over gloo); a config file decides for itself. Each process says what went wrong itself, so
    a failure here is only its exit status.
    """
    import subprocess

    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from trl.cli.accelerate_config import resolve_accelerate_config_argument

    args = resolve_accelerate_config_argument(
        [part for item in launch for part in (item.split("=", 1) if item.startswith("--") else [item])])
    if "--config_file" not in args:
        processes = int(args[args.index("--num_processes") + 1]) if "--num_processes" in args else 1
        args += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        if processes > 1:
            args.append("--multi_gpu")
    own, skip = [], False  # the command line without the launch options (a recipe's stay, and are ignored)
    for item in argv:
        if skip:
            skip = False
        elif _launch_option(item):
            skip = "=" not in item
        else:
            own.append(item)
    namespace = launch_command_parser().parse_args([*args, "-m", "selectit_trl.cli", command, *own])
    os.environ[LAUNCHED_ENV] = "1"
    try:
        launch_command(namespace)
    except ChildFailedError:
        return 1
    except subprocess.CalledProcessError as error:
        return error.returncode
    return 0
