"""`tunesmith compare` on real tiny runs: identical runs are not different, a better-trained run is, runs
tested on different data are refused, and the Markdown/HTML pages hold the verdict, deltas and diffs."""

from __future__ import annotations

import json

import pytest
from conftest import tiny_config

from tunesmith.errors import RunError
from tunesmith.evaluate.compare_html import headlines, write_comparison
from tunesmith.tools.compare import compare_runs

FAST_EVAL = {"robustness": False, "efficiency": False, "bootstrap_resamples": 200}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model, toy_csv):
    from tunesmith import finetune

    tmp = tmp_path_factory.mktemp("compare")
    weak = tiny_config(tmp, tiny_model, toy_csv, name="weak", train={"max_steps": 3}, eval=FAST_EVAL)
    strong = tiny_config(tmp, tiny_model, toy_csv, name="strong", train={"epochs": 12}, eval=FAST_EVAL)
    other_data = tiny_config(tmp, tiny_model, toy_csv, name="other", seed=7, train={"max_steps": 3}, eval=FAST_EVAL)
    return {
        "weak": finetune(weak).path,
        "weak2": finetune(weak).path,
        "strong": finetune(strong).path,
        "other": finetune(other_data).path,
    }


def test_identical_runs_no_significant_difference(runs):
    result = compare_runs([runs["weak"], runs["weak2"]], resamples=300)
    c = result["comparisons"][0]
    assert result["paired"] and c["metrics"]["macro_f1"]["delta"] == 0 and c["metrics"]["macro_f1"]["p"] == 1.0
    assert c["verdict"].startswith("no significant difference") and c["mcnemar"]["fixed"] == c["mcnemar"]["broke"] == 0
    assert not result["config_diff"]  # only the names differ, and those are left out


def test_better_trained_run_is_significantly_better(runs, tmp_path):
    result = compare_runs([runs["weak"], runs["strong"]], resamples=500)
    c = result["comparisons"][0]
    d = c["metrics"]["macro_f1"]
    assert d["b"] > d["a"] and d["low"] > 0 and d["p"] < 0.05, d
    assert c["verdict"].startswith(f"{runs['strong'].name} is better by")
    assert c["mcnemar"]["fixed"] > c["mcnemar"]["broke"] and len(c["fixed"]) > 0
    assert {"train.epochs", "train.max_steps"} <= {x["key"] for x in result["config_diff"]}
    assert all(x["same"] for x in result["data_diff"])
    assert set(c["per_class"]) == {"neg", "neu", "pos"} and "text length" in c["slices"]
    md, html = write_comparison(result, tmp_path / "cmp")
    text = md.read_text()
    assert headlines(result)[0].split(":")[1].strip() in text and "## Config diff" in text and "## Data diff" in text
    page = html.read_text()
    assert page.count("data:image/png;base64,") == 3 and "is better by" in page
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text())["paired"] is True
    for png in ("metrics.png", "per_class.png", "loss_curves.png"):
        assert (tmp_path / "cmp" / png).stat().st_size > 1000


def test_different_test_data_is_refused_unless_allowed(runs):
    with pytest.raises(RunError, match="tested on different data"):
        compare_runs([runs["weak"], runs["other"]])
    result = compare_runs([runs["weak"], runs["other"]], allow_different_data=True)
    assert not result["paired"] and "mcnemar" not in result["comparisons"][0]
    assert "not paired" in result["comparisons"][0]["verdict"]
    assert not next(x for x in result["data_diff"] if x["split"] == "test")["same"]


def test_three_runs_holm_adjusted_and_cli(runs, tmp_path, capsys):
    from tunesmith.cli import main

    out = tmp_path / "three"
    assert (
        main(
            [
                "compare",
                str(runs["weak"]),
                str(runs["weak2"]),
                str(runs["strong"]),
                "--out",
                str(out),
                "--resamples",
                "300",
            ]
        )
        == 0
    )
    assert "Holm-adjusted" in capsys.readouterr().out and (out / "compare.html").is_file()
    assert main(["compare", str(runs["weak"]), str(runs["other"]), "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.startswith("error: compare: the runs were tested on different data")
