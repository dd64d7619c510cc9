"""Every class of bad setting is refused before any model loads, with a message that says what to fix.

Bad rows are covered in test_formats.py, faults while scoring in test_robustness.py, and the CLI's one-line
errors in test_cli.py; docs/reliability.md maps each class to its test.
"""

import pytest
from conftest import cpu_config
from test_trainer import make_trainer

from selectit_trl import SelectiveSFTConfig
from selectit_trl.errors import SelectionConfigError


@pytest.mark.parametrize(
    "setting, message",
    [
        ({"selection_ratio": 0.0}, "selection_ratio must be in (0, 1]."),
        ({"selection_ratio": 1.5}, "selection_ratio must be in (0, 1]."),
        ({"selection_max_samples": 0}, "selection_max_samples must be >= 1."),
        ({"selection_num_prompts": 0}, "selection_num_prompts must be >= 1."),
        ({"selection_score_max": 1}, "selection_score_max must be >= 2."),
        ({"selection_alpha": -0.1}, "selection_alpha must be >= 0."),
        ({"selection_normalization": "softmax"}, "selection_normalization must be one of ('paper', 'reference')."),
        ({"selection_prompt_layout": "middle"}, "selection_prompt_layout must be one of ('sample_first', 'prompt_first')."),
        ({"selection_max_batch_tokens": 0}, "selection_max_batch_tokens must be >= 1."),
        ({"selection_peer_models": ["a/b"], "selection_model_weights": [1.0]},
         "selection_model_weights needs 2 values, one for the tuned model and one per peer."),
        ({"selection_model_weights": [-1.0]},
         "selection_model_weights must be finite and >= 0, not all zero, got [-1.0]: each is a model's share of the "
         "combined score."),
        ({"selection_peer_models": ["a/b"], "selection_model_weights": [0.0, 0.0]},
         "selection_model_weights must be finite and >= 0, not all zero, got [0.0, 0.0]: each is a model's share of "
         "the combined score."),
        ({"selection_model_weights": [float("nan")]},
         "selection_model_weights must be finite and >= 0, not all zero, got [nan]: each is a model's share of the "
         "combined score."),
    ],
)
def test_a_bad_selection_setting_is_refused_on_construction(setting, message, tmp_path):
    with pytest.raises(SelectionConfigError) as error:
        SelectiveSFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", **setting)
    assert str(error.value) == message


@pytest.mark.parametrize(
    "setting, message",
    [
        ({"selection_num_prompts": 11}, "selection_num_prompts=11 but the default prompt set holds only 10 prompts"),
        ({"selection_ratio": 0.1}, "selection_ratio=0.1 keeps floor(5 x 0.1) = 0 rows"),
        ({"selection_prompts_file": "/no/such/prompts.txt"}, "selection_prompts_file '/no/such/prompts.txt' does not exist."),
        ({"selection_score_max": 10}, "has no single token for the rating(s) ['10']"),
    ],
)
def test_a_setting_that_cannot_work_with_the_data_or_tokenizer_is_refused_before_loading(
    tiny_llama, demo_dataset, tmp_path, setting, message
):
    with pytest.raises(SelectionConfigError) as error:
        make_trainer(tiny_llama, demo_dataset(5), tmp_path, **setting)
    assert message in str(error.value)


def test_an_empty_prompt_file_is_refused(tiny_llama, demo_dataset, tmp_path):
    empty = tmp_path / "prompts.txt"
    empty.write_text("\n   \n", encoding="utf-8")
    with pytest.raises(SelectionConfigError, match=r"No rating prompts found in prompt file '.*prompts.txt'"):
        make_trainer(tiny_llama, demo_dataset(5), tmp_path, selection_prompts_file=str(empty))


def test_the_config_refuses_before_any_trainer_exists(tmp_path):
    # The config alone raises: a typo in a recipe costs nothing, not a model load.
    with pytest.raises(SelectionConfigError):
        cpu_config(tmp_path, selection_alpha=-1)
