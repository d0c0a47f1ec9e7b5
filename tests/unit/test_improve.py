"""The improvement loop's parts without training: feedback joined to a real prediction-log file, the retrain's
de-duplication against both test sets, monitor windows, and the gate's rule on planted predictions."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tunesmith.config.schema import AuditConfig
from tunesmith.errors import ConfigError, DataError
from tunesmith.evaluate.stats import paired_delta
from tunesmith.tools.feedback import import_feedback, logged_items, read_feedback
from tunesmith.tools.gate import decide
from tunesmith.tools.monitor import cut
from tunesmith.tools.retrain import _stratified, drop_test_duplicates


def write_log(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def classify(rid, texts, labels, model="prod", t=0.0, **extra):
    outs = [{"label": lab, "score": 0.6, "probs": {"neg": 0.4, "pos": 0.6}} for lab in labels]
    return {
        "time": t,
        "request_id": rid,
        "endpoint": "classify",
        "model": model,
        "version": "v1",
        "inputs": texts,
        "outputs": outs,
        "status": 200,
        **extra,
    }


def test_feedback_joins_ids_to_logged_items_merges_and_counts_errors(tmp_path):
    log = write_log(
        tmp_path / "serve" / "predictions.jsonl",
        [
            classify("r1", ["good day", "bad day"], ["pos", "pos"]),
            classify("r2", ["fine"], ["pos"], t=1.0),
            {**classify("r3", ["x"], ["neg"]), "status": 503},  # failed requests are not items
            classify("r1", ["good day", "bad day"], ["neg", "neg"], model="cand", shadow_of="prod"),
        ],
    )
    items = logged_items(log)
    assert items["id"].tolist() == ["r1:0", "r1:1", "r2:0"]  # the shadow's answers are not production's
    assert logged_items(log.parent)["id"].tolist() == items["id"].tolist()  # `--log serve/`: the folder's one log
    assert logged_items(log, shadows=True)["model"].unique().tolist() == ["cand"]
    corrections = tmp_path / "c.csv"
    pd.DataFrame({"id": ["r1:1", "r2", "nope:0"], "label": ["neg", "pos", "neg"], "rater": ["a", "b", "c"]}).to_csv(
        corrections, index=False
    )
    said = []
    out = import_feedback(corrections, log, say=said.append)
    assert (out["joined"], out["errors"], out["confirmed"], out["not_in_log"]) == (2, 1, 1, 1)
    fb = read_feedback(tmp_path / "serve" / "feedback.csv")
    assert fb.set_index("id").loc["r1:1", ["text", "label", "predicted", "rater"]].tolist() == [
        "bad day",
        "neg",
        "pos",
        "a",
    ]
    assert fb.set_index("id").loc["r2:0", "error"] in (False, "False")  # a bare request id names its only item
    assert "1 ids are not in the log" in said[0]
    # importing again: the newer correction of an id wins, others are kept
    pd.DataFrame({"id": ["r1:1", "r1:0"], "label": ["pos", "neg"]}).to_csv(corrections, index=False)
    assert import_feedback(corrections, log, say=said.append)["total"] == 3
    fb = read_feedback(tmp_path / "serve" / "feedback.csv").set_index("id")
    assert fb.loc["r1:1", "label"] == "pos" and fb.loc["r1:0", "label"] == "neg" and len(fb) == 3


def test_feedback_mistakes_are_one_line(tmp_path):
    log = write_log(tmp_path / "p.jsonl", [classify("r1", ["a"], ["pos"])])
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"ident": ["r1:0"], "label": ["pos"]}).to_csv(bad, index=False)
    with pytest.raises(DataError, match="no 'id' column"):
        import_feedback(bad, log)
    pd.DataFrame({"id": ["zz:0"], "label": ["pos"]}).to_csv(bad, index=False)
    with pytest.raises(DataError, match="none of its 1 ids is in"):
        import_feedback(bad, log)
    with pytest.raises(ConfigError, match="does not exist"):
        import_feedback(bad, tmp_path / "missing.jsonl")


def test_generative_corrections_become_trainable_samples(tmp_path):
    log = write_log(
        tmp_path / "p.jsonl",
        [
            {
                "request_id": "g1",
                "endpoint": "generate",
                "model": "lm",
                "inputs": ["2+2="],
                "outputs": ["5"],
                "status": 200,
            },
            {
                "request_id": "c1",
                "endpoint": "chat",
                "model": "lm",
                "inputs": [{"role": "user", "content": "hi"}],
                "outputs": ["yo"],
                "status": 200,
            },
        ],
    )
    corrections = tmp_path / "c.csv"
    pd.DataFrame({"id": ["g1:0", "c1:0"], "completion": ["4", "Hello!"]}).to_csv(corrections, index=False)
    out = import_feedback(corrections, log, say=lambda s: None)
    assert out["file"].endswith("feedback.jsonl") and out["errors"] == 2
    rows = {r["id"]: r for r in read_feedback(out["file"])}
    assert rows["g1:0"]["prompt"] == "2+2=" and rows["g1:0"]["completion"] == "4"
    assert rows["c1:0"]["messages"][-1] == {"role": "assistant", "content": "Hello!"}


def test_training_rows_duplicating_either_test_set_are_dropped():
    train = pd.DataFrame(
        {
            "text": [
                "the service was slow and the food was cold",
                "The  service was SLOW and the food was cold",  # exact duplicate (normalised) of an old test row
                "the service was slow and the food was cold!!",  # near duplicate of it
                "a brand new sentence about trains and rails",
                "totally unrelated words about mountains",
                "totally unrelated words about mountains",  # within training: kept once
            ],
            "label": ["neg"] * 6,
            "source": ["new", "feedback", "replay", "new", "new", "feedback"],
        }
    )
    old = pd.DataFrame({"text": ["the service was slow and the food was cold"], "label": ["neg"]})
    new = pd.DataFrame({"text": ["a brand new sentence about trains and rails"], "label": ["neg"]})
    kept, dropped = drop_test_duplicates(train, {"old test": old, "new test": new}, AuditConfig())
    assert kept["text"].tolist() == ["totally unrelated words about mountains"]
    assert dropped == {
        "new ~ old test": 1,
        "feedback ~ old test": 1,
        "replay ~ old test": 1,
        "new ~ new test": 1,
        "duplicates within training": 1,
    }


def test_replay_sample_keeps_label_shares():
    df = pd.DataFrame({"text": [f"t{i}" for i in range(100)], "label": ["a"] * 70 + ["b"] * 30})
    s = _stratified(df, 10, seed=0)
    assert len(s) == 10 and s["label"].value_counts().to_dict() == {"a": 7, "b": 3}
    assert _stratified(df, 10, seed=0)["text"].tolist() == s["text"].tolist()  # seeded
    assert len(_stratified(df, 500, seed=0)) == 100


def test_monitor_windows_by_count_and_time():
    df = pd.DataFrame({"text": ["x"] * 230, "time": np.arange(230) * 60.0})
    assert [len(r) for _, r in cut(df, "100", 31)] == [100, 130]  # a short tail joins the window before
    assert [len(r) for _, r in cut(df, "100", 20)] == [100, 100, 30]
    assert [len(r) for _, r in cut(df, "1h", 30)] == [60, 60, 60, 50]
    assert len(cut(df, None, 30)) == 1
    with pytest.raises(ConfigError, match="give a count of items"):
        cut(df, "soon", 30)
    with pytest.raises(ConfigError, match="needs times"):
        cut(df.drop(columns="time"), "1h", 30)


def planted(new: float, old: float, seed: int = 0):
    """Paired predictions: production right on 70% of each set; the candidate is production's answers with a planted
    change per set: > 0 fixes that share of production's errors, < 0 breaks that share of its right answers."""
    rng = np.random.default_rng(seed)
    out = {}
    for role, change in (("new", new), ("old", old)):
        n = 600
        y = rng.integers(0, 3, n)
        a = np.where(rng.random(n) < 0.7, y, (y + 1) % 3)
        flip = rng.random(n) < abs(change)
        b = np.where(flip & (a != y), y, a) if change > 0 else np.where(flip & (a == y), (y + 2) % 3, a)
        out[role] = {"delta": paired_delta(y, a, b, 3, resamples=500, seed=seed)}
    return out


