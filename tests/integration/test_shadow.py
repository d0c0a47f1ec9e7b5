"""Shadow mode over real sockets on 127.0.0.1: the client gets the primary's answers only, the log holds the
candidate's answers to the same requests, a busy or failing candidate never touches the client, and
`compare_arms` / `tunesmith log shadow` pair the two back up."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import build_tiny_bert, run_cli, tiny_config, toy_rows, write_csv
from conftest import http_call as call

from tunesmith import finetune
from tunesmith.config import load_config
from tunesmith.errors import ConfigError
from tunesmith.evaluate.stats import mcnemar
from tunesmith.runs.run import Run
from tunesmith.serve import ServeOptions, Server, compare_arms, parse_route, parse_shadow, shadow_table, summarize
from tunesmith.serve.predlog import read_log


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two LoRA classifiers on one tiny BERT, trained on different data seeds (so they disagree a little)."""
    tmp = tmp_path_factory.mktemp("shadow")
    bert = build_tiny_bert(tmp / "bert")
    out = {}
    for name, seed in (("a", 0), ("b", 1)):
        data = write_csv(tmp / f"{name}.csv", toy_rows(240, seed))
        cfg = tiny_config(tmp / name, bert, data, strategy={"name": "lora", "r": 4}, train={"epochs": 3}, seed=seed)
        cfg["train"]["eval_every"] = 50
        cfg["audit"] = {"label_errors": False}  # what serving needs is the model, not the run's full report
        cfg["eval"].update(calibration=False, temperature_scaling=False, robustness=False, efficiency=False)
        out[name] = finetune(load_config(cfg)).path
    return out


