"""`tunesmith serve` over real sockets on 127.0.0.1: tiny runs trained here, every endpoint, the error cases,
API keys, adapters sharing one base, A/B split proportions, the prediction log, streaming, graceful shutdown."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import pytest
from conftest import ROOT, build_tiny_bert, run_cli, tiny_config, toy_rows, write_csv
from conftest import http_call as call
from gen_fixtures import build_tiny_lm, toy_pairs, write_jsonl

from tunesmith import finetune
from tunesmith.config import load_config
from tunesmith.runs.run import Run
from tunesmith.serve import ServeOptions, Server, parse_route


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two LoRA classifiers on one tiny BERT (different data seeds), a fully fine-tuned one, and a LoRA chat LM."""
    tmp = tmp_path_factory.mktemp("serve")
    bert = build_tiny_bert(tmp / "bert")
    out = {}
    for name, seed, strategy in (
        ("a", 0, {"name": "lora", "r": 4}),
        ("b", 1, {"name": "lora", "r": 4}),
        ("f", 2, {"name": "full"}),
    ):
        data = write_csv(tmp / f"{name}.csv", toy_rows(240, seed))
        cfg = tiny_config(tmp / name, bert, data, strategy=strategy, train={"epochs": 3}, seed=seed)
        cfg["train"]["eval_every"] = 50
        out[name] = finetune(load_config(cfg)).path
    llama = build_tiny_lm(tmp / "llama", "llama")
    chats = [
        {"messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["completion"]}]}
        for r in toy_pairs(80)
    ]
    data = write_jsonl(tmp / "chat.jsonl", chats)
    cfg = {
        "name": "chat",
        "task": "causal-lm",
        "output_dir": str(tmp / "chat" / "runs"),
        "data": {"path": str(data), "max_length": 64, "group_near_duplicates": False},
        "audit": {"block_on_leakage": False},
        "model": {"name": str(llama)},
        "strategy": {"name": "lora", "r": 4},
        "train": {"epochs": 1, "lr": 3e-3, "batch_size": 16, "precision": "fp32", "patience": None},
        "generate": {"samples": 0, "max_new_tokens": 12, "before": False},
        "tracking": {"backend": "none"},
    }
    out["chat"] = finetune(load_config(cfg)).path
    return out


def test_classify_through_shared_adapters_health_models_and_metrics(runs):
    texts = ["the good river", "a bad table", "seven stone cloud", "great nasty house"]
    sources = [f"A={runs['a']}", f"B={runs['b']}", f"F={runs['f']}", f"A2={runs['a']}"]
    with Server(sources, ServeOptions(port=0), say=lambda s: None) as srv:
        assert srv.models["A"].group is srv.models["B"].group  # one base in memory for both adapters
        assert srv.models["A2"].run is srv.models["A"].run  # one run under two names: one adapter
        loaded = srv.models["A"].group.load()
        assert sorted(loaded.adapters.values()) == ["adapter1", "default"]
        assert srv.models["F"].group is not srv.models["A"].group
        status, _, health = call(srv.url, "/healthz")
        assert status == 200 and health["models"] == ["A", "A2", "B", "F"]
        _, _, listed = call(srv.url, "/v1/models")
        by_id = {m["id"]: m for m in listed["data"]}
        assert by_id["A"]["shares_base_with"] == [runs["b"].name] and by_id["F"]["shares_base_with"] == []
        assert by_id["A"]["serves"] == ["classify"] and by_id["A"]["labels"] == Run(runs["a"]).label_names
        answers = {}
        for name in ("A", "B", "F", "A", "A2"):  # back to A after B: the adapter switches back
            status, head, body = call(srv.url, "/v1/classify", {"model": name, "texts": texts})
            assert status == 200, body
            assert head["x-tunesmith-model"] == f"{name}@{body['version']}"
            answers[name] = [r["probs"] for r in body["results"]]
        for name, key in (("A", "a"), ("B", "b"), ("F", "f")):  # exactly what the run predicts on its own
            alone = [p.probs for p in Run(runs[key]).predict(texts)]
            for got, want in zip(answers[name], alone):
                assert got == pytest.approx(want, abs=1e-5)
        assert answers["A"] != answers["B"] and answers["A2"] == answers["A"]
        status, _, one = call(srv.url, "/v1/classify", {"model": "F", "text": "good"})
        assert status == 200 and len(one["results"]) == 1
        assert call(srv.url, "/no/such/path")[0] == 404
        status, _, metrics = call(srv.url, "/metrics")
        assert 'tunesmith_requests_total{endpoint="other",model="-",status="404"} 1.0' in metrics
        assert 'tunesmith_requests_total{endpoint="/v1/classify",model="A",status="200"} 2.0' in metrics
        assert "tunesmith_batch_size_bucket" in metrics and "tunesmith_request_seconds_bucket" in metrics


def test_dynamic_batching_joins_concurrent_requests_and_answers_the_same(runs):
    texts = [" ".join(r["text"].split()[: 3 + i % 9]) for i, r in enumerate(toy_rows(24, 5))]
    alone = [p.probs for p in Run(runs["f"]).predict(texts)]
    opts = ServeOptions(port=0, max_wait_ms=150, max_batch=64)
    with Server([f"F={runs['f']}"], opts, say=lambda s: None) as srv:
        with ThreadPoolExecutor(12) as pool:
            got = list(pool.map(lambda t: call(srv.url, "/v1/classify", {"model": "F", "text": t}), texts))
        _, _, metrics = call(srv.url, "/metrics")
    assert all(status == 200 for status, _, _ in got)
    for (_, _, body), want in zip(got, alone):  # padding with other requests changes nothing
        assert body["results"][0]["probs"] == pytest.approx(want, abs=1e-5)
    count = next(
        float(ln.split()[-1]) for ln in metrics.splitlines() if ln.startswith('tunesmith_batch_size_count{model="F"}')
    )
    total = next(
        float(ln.split()[-1]) for ln in metrics.splitlines() if ln.startswith('tunesmith_batch_size_sum{model="F"}')
    )
    assert total == len(texts) and count < len(texts) / 2  # requests really shared forward passes


def test_a_full_queue_answers_503_with_retry_after_and_the_server_recovers(runs):
    opts = ServeOptions(port=0, queue_size=1, max_batch=1, max_wait_ms=0)
    with Server([f"F={runs['f']}"], opts, say=lambda s: None) as srv:
        batcher = srv.app.serving.batchers["F", "classify"]
        work = batcher.handler
        batcher.handler = lambda jobs: (time.sleep(0.4), work(jobs))[1]  # a slow model: the queue fills
        with ThreadPoolExecutor(6) as pool:
            got = list(pool.map(lambda i: call(srv.url, "/v1/classify", {"model": "F", "text": f"good {i}"}), range(6)))
        statuses = sorted(s for s, _, _ in got)
        # one running + one queued at most get through; the rest are refused at once
        assert 1 <= statuses.count(200) <= 2 and statuses.count(503) >= 4 and set(statuses) <= {200, 503}
        busy = next(h for s, h, _ in got if s == 503)
        assert busy["retry-after"] == "1"
        batcher.handler = work
        assert call(srv.url, "/v1/classify", {"model": "F", "text": "good"})[0] == 200


def test_bad_requests_get_a_4xx_naming_the_field_and_never_hurt_the_server(runs):
    opts = ServeOptions(
        port=0,
        max_texts=4,
        max_text_chars=200,
        max_body_bytes=5000,
        read_timeout_s=0.5,
        max_tokens=16,
        max_total_tokens=40,
    )
    with Server([f"F={runs['f']}", f"C={runs['chat']}"], opts, say=lambda s: None) as srv:
        cases = [
            (dict(raw=b'{"model": "F", "texts": ['), 400, None),
            (dict(body={"model": "F", "texts": 5}), 422, "texts"),
            (dict(body={"model": "F", "texts": ["ok", 3]}), 422, "texts.1"),
            (dict(body={"model": "F"}), 422, "text"),
            (dict(body={"model": "F", "texts": ["a"] * 5}), 422, "texts"),
            (dict(body={"model": "F", "texts": ["x" * 201]}), 422, "texts[0]"),
            (dict(body={"model": "F", "text": "a", "colour": "red"}), 422, "colour"),
            (dict(body={"model": "nope", "text": "a"}), 404, "model"),
            (dict(raw=json.dumps({"model": "F", "texts": ["a" * 40] * 200}).encode()), 413, None),
        ]
        for kwargs, status, field in cases:
            got, _, body = call(srv.url, "/v1/classify", **kwargs)
            assert got == status, (kwargs, body)
            assert "message" in body["error"] and body["error"].get("field") == field, body
        got, _, body = call(srv.url, "/v1/generate", {"model": "F", "prompt": "hi"})
        assert got == 400 and body["error"]["field"] == "model"
        got, _, body = call(srv.url, "/v1/generate", {"model": "C", "prompt": "hi", "max_tokens": 17})
        assert got == 422 and body["error"]["field"] == "max_tokens"
        long = " ".join(["What colour is the cat?"] * 6)  # > 24 prompt tokens: with max_tokens 16 over 40
        got, _, body = call(srv.url, "/v1/generate", {"model": "C", "prompts": ["hi", long], "max_tokens": 16})
        assert got == 422 and body["error"]["field"] == "prompt[1]", body
        chat = {"model": "C", "messages": [{"role": "user", "content": long}], "max_tokens": 16}
        for stream in (False, True):  # a stream that cannot start is still an HTTP status
            got, _, body = call(srv.url, "/v1/chat/completions", {**chat, "stream": stream})
            assert got == 422 and body["error"]["field"] == "prompt[0]", body
        got, _, body = call(
            srv.url, "/v1/chat/completions", {"model": "C", "messages": [{"role": "robot", "content": "x"}]}
        )
        assert got == 422 and body["error"]["field"].startswith("messages.0.role")
        # a slow client: headers promise a body that never fully arrives
        u = urlparse(srv.url)
        with socket.create_connection((u.hostname, u.port), timeout=10) as slow:
            slow.sendall(
                b'POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n{"model"'
            )
            reply = b""
            while b'"type"' not in reply:  # the status line and the JSON body may come in separate packets
                chunk = slow.recv(4096)
                if not chunk:
                    break
                reply += chunk
            reply = reply.decode()
        assert reply.startswith("HTTP/1.1 408") and '"type": "timeout"' in reply
        with socket.create_connection((u.hostname, u.port), timeout=10) as slow:  # headers that never end
            slow.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Ty")
            reply = slow.recv(4096).decode()
        assert reply.startswith("HTTP/1.1 408") and "headers did not arrive" in reply
        status, _, body = call(srv.url, "/v1/classify", {"model": "F", "texts": ["good", "bad"]})
        assert status == 200 and len(body["results"]) == 2  # still answering correctly
        metrics = call(srv.url, "/metrics")[2]
        assert 'tunesmith_errors_total{endpoint="/v1/classify",kind="invalid_request"} 6.0' in metrics
        assert 'tunesmith_errors_total{endpoint="/v1/classify",kind="too_large"} 1.0' in metrics
        assert 'tunesmith_errors_total{endpoint="/v1/classify",kind="timeout"} 1.0' in metrics


def test_api_keys_are_required_except_for_health(runs, tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text("# clients\nsecret-one\nsecret-two\n")
    from tunesmith.serve import read_api_keys

    with Server([f"F={runs['f']}"], ServeOptions(port=0, api_keys=read_api_keys(keys)), say=lambda s: None) as srv:
        body = {"model": "F", "text": "good"}
        assert call(srv.url, "/healthz")[0] == 200
        status, head, err = call(srv.url, "/v1/classify", body)
        assert status == 401 and err["error"]["type"] == "unauthorized" and head["www-authenticate"] == "Bearer"
        assert call(srv.url, "/v1/classify", body, headers={"Authorization": "Bearer secret-three"})[0] == 401
        assert call(srv.url, "/v1/models", headers={"Authorization": "Bearer secret-two"})[0] == 200
        assert call(srv.url, "/v1/classify", body, headers={"X-API-Key": "secret-one"})[0] == 200
        assert call(srv.url, "/metrics")[0] == 401


def test_ab_route_splits_by_a_stable_hash_and_the_log_records_the_arms(runs, tmp_path):
    log = tmp_path / "log" / "predictions.jsonl"
    opts = ServeOptions(port=0, routes=[parse_route("sentiment=A:0.7,B:0.3")], log=log)
    n = 300
    with Server([f"A={runs['a']}", f"B={runs['b']}"], opts, say=lambda s: None) as srv:
        with ThreadPoolExecutor(8) as pool:
            got = list(
                pool.map(
                    lambda i: call(srv.url, "/v1/classify", {"model": "sentiment", "text": "good", "user": f"u{i}"}),
                    range(n),
                )
            )
        again = call(srv.url, "/v1/classify", {"model": "sentiment", "text": "bad", "user": "u7"})[2]
    arms = [body["arm"] for _, _, body in got]
    assert all(body["route"] == "sentiment" and body["model"] == body["arm"] for _, _, body in got)
    assert 0.22 <= arms.count("B") / n <= 0.38  # 0.3 +- 3.5 standard errors
    assert again["arm"] == arms[7]  # the same user always lands on the same version
    records = [json.loads(ln) for ln in log.read_text().splitlines()]  # the server stopped: the log is flushed
    assert len(records) == n + 1 and {r["arm"] for r in records} == {"A", "B"}
    assert records[0]["version"] in (runs["a"].name, runs["b"].name) and records[0]["outputs"][0]["label"]
    res = run_cli("log", "summarize", str(log), "--json")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert sum(v["requests"] for v in summary.values()) == n + 1
    assert summary[f"B@{runs['b'].name}"]["arms"]["sentiment:B"] == arms.count("B") + (again["arm"] == "B")


def test_generate_chat_and_streaming_answer_what_the_run_generates(runs):
    chat_run = Run(runs["chat"])
    prompt = "What colour is the fox?"
    want = chat_run.generate([prompt], max_new_tokens=8)[0]
    with Server([f"C={runs['chat']}"], ServeOptions(port=0), say=lambda s: None) as srv:
        status, _, body = call(srv.url, "/v1/generate", {"model": "C", "prompt": prompt, "max_tokens": 8})
        assert status == 200 and body["completions"] == [want]
        request = {"model": "C", "messages": [{"role": "user", "content": prompt}], "max_tokens": 8, "temperature": 0}
        status, _, done = call(srv.url, "/v1/chat/completions", request)
        assert status == 200 and done["object"] == "chat.completion"
        assert done["choices"][0]["message"] == {"role": "assistant", "content": want}
        usage = done["usage"]
        assert (
            usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] and usage["prompt_tokens"] > 5
        )
        status, head, stream = call(srv.url, "/v1/chat/completions", {**request, "stream": True})
        assert status == 200 and head["content-type"].startswith("text/event-stream")
        events = [ln[len("data: ") :] for ln in stream.splitlines() if ln.startswith("data: ")]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert all(c["object"] == "chat.completion.chunk" for c in chunks)
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
        assert text.strip() == want and chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
        assert len(chunks) >= 3  # the role, at least one piece, the finish


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_serve_stops_gracefully_on_sigterm_finishing_in_flight_requests(runs, tmp_path):
    port, log = free_port(), tmp_path / "p.jsonl"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [
        sys.executable,
        "-m",
        "tunesmith",
        "serve",
        f"C={runs['chat']}",
        "--port",
        str(port),
        "--log",
        str(log),
        "--no-batching",
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if call(url, "/healthz")[0] == 200:
                    break
            except OSError:
                time.sleep(0.1)
        body = {"model": "C", "prompt": "What colour is the cat?", "max_tokens": 64, "temperature": 0.9}
        with ThreadPoolExecutor(10) as pool:
            futures = [pool.submit(call, url, "/v1/generate", body) for _ in range(10)]
            # Signal once the first answer is out (one at a time, --no-batching: nine are still in flight). A fixed
            # sleep was a race: on a fast CPU all ten were answered within it.
            for _ in range(3000):
                metrics = call(url, "/metrics")[2]
                if any(
                    ln.startswith("tunesmith_requests_total{") and "/v1/generate" in ln for ln in metrics.splitlines()
                ):
                    break
                time.sleep(0.005)
            stopped_at = time.time()
            proc.send_signal(signal.SIGTERM)
            got = [f.result() for f in futures]
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-2000:]
    assert [s for s, _, _ in got] == [200] * 10  # every request in flight was answered
    records = [json.loads(ln) for ln in log.read_text().splitlines()]
    assert len(records) == 10  # and logged before the process ended
    assert max(r["time"] for r in records) > stopped_at  # some of them were answered after the signal
    assert "server stopped" in out


def test_cli_mistakes_are_one_line(runs, tmp_path):
    res = run_cli("serve", str(tmp_path / "missing"))
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "not a run folder" in res.stderr
    res = run_cli("serve", str(runs["f"]), "--route", "x=A:abc")
    assert res.returncode == 2 and "is not a number" in res.stderr
    res = run_cli("serve", f"A={runs['f']}", "--route", "x=A:0.5,Z:0.5")
    assert res.returncode == 2 and "arm 'Z' is not a served model" in res.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        res = run_cli("serve", str(runs["f"]), "--port", str(taken.getsockname()[1]))
    assert res.returncode == 2 and "pick another --port" in res.stderr
