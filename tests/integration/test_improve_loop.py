"""The improvement loop end to end on tiny models and a real MLflow registry: v1 serves through the real HTTP server
with a prediction log, monitor stays quiet on unshifted traffic and alerts on a shifted stream, corrections of the
logged answers are imported, retrain builds v2 from new data + feedback + replay, the gate promotes it and refuses a
no-better candidate, and the lineage is written to the registry and the model card."""

from __future__ import annotations

import json
import random
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from conftest import NEUTRAL, build_tiny_bert, tiny_config, toy_rows, write_csv

FILLER = [w for w in NEUTRAL if w not in ("stone", "cloud")]


def old_rows(n: int, seed: int = 0) -> list[dict]:
    """The toy task (a sentiment word gives the label) without the words the new slang will use."""
    return toy_rows(n, seed, FILLER)


def shifted_rows(n: int, seed: int) -> list[dict]:
    """New slang: "cloud" now means pos and "stone" neg; texts are longer. v1 learned neither."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = ["pos", "neg", "neu"][i % 3]
        words = rng.choices(FILLER, k=rng.randint(10, 18))
        if label != "neu":
            words.insert(rng.randrange(len(words) + 1), "cloud" if label == "pos" else "stone")
        rows.append({"text": " ".join(words), "label": label})
    return rows


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    import os

    from tunesmith import finetune
    from tunesmith.runs.registry import promote, register
    from tunesmith.serve import ServeOptions, Server

    tmp = tmp_path_factory.mktemp("improve")
    old_uri = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'registry.db'}"
    bert = build_tiny_bert(tmp / "bert")
    data = write_csv(tmp / "v1.csv", old_rows(600))
    cfg = tiny_config(
        tmp,
        bert,
        data,
        train={"epochs": 6},
        eval={"robustness": False, "efficiency": False, "bootstrap_resamples": 200},
    )
    cfg["data"]["test_size"] = 0.2
    v1 = finetune(cfg)
    register(v1.path, "toy")
    promote("toy", 1)
    log = tmp / "serve" / "predictions.jsonl"
    control, shifted = old_rows(150, seed=11), shifted_rows(150, seed=12)
    truth = {}
    with Server(["toy=models:/toy@production"], ServeOptions(port=0, log=log), say=lambda s: None) as srv:
        for rows in (control, shifted):
            for start in range(0, len(rows), 5):
                chunk = rows[start : start + 5]
                body = json.dumps({"model": "toy", "texts": [r["text"] for r in chunk]}).encode()
                req = urllib.request.Request(
                    srv.url + "/v1/classify", data=body, headers={"content-type": "application/json"}
                )
                answer = json.loads(urllib.request.urlopen(req, timeout=30).read())
                truth.update({f"{answer['id']}:{i}": r["label"] for i, r in enumerate(chunk)})
    yield {
        "tmp": tmp,
        "v1": v1,
        "log": log,
        "truth": truth,
        "new": write_csv(tmp / "new.csv", shifted_rows(300, seed=13)),
        "control": write_csv(tmp / "control.csv", old_rows(150, seed=14)),
    }
    if old_uri is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old_uri


def test_monitor_alerts_on_the_shifted_window_and_not_on_unshifted_traffic(loop, capsys):
    from tunesmith.cli import main

    out = loop["tmp"] / "mon"
    code = main(["monitor", "models:/toy@production", "--log", str(loop["log"]), "--window", "150", "--out", str(out)])
    assert code == 3, capsys.readouterr()
    report = json.loads((out / "monitor.json").read_text())
    control, shifted = report["windows"]
    assert control["n"] == shifted["n"] == 150
    assert not control["alert"] and min(control["p_holm"].values()) >= 0.05
    assert shifted["alert"] and shifted["p_holm"]["length"] < 1e-6 and shifted["p_holm"]["embedding"] < 0.05
    assert shifted["embedding"]["classifier"]["auc"] > control["embedding"]["classifier"]["auc"]
    assert shifted["tests"]["length"]["psi"] > 0.25 > control["tests"]["length"]["psi"]
    for name in ("monitor.md", "monitor.html", "monitor.png"):
        assert (out / name).stat().st_size > 500
    assert "ALERT items 150-299" in capsys.readouterr().out
    # a file of unshifted inputs: exit 0
    assert main(["monitor", str(loop["v1"].path), "--data", str(loop["control"]), "--out", str(out / "c")]) == 0


def test_feedback_retrain_gate_and_lineage(loop, capsys):
    from tunesmith.cli import main
    from tunesmith.runs.registry import list_models
    from tunesmith.runs.run import Run

    tmp, truth = loop["tmp"], loop["truth"]
    ids = list(truth)[150:]  # corrections of the shifted stream's answers
    corrections = write_csv(tmp / "corrections.csv", [{"id": i, "label": truth[i]} for i in ids])
    assert main(["feedback", "import", str(corrections), "--log", str(loop["log"])]) == 0
    fb = pd.read_csv(tmp / "serve" / "feedback.csv")
    assert len(fb) == 150 and fb["error"].sum() > 50  # v1 does not know the new slang
    # with labels, monitor also reports live quality below the test figure
    main(["monitor", "models:/toy@production", "--log", str(loop["log"]), "--window", "150", "--out", str(tmp / "m2")])
    live = json.loads((tmp / "m2" / "monitor.json").read_text())["windows"][1]["live"]
    assert live["n"] == 150 and live["below_test"]

    capsys.readouterr()
    args = ["retrain", "models:/toy@production", "train.epochs=3", "--new", str(loop["new"])]
    assert main([*args, "--feedback", str(loop["log"]), "--out", str(tmp / "runs"), "--replay", "2"]) == 0
    cand = sorted((tmp / "runs").glob("tiny-retrain-*"))[-1]
    record = json.loads((cand / "retrain.json").read_text())
    assert record["parent"]["version"] == 1 and record["feedback"]["rows"] == 150
    assert record["replay"]["rows"] > 0 and record["replay"]["of"] == loop["v1"].info["data"]["splits"]["train"]["rows"]
    old_test = pd.read_csv(record["sets"]["old_test"], keep_default_na=False)
    assert old_test["text"].tolist() == pd.read_csv(loop["v1"].path / "test_predictions.csv")["text"].tolist()
    train = pd.read_csv(cand.parent / ".retrain" / Path(record["sets"]["old_test"]).parent.name / "train.csv")
    assert not set(train["text"]) & set(old_test["text"])  # the fixed benchmark never leaks into training
    assert "old_test" in Run(cand).metrics["sets"]

    # a no-better candidate (v1 itself) is refused with exit 3; production stays v1
    assert main(["promote", "toy", "--if-better", str(loop["v1"].path)]) == 3
    assert "refused: it is not better on the new data" in capsys.readouterr().out
    assert main(["promote", "toy", "--if-better", str(cand), "--margin", "0.05"]) == 0, capsys.readouterr().out
    said = capsys.readouterr().out
    assert "promoted: toy@production -> version 2" in said
    gate = json.loads((cand / "gate.json").read_text())
    assert gate["sets"]["new"]["delta"]["low"] > 0 and gate["sets"]["old"]["delta"]["low"] > -0.05
    rows = {r["version"]: r for r in list_models()}
    assert rows[2]["aliases"] == ["production"] and rows[2]["tags"]["parent_version"] == "1"
    assert "150 corrected items" in rows[2]["tags"]["gate"]
    assert "## Lineage" in (cand / "MODEL_CARD.md").read_text()
    assert main(["models", "--lineage", "toy"]) == 0
    chain = capsys.readouterr().out.splitlines()
    assert chain[0].startswith("v1 (first version)") and chain[1].startswith("v2 [production] <- v1")
    assert chain[2].strip().startswith("v2 vs v1: +")


def test_loop_mistakes_are_one_line(loop, tmp_path, capsys):
    from conftest import run_cli

    from tunesmith.cli import main

    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{loop['tmp'] / 'registry.db'}"}
    res = run_cli("promote", "toy", env=env)  # one real process: exit code 2, one line, no traceback
    assert res.returncode == 2 and "give the VERSION to promote, or --if-better RUN" in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert main(["retrain", str(loop["v1"].path), "--out", str(tmp_path)]) == 2
    assert "give new labelled data" in capsys.readouterr().err
    assert main(["monitor", str(loop["v1"].path), "--log", str(tmp_path / "none.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["promote", "toy", "--if-better", str(tmp_path / "nothing")]) == 2
    assert "not a tunesmith run folder" in capsys.readouterr().err
