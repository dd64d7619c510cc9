"""The lm-evaluation-harness task files in lm_eval_tasks/ read the whole of ../shared/data and score a model."""

from pathlib import Path

import pytest

from selectit_trl.errors import SelectionConfigError
from selectit_trl.evaluation.harness import check_tasks, harness_metrics

pytestmark = pytest.mark.slow

TASK_FILES = Path(__file__).resolve().parents[1] / "lm_eval_tasks"
# task -> (test rows in the shared data, the metrics it reports)
TASKS = {
    "mmlu_local": (14042, {"acc,none"}),
    "gsm8k_local": (1319, {"exact_match,strict-match", "exact_match,flexible-extract"}),
    "bbh_local": (6511, {"exact_match,first-line"}),
}


@pytest.fixture(scope="module")
def task_folder(tmp_path_factory, shared_data_dir) -> Path:
    """The shipped task files, pointed at wherever the shared data is (they say ../shared/data, from the root)."""
    data = shared_data_dir
    folder = tmp_path_factory.mktemp("lm_eval_tasks")
    for path in TASK_FILES.glob("*.yaml"):
        (folder / path.name).write_text(path.read_text().replace("../shared/data", str(data)))
    return folder


def test_each_local_task_reads_every_row_of_its_data(task_folder):
    from lm_eval.tasks import get_task_dict

    manager = check_tasks(list(TASKS), str(task_folder))
    loaded = get_task_dict(list(TASKS), manager)
    for name, (rows, _) in TASKS.items():
        assert len(list(loaded[name].test_docs())) == rows, name


def test_a_model_gets_each_local_tasks_metrics(task_folder, tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    manager = check_tasks(list(TASKS), str(task_folder))
    metrics = harness_metrics(model, tokenizer, list(TASKS), manager, limit=2, batch_size=2)
    for name, (_, names) in TASKS.items():
        assert set(metrics[name]) == names, name
        assert all(value in (0.0, 0.5, 1.0) for value in metrics[name].values())  # right answers out of two
    assert model.training is False  # as it was given: from_pretrained returns a model in eval mode


def test_a_misspelt_task_is_refused_with_the_closest_name(task_folder):
    with pytest.raises(SelectionConfigError, match=r"no task 'mmlu_locl'.*Did you mean 'mmlu_local'\?"):
        check_tasks(["mmlu_locl"], str(task_folder))