def test_gate_promotes_a_better_candidate_and_refuses_a_worse_or_no_better_one():
    assert decide(planted(0.3, -0.01), alpha=0.05, margin=0.02)["promote"]
    no_better = decide(planted(0.01, 0.0), alpha=0.05, margin=0.02)
    assert not no_better["promote"] and not no_better["better_on_new"]
    worse = decide(planted(-0.3, 0.0), alpha=0.05, margin=0.02)
    assert not worse["promote"] and worse["reasons"] == ["it is significantly worse on the new data"]
    forgets = decide(planted(0.3, -0.2), alpha=0.05, margin=0.02)  # better on new, worse on the old test set
    assert not forgets["promote"] and forgets["better_on_new"] and not forgets["non_inferior_on_old"]


def synthetic_window(rng, n: int, shift: float = 0.0) -> tuple[pd.DataFrame, np.ndarray]:
    """Rows (text, predicted, score) and 16-d embeddings; `shift` moves every feature's distribution."""
    words = ["alpha", "beta", "gamma", "delta", "omega", "zeta"]
    lengths = rng.poisson(8 + 6 * shift, n) + 1
    texts = [" ".join(rng.choice(words, k)) for k in lengths]
    labels = rng.choice(["a", "b", "c"], n, p=[0.5 - 0.3 * shift, 0.3, 0.2 + 0.3 * shift])
    rows = pd.DataFrame({"text": texts, "predicted": labels, "score": rng.beta(5 - 2 * shift, 2, n)})
    return rows, rng.normal(shift, 1.0, (n, 16))


def test_monitor_window_decision_holds_its_false_alarm_rate_and_fires_on_a_shift():
    """The per-window rule (Holm over the five drift tests at alpha) on repeated same-distribution windows alerts at
    most about alpha of the time, and on every shifted window."""
    from tunesmith.tools.monitor import compare_window, decide, features

    rng = np.random.default_rng(0)
    vocab = {"alpha", "beta", "gamma", "delta", "omega"}  # "zeta" is out of vocabulary
    ref, ref_emb = synthetic_window(rng, 150)
    ref_feats = features(ref["text"].tolist(), vocab)
    alerts = {0.0: 0, 0.5: 0}
    draws = 60
    for d in range(draws):
        for shift in alerts:
            rows, emb = synthetic_window(rng, 100, shift)
            r = compare_window(ref, ref_feats, ref_emb, rows, emb, vocab, ["a", "b", "c"], 100, d)
            r.update(window=str(d), n=100, live=None)
            decide(r, 0.05, None)
            alerts[shift] += r["alert"]
    assert alerts[0.0] / draws <= 0.05 + 3 * (0.05 * 0.95 / draws) ** 0.5
    assert alerts[0.5] == draws
