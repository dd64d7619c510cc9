"""`selectit-trl report`: numbers checked by hand on a fixed score file, and the plots checked as images."""

import json
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from selectit_trl.cli import main as cli_main
from selectit_trl.reporting import plots, report, score_files
from selectit_trl.store.outputs import selection_dir

# Six rows, two models, K=3 prompts, S=3. The values are chosen so that every statistic has a closed form.
SCORES = [0.9, 0.1, 0.5, 0.7, 0.3, 0.2]  # ranks 6 1 4 5 3 2; the top two (rows 0 and 3) are kept
SENTENCE = {"a": SCORES, "b": [0.1, 0.9, 0.5, 0.3, 0.7, 0.8]}  # b ranks the rows exactly the other way round
TOKEN = {
    # a: P1 and P2 rank alike; P3 swaps two neighbouring pairs, so rho(P1, P3) = 1 - 6*4/(6*35) = 31/35
    "a": [[1, 10, 2], [2, 20, 1], [3, 30, 3], [4, 40, 4], [5, 50, 6], [6, 60, 5]],
    # b: P2 is P1 reversed, P3 is P1
    "b": [[1, 6, 1], [2, 5, 2], [3, 4, 3], [4, 3, 4], [5, 2, 5], [6, 1, 6]],
}
UP, MID, DOWN, TIE = [0.1, 0.2, 0.7], [0.2, 0.6, 0.2], [0.7, 0.2, 0.1], [0.4, 0.4, 0.2]
PROBS = {
    # top ratings per prompt; the tie in row 2 goes to the lower rating, as the token score takes it
    "a": [[UP] * 3, [DOWN] * 3, [TIE] * 3, [MID] * 3, [UP] * 3, [[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]]],
    "b": [[DOWN, UP, DOWN], [[0.2, 0.7, 0.1], DOWN, DOWN], [UP] * 3, [UP] * 3, [UP] * 3, [UP] * 3],
}
CHARS = [100, 10, 50, 200, 30, 20]
PROBE = {"pairs": 4, "auroc": {"a": 0.75, "b": 0.5, "combined": 0.625}, "threshold": 0.6, "below_threshold": False,
         "scoring_seconds": 1.0}


