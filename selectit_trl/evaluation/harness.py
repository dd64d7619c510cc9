"""lm-evaluation-harness tasks on a trained model, for `compare`'s optional benchmark metrics.

The harness evaluates the model object the trainer holds (adapter attached), so nothing is saved, merged or loaded
again. Its built-in tasks read their data from the Hugging Face Hub; offline, give task YAMLs that read local
files through `lm_eval_include_path` (the repository's lm_eval_tasks/ holds MMLU, GSM8K and BBH on
../shared/data).
"""

from __future__ import annotations

import difflib
import logging
import math

from ..errors import SelectionConfigError

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'selectit-trl[eval]'"


def task_manager(include_path: str | None):
    """The harness's task index, with the user's own task folder; a clear line when the harness is missing."""
    try:
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise SelectionConfigError(f"lm_eval_tasks needs lm-evaluation-harness: {INSTALL_HINT}.") from None
    return TaskManager(include_path=include_path)


def check_tasks(tasks: list[str], include_path: str | None):
    """Refuses an unknown task before any training, naming the closest known one; returns the task index."""
    manager = task_manager(include_path)
    known = manager.all_tasks
    for task in tasks:
        if task not in known:
            close = difflib.get_close_matches(task, known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            where = f" in lm-evaluation-harness or {include_path}" if include_path else \
                " in lm-evaluation-harness (give lm_eval_include_path for your own task files)"
            raise SelectionConfigError(f"lm_eval_tasks: no task {task!r}{where}.{hint}")
    return manager


def harness_metrics(model, tokenizer, tasks: list[str], manager, limit: int | None, batch_size: int) -> dict:
    """{task: {metric: value}} for each task, as the harness names them ('acc,none', 'exact_match,strict-match')."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    was_training = model.training
    model.eval()
    try:
        wrapped = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        # bootstrap_iters=0: the spread reported is the one over seeds, not the harness's resampling of one run.
        output = lm_eval.simple_evaluate(model=wrapped, tasks=tasks, task_manager=manager, limit=limit,
                                         bootstrap_iters=0, log_samples=False)
    finally:
        model.train(was_training)
    metrics = {}
    for task in tasks:
        values = output["results"][task]
        metrics[task] = {name: float(value) for name, value in values.items()
                         if "," in name and "_stderr" not in name and isinstance(value, (int, float))
                         and math.isfinite(float(value))}
    return metrics
