"""The public strategy API: the two examples of docs/strategies.md run as written, and a package installed with
`pip install -e` adds a strategy through the entry point, usable by name on the command line and in a mix."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_cli import cli, write_recipe
from test_trainer import make_trainer

from selectit_trl.store.outputs import read_scores, read_summary, selection_dir
from selectit_trl.strategies import Strategy, register_strategy, strategy_names

pytestmark = pytest.mark.slow

DOCS = Path(__file__).resolve().parents[1] / "docs" / "strategies.md"


def doc_examples() -> list[str]:
    section = DOCS.read_text(encoding="utf-8").split("## Your own strategy", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


@pytest.fixture(scope="module")
def documented():
    """The docs' examples executed once; the registry is put back as it was afterwards."""
    from selectit_trl.strategies import base

    before = dict(base._REGISTRY)
    for code in doc_examples():
        exec(compile(code, str(DOCS), "exec"), {})
    yield
    base._REGISTRY.clear()
    base._REGISTRY.update(before)


def kept_first(values: list[float], kept: list[int]) -> bool:
    """Every kept row's value is at least every dropped row's."""
    dropped = [v for i, v in enumerate(values) if i not in set(kept)]
    return min(values[i] for i in kept) >= max(dropped)


def test_the_docs_define_two_strategies_that_join_the_built_in_ones(documented):
    assert len(doc_examples()) == 2
    assert strategy_names() == ("selectit", "ifd", "rifd", "length", "random", "lexical_diversity", "middle_perplexity")


def test_a_strategy_that_needs_no_model_selects_by_its_values_and_measures_nothing(documented, tiny_llama,
                                                                                    demo_dataset, tmp_path):
    dataset = demo_dataset(20)
    result = make_trainer(tiny_llama, dataset, tmp_path, selection_strategy="lexical_diversity",
                          selection_ratio=0.25).select()

    def distinct_share(text):
        words = text.lower().split()
        return len(set(words)) / len(words)

    expected = [distinct_share(row["output"]) for row in dataset]
    assert [r["strategy_scores"]["lexical_diversity"] for r in read_scores(tmp_path)] == expected
    assert len(result.selected_indices) == 5 and kept_first(expected, result.selected_indices)
    assert read_summary(tmp_path)["scored_this_run"] == {}  # no forward pass


def test_a_strategy_that_needs_a_loss_reads_the_loss_engine(documented, tiny_llama, demo_dataset, tmp_path):
    result = make_trainer(tiny_llama, demo_dataset(20), tmp_path, selection_strategy="middle_perplexity",
                          selection_ratio=0.25).select()
    records = read_scores(tmp_path)
    loss = np.array([r["losses"]["ifd"][0] for r in records])
    expected = (-np.abs(loss - np.median(loss))).tolist()
    assert [r["strategy_scores"]["middle_perplexity"] for r in records] == expected
    assert kept_first(expected, result.selected_indices)
    assert read_summary(tmp_path)["scored_this_run"] == {"ifd:" + tiny_llama: 20}


def test_a_strategy_must_say_what_it_measures_from_what_there_is():
    with pytest.raises(ValueError, match=r"needs \['embeddings'\]; selectit-trl measures ratings, ifd, rifd"):
        @register_strategy("needs_embeddings")
        class NeedsEmbeddings(Strategy):
            needs = ("embeddings",)
    assert "needs_embeddings" not in strategy_names()


PLUGIN_CODE = '''"""A strategy that a package adds: shortest responses first, registered by its entry point alone."""
import numpy as np

from selectit_trl.strategies import Strategy


class ShortestFirst(Strategy):
    def values(self, samples, measurements):
        return -np.array([float(len(s.response)) for s in samples])
'''

PLUGIN_PROJECT = '''[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "selectit-trl-test-plugin"
version = "0.0.1"

[project.entry-points."selectit_trl.strategies"]
shortest_first = "shortest_first:ShortestFirst"
'''


@pytest.fixture
def installed_plugin(tmp_path_factory):
    """A package declaring `shortest_first` in the entry-point group, installed editable into this environment
    for the test and uninstalled after it."""
    package = tmp_path_factory.mktemp("plugin")
    (package / "shortest_first").mkdir()
    (package / "shortest_first" / "__init__.py").write_text(PLUGIN_CODE, encoding="utf-8")
    (package / "pyproject.toml").write_text(PLUGIN_PROJECT, encoding="utf-8")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    done = subprocess.run([*pip, "install", "--quiet", "--no-deps", "--no-build-isolation", "-e", str(package)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    yield "shortest_first"
    subprocess.run([*pip, "uninstall", "--yes", "--quiet", "selectit-trl-test-plugin"], capture_output=True, timeout=300)


def test_an_installed_package_adds_a_strategy_for_the_command_line_mixes_the_probe_and_the_report(
        installed_plugin, tiny_llama, demo_rows, tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in demo_rows[:16]), encoding="utf-8")
    alone, mixed = tmp_path / "alone", tmp_path / "mixed"

    done = cli("score", "--config", write_recipe(tmp_path, tiny_llama, data, output_dir=str(alone)),
               "--selection_strategy", installed_plugin)
    assert done.returncode == 0, done.stderr[-3000:]
    records = read_scores(alone)
    expected = [-float(len(row["output"])) for row in demo_rows[:16]]
    assert [r["strategy_scores"][installed_plugin] for r in records] == expected
    assert kept_first(expected, [r["index"] for r in records if r["selected"]])

    done = cli("score", "--config", write_recipe(tmp_path, tiny_llama, data, output_dir=str(mixed)),
               "--selection_strategy", f"selectit:0.5,{installed_plugin}:0.5")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = read_summary(mixed)
    assert summary["strategy"] == {"selectit": 0.5, installed_plugin: 0.5}
    assert set(summary["probe"]["auroc_by_strategy"]) == {"selectit", installed_plugin}
    report = (selection_dir(mixed) / "report.md").read_text(encoding="utf-8")
    assert f"selectit 0.50 + {installed_plugin} 0.50" in report
    assert cli("report", mixed).returncode == 0
