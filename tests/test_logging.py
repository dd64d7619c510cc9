"""The selection in the training's records: TensorBoard scalars (read back from the event file) and the model card."""

import re

import pytest
from conftest import cpu_config
from datasets import Dataset
from peft import LoraConfig
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from selectit_trl import SelectiveSFTTrainer
from selectit_trl.store.outputs import read_summary
from selectit_trl.training.card import SECTION_TITLE


def _rows(n):
    return [{"instruction": f"Give the number after {i}.", "input": "", "output": f"{i + 1}" + " then more." * (i % 3)}
            for i in range(n)]


@pytest.fixture(scope="module")
def trained(tiny_llama, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("logged")
    args = cpu_config(output_dir, report_to=["tensorboard"], logging_strategy="steps", logging_steps=1,
                      selection_ratio=0.25, selection_probe=True, selection_probe_size=6)
    trainer = SelectiveSFTTrainer(model=tiny_llama, args=args, train_dataset=Dataset.from_list(_rows(20)),
                                  peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    trainer.train()
    trainer.save_model()
    return output_dir, read_summary(output_dir), tiny_llama


def test_selection_statistics_reach_tensorboard(trained):
    output_dir, summary, model_id = trained
    events = sorted(output_dir.glob("runs/**/events.out.tfevents.*"))
    assert events, "no TensorBoard event file"
    accumulator = EventAccumulator(str(events[0].parent)).Reload()

    def scalar(name):
        values = accumulator.Scalars(f"train/selection/{name}")
        assert [v.step for v in values] == [0]  # logged once, when training starts
        return values[0].value

    assert scalar("kept") == summary["counts"]["selected"] == 5
    assert scalar("total") == summary["counts"]["total"] == 20
    assert scalar("kept_fraction") == pytest.approx(0.25)
    assert scalar("scoring_seconds") == pytest.approx(summary["scoring_seconds"], rel=1e-6)
    for quantile, value in summary["score_quantiles"].items():
        assert scalar(f"score_q{quantile}") == pytest.approx(value, rel=1e-6, abs=1e-7)
    assert scalar(f"weight/{model_id}") == 1.0
    assert scalar("probe_auroc") == pytest.approx(summary["probe"]["auroc"]["combined"], rel=1e-6)
    assert scalar(f"probe_auroc/{model_id}") == pytest.approx(summary["probe"]["auroc"][model_id], rel=1e-6)
    assert "train/loss" in accumulator.Tags()["scalars"]  # the training's own logging is untouched


def _card_rows(text):
    section = text.split(SECTION_TITLE, 1)[1]
    return dict(re.findall(r"^\| ([^|]+?) \| (.+?) \|$", section, flags=re.M))


def test_model_card_gets_a_data_selection_section_matching_the_summary(trained):
    output_dir, summary, model_id = trained
    text = (output_dir / "README.md").read_text(encoding="utf-8")
    assert text.count(SECTION_TITLE) == 1
    assert "library_name: peft" in text  # peft's card, kept, with the section added to it
    rows = _card_rows(text)
    settings = summary["selection_config"]
    assert rows["Kept"] == f"{summary['counts']['selected']} of {summary['counts']['total']} rows (25.0%)"
    assert rows["Ratio"] == str(settings["selection_ratio"])
    assert rows["Rating prompts (K)"] == str(settings["selection_num_prompts"]) == "3"
    assert rows["α (prompt disagreement penalty)"] == str(settings["selection_alpha"])
    assert rows["Rating scale (S)"] == f"1..{settings['selection_score_max']}"
    assert rows["Signal probe AUROC"].startswith(f"{summary['probe']['auroc']['combined']:.3f} on 6 clean")
    assert rows["Kept indices (sha256)"] == f"`{summary['selected_indices_sha256']}`"
    model = summary["models"][0]
    assert rows[model_id] == f"{model['num_parameters']:,} | {model['weight']:.4f}"
    assert "SelectIT" in rows["Method"]


def test_the_model_card_is_a_real_card_with_the_selection_near_the_top(trained):
    """PEFT's template is replaced: Hub metadata, what was trained on what, and no placeholder left."""
    from huggingface_hub import ModelCard

    output_dir, summary, _ = trained
    card = ModelCard.load(output_dir / "README.md")
    meta = card.data.to_dict()
    assert meta["library_name"] == "peft" and meta["pipeline_tag"] == "text-generation"
    assert "base_model" not in meta  # a local model has no Hub id, and a path would not be valid there
    assert {"lora", "selectit-trl", "data-selection", "trl", "sft"} <= set(meta["tags"])
    assert "[More Information Needed]" not in card.text and "Model Card for Model ID" not in card.text
    headings = [line for line in card.text.splitlines() if line.startswith("#")]
    assert headings[:4] == [f"# {output_dir.name}", SECTION_TITLE, "## Training", "## Use"]
    rows = _card_rows(card.text)
    assert rows["Fine-tuning"] == "LoRA, r = 4, α = 8, dropout 0.0, on q_proj, v_proj"
    assert rows["Steps"] == "2 (max_steps 2)" and rows["Batch"] == "2 per device × 1 accumulation × 1 process(es)"
    first = card.text.split(SECTION_TITLE)[0]
    assert f"on {summary['counts']['selected']} of the {summary['counts']['total']} rows of its training data" in first