def write_fixed_selection(output_dir, with_peer=True, with_lengths=True):
    models = ["a", "b"] if with_peer else ["a"]
    folder = selection_dir(output_dir)
    folder.mkdir(parents=True)
    with open(folder / "scores.jsonl", "w", encoding="utf-8") as handle:
        for i, score in enumerate(SCORES):
            record = {
                "index": i, "score": score, "selected": i in (0, 3),
                "sentence_scores": {m: SENTENCE[m][i] for m in models},
                "token_scores": {m: TOKEN[m][i] for m in models},
                "probs": {m: PROBS[m][i] for m in models},
                "truncated": i == 4,
            }
            if with_lengths:
                record["response_chars"] = CHARS[i]
            handle.write(json.dumps(record) + "\n")
    example = {"index": 0, "score": 0.9, "instruction": "Name a colour | please", "response": "Blue."}
    summary = {
        "selection_config": {"selection_num_prompts": 3, "selection_score_max": 3, "selection_alpha": 0.2,
                             "selection_normalization": "paper", "selection_prompt_layout": "sample_first",
                             "selection_ratio": 0.34, "selection_max_samples": None},
        "counts": {"total": 6, "selected": 2},
        "models": [{"id": m, "num_parameters": 1000 * (j + 1), "weight": 0.5} for j, m in enumerate(models)],
        "scoring_seconds": 2.5,
        "prompts": ["First?", "Second?", "Third?"],
        "truncated": {"count": 1, "indices": [4]},
        "probe": PROBE,
        "selected_indices_sha256": "0" * 64,
        "examples": {"top": [example], "bottom": [example]},
    }
    (folder / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    return folder


def test_statistics_match_a_hand_computation(tmp_path):
    write_fixed_selection(tmp_path)
    stats = score_files.statistics(score_files.read_score_files(tmp_path))

    assert (stats["total"], stats["kept"], stats["cutoff"]) == (6, 2, 0.7)
    # numpy's linear quantiles of 0.1 0.2 0.3 0.5 0.7 0.9
    assert stats["quantiles"] == pytest.approx({0.0: 0.1, 0.25: 0.225, 0.5: 0.4, 0.75: 0.65, 1.0: 0.9}, abs=1e-12)
    # a agrees with the combined score, b is its exact reverse
    np.testing.assert_allclose(stats["model_spearman"], [[1, -1, 1], [-1, 1, -1], [1, -1, 1]], atol=1e-12)

    a, b = stats["prompts"]["a"], stats["prompts"]["b"]
    rho = float(Fraction(31, 35))
    np.testing.assert_allclose(a["spearman"], [[1, 1, rho], [1, 1, rho], [rho, rho, 1]], atol=1e-12)
    assert a["mean_spearman"] == pytest.approx(float(Fraction(97, 105)), abs=1e-12)
    np.testing.assert_allclose(b["spearman"], [[1, -1, 1], [-1, 1, -1], [1, -1, 1]], atol=1e-12)
    assert b["mean_spearman"] == pytest.approx(-1 / 3, abs=1e-12)
    # top ratings of a: P1 3 1 1 2 3 1, P2 3 1 1 2 3 2, P3 3 1 1 2 3 3 (only row 5 differs)
    assert a["top_rating_differs"] == pytest.approx(1 / 6)
    np.testing.assert_allclose(a["top_rating_shares"] * 6, [[3, 1, 2], [2, 2, 2], [2, 1, 3]])
    assert b["top_rating_differs"] == pytest.approx(2 / 6)  # rows 0 and 1

    # score ranks 6 1 4 5 3 2 against length ranks 5 1 4 6 3 2: sum d^2 = 2, rho = 1 - 12/210
    assert stats["length"]["spearman"] == pytest.approx(float(Fraction(33, 35)), abs=1e-12)
    assert stats["length"]["kept_median_chars"] == 150.0  # 100 and 200
    assert stats["length"]["dropped_median_chars"] == 25.0  # 10 20 30 50
    assert stats["truncated"] == {"count": 1, "indices": [4]}


def test_a_constant_column_gives_nan_correlations_in_a_full_matrix():
    columns = np.column_stack([[1, 2, 3, 4], [4, 3, 2, 1], [7, 7, 7, 7]])
    rho = score_files._spearman_matrix(columns)
    assert rho.shape == (3, 3)  # scipy's spearmanr collapses this case to one NaN
    np.testing.assert_allclose(rho[:2, :2], [[1, -1], [-1, 1]], atol=1e-12)
    assert np.isnan(rho[2]).all() and np.isnan(rho[:, 2]).all()


def _pixels(path):
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size, np.asarray(image.convert("RGB"))


def _has_colour(pixels, hex_colour, tolerance=40):
    rgb = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])
    return bool((np.abs(pixels.astype(int) - rgb).sum(axis=-1) <= tolerance).any())


def test_report_writes_real_plots_and_markdown(tmp_path, capsys):
    folder = write_fixed_selection(tmp_path)
    assert cli_main(["report", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "SelectIT kept 2 of 6 samples; cut-off score 0.700" in printed
    assert "Signal probe AUROC 0.625" in printed and "(4 plots)" in printed

    expected_sizes = {"score_distribution": (800, 450), "models": (1300, 500), "prompt_agreement": (1300, 1000),
                      "length": (1300, 480)}
    for name, size in expected_sizes.items():
        got, pixels = _pixels(folder / f"{name}.png")
        assert got == size, name
        # not blank: many colours, and the ink is not all in one place
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50, name
        assert pixels.std() > 20, name
    # the kept and dropped bars are drawn in their colours
    _, pixels = _pixels(folder / "score_distribution.png")
    assert _has_colour(pixels, plots.KEPT_COLOUR) and _has_colour(pixels, plots.DROPPED_COLOUR)

    text = (folder / "report.md").read_text(encoding="utf-8")
    for name in expected_sizes:
        assert f"]({name}.png)" in text
    assert "| a | 0.924 | 16.7% |" in text  # 97/105 and 1/6
    assert "| b | -0.333 | 33.3% |" in text
    assert "| combined | 0.625 |" in text
    assert "Name a colour \\| please" in text  # a pipe in a cell does not break the table
    assert "lost their middle: 4." in text


def test_report_without_peers_or_lengths_skips_those_parts(tmp_path):
    folder = write_fixed_selection(tmp_path, with_peer=False, with_lengths=False)
    summary = report.write_report(tmp_path)
    assert "(2 plots)" in summary
    assert not (folder / "models.png").exists() and not (folder / "length.png").exists()
    size, _ = _pixels(folder / "prompt_agreement.png")
    assert size == (1300, 500)  # one model, one row of panels


def test_report_on_a_missing_selection_says_what_to_run(tmp_path, capsys):
    assert cli_main(["report", str(tmp_path)]) == 1
    assert "run `selectit-trl score` or `train` first" in capsys.readouterr().err
