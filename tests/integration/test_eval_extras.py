"""The extended evaluation of a real (tiny) run: intervals, extra sets, slices, fairness, calibration,
robustness, efficiency, report sections and MODEL_CARD.md; plus the calibration math on constructed cases."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import tiny_config, toy_rows, write_csv

from tunesmith.errors import ConfigError
from tunesmith.evaluate.calibration import apply_temperature, expected_calibration_error, fit_temperature
from tunesmith.evaluate.robustness import PERTURBATIONS
from tunesmith.evaluate.slices import length_buckets


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model):
    from tunesmith import finetune

    tmp = tmp_path_factory.mktemp("extras")
    rows = toy_rows(300)
    for i, r in enumerate(rows):
        r["source"] = "forum" if i % 4 == 0 else "news"
    data = write_csv(tmp / "toy.csv", rows)
    other = write_csv(tmp / "other.csv", toy_rows(60, seed=9))
    cfg = tiny_config(
        tmp,
        tiny_model,
        data,
        train={"epochs": 4},
        eval={
            "sets": {"ood": str(other)},
            "slice_by": ["source"],
            "sensitive_column": "source",
            "min_slice_size": 5,
            "robustness_samples": 20,
            "efficiency_batches": 4,
            "bootstrap_resamples": 200,
        },
    )
    return finetune(cfg)


def test_run_records_intervals_sets_slices_calibration_robustness_efficiency(finished_run):
    m = finished_run.metrics
    test = m["test"]
    assert {"macro_f1", "accuracy", "per_class"} <= set(test)  # the existing keys are kept
    for key in ("macro_f1", "accuracy", "loss"):
        assert m["test_ci"][key]["low"] <= test[key] <= m["test_ci"][key]["high"]
    assert m["test_ci"]["macro_f1"]["low"] < m["test_ci"]["macro_f1"]["high"]
    assert m["sets"]["ood"]["n"] == 60 and 0 <= m["sets"]["ood"]["macro_f1"] <= 1
    assert set(m["slices"]["source"]["slices"]) == {"forum", "news"}
    assert sum(s["n"] for s in m["slices"]["source"]["slices"].values()) == test["n"]
    assert m["slices"]["source"]["worst"] in {"forum", "news"}
    assert sum(s["n"] for s in m["slices"]["text length"]["slices"].values()) == test["n"]
    assert 0 <= m["slices"]["fairness"]["demographic_parity_difference"] <= 1
    cal = m["calibration"]
    assert 0 <= cal["ece"] <= 1 and cal["temperature"] > 0 and "after_scaling" in cal
    assert set(m["robustness"]["perturbations"]) == set(PERTURBATIONS) and m["robustness"]["n"] == 20
    eff = m["efficiency"]
    assert eff["batch_1_latency_ms_p95"] >= eff["batch_1_latency_ms_p50"] > 0 and eff["model_size_bytes"] > 0
    assert m["extended_seconds"]["total"] > 0


def test_run_folder_has_plots_report_sections_and_model_card(finished_run):
    path = finished_run.path
    for name in ("reliability.png", "slices.png", "robustness.png", "MODEL_CARD.md"):
        assert (path / name).is_file(), name
    report = (path / "report.md").read_text()
    assert (
        "bootstrap CI" in report
        and "## Calibration" in report
        and report.index("## Robustness") < report.index("## Load it")
    )
    card = (path / "MODEL_CARD.md").read_text()
    for heading in (
        "## Model details",
        "## Intended use and limits",
        "## Data",
        "## Metrics",
        "## Slices (test)",
        "## Calibration",
        "## Known weaknesses",
        "## How to load it",
    ):
        assert heading in card, heading
    assert json.loads((path / "run.json").read_text())["data"]["splits"]["test"]["fingerprint"] in card


def test_eval_config_is_checked(tmp_path, tiny_model, toy_csv):
    from tunesmith.config import load_config

    with pytest.raises(ConfigError, match="eval.sets.ood: file .* not found"):
        load_config(tiny_config(tmp_path, tiny_model, toy_csv, eval={"sets": {"ood": str(tmp_path / "missing.csv")}}))
    with pytest.raises(ConfigError, match="eval.ci_level"):
        load_config(tiny_config(tmp_path, tiny_model, toy_csv, eval={"ci_level": 95}))


def test_ece_zero_when_confidence_matches_accuracy_and_temperature_fixes_overconfidence():
    rng = np.random.default_rng(0)
    n = 4000
    # A model that says 0.8 and is right 80% of the time is calibrated: ECE ~ 0.
    y = rng.integers(0, 2, n)
    right = rng.random(n) < 0.8
    pred = np.where(right, y, 1 - y)
    probs = np.where(pred[:, None] == np.arange(2), 0.8, 0.2)
    assert expected_calibration_error(y, probs) < 0.02
    # The same predictions at 0.99 confidence are over-confident; a fitted temperature > 1 repairs it.
    over = np.where(pred[:, None] == np.arange(2), 0.99, 0.01)
    assert expected_calibration_error(y, over) > 0.15
    t = fit_temperature(y[:2000], over[:2000])
    assert t > 1
    assert expected_calibration_error(y[2000:], apply_temperature(over[2000:], t)) < 0.03
    assert (apply_temperature(over, t).argmax(1) == over.argmax(1)).all()  # labels unchanged


def test_length_buckets_and_perturbations():
    texts = [" ".join(["word"] * k) for k in range(1, 31)]
    buckets = length_buckets(texts, 3)
    assert len(set(buckets)) == 3 and buckets[0] == "1-10 words" and buckets[-1] == ">20 words"
    import random

    text = "Hello, wonderful world! Flights delayed again."
    for name, fn in PERTURBATIONS.items():
        assert fn(text, random.Random(0)) != text, name


def test_a_wrong_slice_column_stops_the_run_before_training(tmp_path, tiny_model, toy_csv):
    from conftest import run_cli, tiny_config, write_yaml

    cfg = write_yaml(tmp_path / "c.yaml", tiny_config(tmp_path, tiny_model, toy_csv, eval={"slice_by": ["sourse"]}))
    res = run_cli("train", str(cfg))
    assert res.returncode == 2 and "no column ['sourse'] for eval.slice_by" in res.stderr
    assert not (tmp_path / "runs").exists()