def test_the_client_gets_the_primary_and_the_log_gets_both(runs, tmp_path):
    rows = toy_rows(24, 7)
    requests = [(f"req{k}", [rows[2 * k]["text"], rows[2 * k + 1]["text"]]) for k in range(12)]
    texts = [t for _, pair in requests for t in pair]
    want_a, want_b = Run(runs["a"]).predict(texts), Run(runs["b"]).predict(texts)
    log = tmp_path / "p.jsonl"
    opts = ServeOptions(port=0, log=log, shadows=[parse_shadow("A=B")])
    with Server([f"A={runs['a']}", f"B={runs['b']}"], opts, say=lambda s: None) as srv:
        with ThreadPoolExecutor(4) as pool:
            got = list(
                pool.map(
                    lambda r: call(
                        srv.url, "/v1/classify", {"model": "A", "texts": r[1]}, headers={"x-request-id": r[0]}
                    ),
                    requests,
                )
            )
        for _ in range(500):  # the shadows finish off the request path
            if not srv.app.serving.shadows.pending:
                break
            time.sleep(0.01)
        metrics = call(srv.url, "/metrics")[2]
    assert 'tunesmith_shadow_total{model="B",status="200"} 12.0' in metrics
    answered = [r for _, _, body in got for r in body["results"]]
    assert all(status == 200 and body["model"] == "A" for status, _, body in got)
    assert [r["label"] for r in answered] == [p.label for p in want_a]  # the primary's answers, nothing else
    for r, p in zip(answered, want_a):
        assert r["probs"] == pytest.approx(p.probs, abs=1e-5)

    records = list(read_log(log))  # the server stopped: every shadow record is written
    primary = {r["request_id"]: r for r in records if "shadow_of" not in r}
    shadow = {r["request_id"]: r for r in records if "shadow_of" in r}
    assert len(records) == 24 and set(primary) == set(shadow) == {rid for rid, _ in requests}
    for rid, pair in requests:
        s = shadow[rid]
        assert (s["model"], s["version"], s["shadow_of"], s["arm"], s["status"]) == (
            "B",
            runs["b"].name,
            "A",
            "shadow",
            200,
        )
        assert s["endpoint"] == "classify" and s["inputs"] == pair == primary[rid]["inputs"]
    shadow_out = [o for rid, _ in requests for o in shadow[rid]["outputs"]]
    assert [o["label"] for o in shadow_out] == [p.label for p in want_b]  # the candidate's own predictions
    for o, p in zip(shadow_out, want_b):
        assert o["probs"] == pytest.approx(p.probs, abs=1e-5) and o["score"] == pytest.approx(p.score, abs=1e-5)

    # compare_arms against the same numbers computed here; the last request's items are left unlabelled
    truth = {f"{rid}:{i}": rows[2 * k + i]["label"] for k, (rid, _) in enumerate(requests[:-1]) for i in range(2)}
    pa, pb = [p.label for p in want_a], [p.label for p in want_b]
    [pair] = compare_arms(log, truth)["pairs"]
    assert (pair["primary"], pair["shadow"]) == (f"A@{runs['a'].name}", f"B@{runs['b'].name}")
    assert (pair["requests"], pair["items"], pair["shadow_errors"], pair["labelled"]) == (12, 24, 0, 22)
    assert pair["agreement"] == pytest.approx(sum(a == b for a, b in zip(pa, pb)) / 24, abs=1e-4)
    y = [r["label"] for r in rows[:22]]
    for arm, preds in (("primary", pa), ("shadow", pb)):
        assert pair["arms"][arm]["accuracy"] == pytest.approx(sum(p == t for p, t in zip(preds, y)) / 22, abs=1e-4)
        assert sum(pair["arms"][arm]["labels"].values()) == pytest.approx(1.0, abs=1e-3)
    assert pair["mcnemar"] == mcnemar(y, pa[:22], pb[:22])
    assert pair["arms"]["shadow"]["mean_score"] == pytest.approx(sum(p.score for p in want_b) / 24, abs=1e-4)
    summary = summarize(log)
    assert summary[f"B@{runs['b'].name} (shadow of A)"]["arms"] == {"shadow": 12}
    assert summary[f"A@{runs['a'].name}"]["requests"] == 12

    labels = tmp_path / "labels.csv"
    labels.write_text("id,label\n" + "".join(f"{k},{v}\n" for k, v in truth.items()))
    res = run_cli("log", "shadow", str(log), "--labels", str(labels), "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == json.loads(json.dumps(compare_arms(log, truth)))
    table = shadow_table(compare_arms(log, truth))
    assert f"A@{runs['a'].name} -> shadow B@{runs['b'].name} (classify): 12 requests, 24 items" in table
    assert "of 22 labelled" in table and "exact McNemar" in table


def test_a_busy_or_failing_shadow_never_reaches_the_client(runs, tmp_path):
    """B's model is held on a gate until every client is answered: no answer waited on it. Its queue (2) fills,
    so some shadow jobs are refused (503 records); then B crashes (a 500 record); the clients got A's 200s."""
    log = tmp_path / "p.jsonl"
    opts = ServeOptions(
        port=0, log=log, queue_size=2, routes=[parse_route("sentiment=A")], shadows=[parse_shadow("A=B")]
    )
    with Server([f"A={runs['a']}", f"B={runs['b']}"], opts, say=lambda s: None) as srv:
        batcher, gate = srv.app.serving.batchers["B", "classify"], threading.Event()
        work = batcher.handler
        batcher.handler = lambda jobs: (gate.wait(30), work(jobs))[1]
        got = [call(srv.url, "/v1/classify", {"model": "sentiment", "text": f"good {i}"}) for i in range(6)]
        assert [(s, b["model"], b["arm"]) for s, _, b in got] == [(200, "A", "A")] * 6
        gate.set()
        for _ in range(500):
            if not srv.app.serving.shadows.pending:
                break
            time.sleep(0.01)
        batcher.handler = lambda jobs: 1 / 0
        status, _, body = call(srv.url, "/v1/classify", {"model": "sentiment", "text": "bad"})
        assert status == 200 and body["model"] == "A"
    shadows = [r for r in read_log(log) if r.get("shadow_of") == "A"]
    assert len(shadows) == 7 and all(r["route"] == "sentiment" and r["arm"] == "shadow" for r in shadows)
    statuses = [r["status"] for r in shadows]
    assert set(statuses[:6]) == {200, 503} and statuses[6] == 500
    assert all(r["outputs"] is None and r["error"] for r in shadows if r["status"] != 200)
    assert "ZeroDivisionError" in shadows[6]["error"]
    [pair] = compare_arms(log)["pairs"]
    assert pair["shadow_errors"] == statuses.count(503) + 1 and pair["requests"] == statuses.count(200)


def test_unpaired_shadow_records_are_counted(tmp_path):
    log = tmp_path / "p.jsonl"
    base = {"endpoint": "generate", "inputs": ["hi"], "status": 200, "latency_ms": 1.0}
    records = [
        {**base, "request_id": "r1", "model": "A", "version": "va", "outputs": ["hello"]},
        {**base, "request_id": "r1", "model": "B", "version": "vb", "shadow_of": "A", "outputs": ["hello"]},
        {**base, "request_id": "r2", "model": "A", "version": "va", "outputs": ["yes"]},
        {**base, "request_id": "r2", "model": "B", "version": "vb", "shadow_of": "A", "outputs": ["no!"]},
        {**base, "request_id": "gone", "model": "B", "version": "vb", "shadow_of": "A", "outputs": ["x"]},
    ]
    log.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"torn')
    result = compare_arms(log)
    assert result["unpaired"] == 1 and result["shadow_records"] == 3
    [pair] = result["pairs"]
    assert pair["agreement"] == 0.5 and pair["arms"]["primary"]["mean_chars"] == 4.0


def test_mistakes_are_one_line(runs, tmp_path):
    log = str(tmp_path / "p.jsonl")
    a, b = f"A={runs['a']}", f"B={runs['b']}"
    res = run_cli("serve", a, "--shadow", "A=Z", "--log", log)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "'Z' is not a served model" in res.stderr
    res = run_cli("serve", a, b, "--shadow", "A=B")
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "needs --log" in res.stderr
    with pytest.raises(ConfigError, match="write PRIMARY=CANDIDATE"):
        parse_shadow("A")
    cases = [
        (["A=A"], [], "cannot shadow itself"),
        (["s=B"], [parse_route("s=A")], "'s' is a route"),
        (["A=B", "A=B"], [], "given twice"),
    ]
    for specs, routes, message in cases:
        opts = ServeOptions(port=0, log=log, routes=routes, shadows=[parse_shadow(s) for s in specs])
        with pytest.raises(ConfigError, match=message):
            Server([a, b], opts, say=lambda s: None)
