"""Real public Alpaca-format data from the shared folder; skipped cleanly when it is absent."""

import pytest
from conftest import cpu_config
from datasets import load_dataset

from selectit_trl import SelectiveSFTTrainer
from selectit_trl.data.formats import detect_format, rating_samples
from selectit_trl.store.outputs import read_scores


@pytest.fixture(scope="module")
def alpaca(shared_data_dir):
    path = shared_data_dir / "alpaca_subsets" / "llamafactory_alpaca_en_demo.json"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return load_dataset("json", data_files=str(path), split="train")


def test_alpaca_subset_is_read_in_full(alpaca):
    assert len(alpaca) == 999
    assert detect_format(alpaca.column_names) == "alpaca"
    samples = rating_samples(alpaca)
    assert len(samples) == 999
    with_input = [i for i, row in enumerate(alpaca) if row["input"]]
    assert with_input, "the subset has rows with an input"
    i = with_input[0]
    assert samples[i].instruction == alpaca[i]["instruction"] + "\n" + alpaca[i]["input"]


def test_select_on_real_rows(tiny_llama, alpaca, tmp_path):
    rows = alpaca.select(range(24))
    result = SelectiveSFTTrainer(model=tiny_llama, args=cpu_config(tmp_path), train_dataset=rows).select()
    assert len(result.selected_indices) == 4  # floor(24 * 0.2)
    assert len(read_scores(tmp_path)) == 24
