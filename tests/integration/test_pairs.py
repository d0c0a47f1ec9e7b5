"""`tunesmith data pairs`: preference pairs from a tiny random Llama's failing answers (JSON extraction of the toy
task, trained just far enough that some answers are right and some wrong) and from feedback on a serve log."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from conftest import run_cli
from gen_fixtures import ANSWER, build_tiny_lm, toy_pairs, write_jsonl

from tunesmith import finetune, load_run
from tunesmith.config import load_config
from tunesmith.errors import ConfigError, DataError, RunError
from tunesmith.tasks.generative.formats import Sample
from tunesmith.tasks.registry import build_task
from tunesmith.tools.feedback import import_feedback
from tunesmith.tools.pairs import PairSet, Verdict, fields_verdict, json_verdict, pairs_from_feedback
from tunesmith.tools.pairs import pairs_from_generations as pairs

KEYS = ["animal", "colour"]


def answer(animal: str) -> str:
    return json.dumps({"animal": animal, "colour": ANSWER[animal]})


def read_pairs(path) -> list[dict]:
    return [json.loads(line) for line in open(path, encoding="utf-8")]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A chat run whose answers are JSON objects, with generate.json_keys (so every check applies), trained far
    enough for valid JSON but not for every colour (the gen_config of test_generative_runs.py, shorter)."""
    tmp = tmp_path_factory.mktemp("pairs")
    rows = [
        {"messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": answer(a)}]}
        for r in toy_pairs(64)
        for a in [r["prompt"].split()[-1].rstrip("?")]
    ]
    cfg = {
        "task": "causal-lm",
        "output_dir": str(tmp / "runs"),
        # toy prompts repeat by design: the leak-proof split and the leakage block are off
        "data": {"path": str(write_jsonl(tmp / "chat.jsonl", rows)), "max_length": 64, "group_near_duplicates": False},
        "audit": {"block_on_leakage": False},
        "model": {"name": str(build_tiny_lm(tmp / "llama", "llama"))},
        "strategy": {"name": "full"},
        "train": {"epochs": 30, "lr": 3e-3, "batch_size": 16, "precision": "fp32", "patience": None},
        "generate": {"samples": 0, "before": False, "max_new_tokens": 24, "json_keys": KEYS},
        "tracking": {"backend": "none"},
    }
    return finetune(load_config(cfg))


def test_pairs_from_generations_are_the_runs_failures(run, tmp_path):
    notes = []
    s = pairs(run.path, say=notes.append)
    assert s["out"] == str(run.path / "pairs-train.jsonl") and s["check"] == "fields" and not notes
    train = run.task.load_data().splits.train.samples
    assert s["items"] == len(train) and s["failed"] + s["passed"] == s["items"]
    assert s["pairs"] + sum(s["skipped"].values()) == s["failed"] == sum(s["reasons"].values()) > 0
    rows = read_pairs(s["out"])
    assert len(rows) == s["pairs"] and json.loads((run.path / "pairs-train.json").read_text())["pairs"] == s["pairs"]
    prompts = {json.dumps(t.messages[:-1]): t.reference for t in train}
    again = load_run(run.path).generate([r["messages"] for r in rows])  # a fresh load of the model
    for row, output in zip(rows, again):
        assert prompts[json.dumps(row["messages"])] == row["chosen"]  # the prompt is a train prompt, chosen its answer
        assert row["rejected"] == output and row["check"] == fields_verdict(output, row["chosen"], KEYS).check
        assert row["check"].startswith(("field_mismatch:", "invalid_json", "missing_keys:"))
    # the json check fails a subset of what the fields check fails; exact at least as much
    js, exact = pairs(run, check="json", out=tmp_path / "j.jsonl"), pairs(run, check="exact", out=tmp_path / "e.jsonl")
    assert js["failed"] <= s["failed"] <= exact["failed"] and (tmp_path / "e.json").is_file()
    # the preference task reads the file as it is
    pref = {"task": "preference", "model": {"name": str(run.config.model.name)}, "strategy": {"name": "lora"}}
    pref["data"] = {"path": s["out"], "group_near_duplicates": False}
    loaded = build_task(load_config(pref)).load_data().splits
    assert loaded.format == "chat" and len(loaded.train) + len(loaded.validation) + len(loaded.test) == s["pairs"]


def test_a_user_reward_function_decides(run, tmp_path, monkeypatch):
    (tmp_path / "rw.py").write_text(
        "import json\n"
        "def colour(completions, prompts, references):\n"
        "    return [float(json.loads(r)['colour'] in c) for c, r in zip(completions, references)]\n"
        "def nothing(completions, prompts, references):\n"
        "    return [0.0] * len(completions)\n"
    )
    monkeypatch.chdir(tmp_path)  # `module:fn` imports from the working directory
    s = pairs(run, reward="rw:colour", limit=24, out=tmp_path / "r.jsonl")  # --reward alone means --check reward
    assert s["check"] == "reward" and s["items"] == 24 and s["threshold"] == 0.5
    for row in read_pairs(s["out"]):
        assert row["check"] == "reward 0.00 < 0.5" and json.loads(row["chosen"])["colour"] not in row["rejected"]
    none = pairs(run, check="reward", reward="rw:nothing", limit=8, out=tmp_path / "n.jsonl")
    assert none["failed"] == 8 and none["pairs"] == 0 and none["skipped"] == {"reference_fails": 8}
    with pytest.raises(ConfigError, match="--reward: cannot import 'rw:missing'"):
        pairs(run, reward="rw:missing")


def test_generation_resumes_after_an_interruption(run, tmp_path, monkeypatch):
    fresh = load_run(run.path)
    real, calls = fresh.predictor.generate, []

    def flaky(prompts, **kw):
        calls.append(len(prompts))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(prompts, **kw)

    monkeypatch.setattr(fresh.predictor, "generate", flaky)
    with pytest.raises(KeyboardInterrupt):
        pairs(fresh, limit=20, batch_size=2, out=tmp_path / "p.jsonl")
    assert (tmp_path / "p.jsonl.partial").is_file() and not (tmp_path / "p.jsonl").exists()
    notes = []
    s = pairs(fresh, limit=20, batch_size=2, out=tmp_path / "p.jsonl", say=notes.append)
    assert calls == [8, 8, 8, 4] and notes[0].startswith("resuming: 8 of 20 answers")  # only the 12 missing ones
    assert read_pairs(s["out"]) == read_pairs(pairs(run, limit=20, batch_size=2, out=tmp_path / "q.jsonl")["out"])
    assert not (tmp_path / "p.jsonl.partial").exists()


def test_pairs_from_serve_feedback(run, tmp_path):
    """Corrections imported with `tunesmith feedback import` beside a serve log: chosen = the correction."""
    ask = [{"role": "user", "content": "What colour is the cat?"}]
    log = tmp_path / "serve" / "predictions.jsonl"
    records = [
        {"request_id": "r1", "endpoint": "chat", "inputs": ask, "outputs": ['{"animal": "cat"}']},
        {"request_id": "r2", "endpoint": "generate", "inputs": ["What colour is the fox?", "What colour is the owl?"],
         "outputs": [answer("owl"), answer("owl")]},
    ]  # fmt: skip
    log.parent.mkdir()
    version = run.info.get("name") or run.path.name  # what the server logs
    write_jsonl(log, [{"status": 200, "model": "m", "version": version, **r} for r in records])
    fixes = [{"id": "r1", "completion": answer("cat")}, {"id": "r2:0", "completion": answer("fox")}]
    fixes.append({"id": "r2:1", "completion": answer("owl")})  # a confirmed answer
    import_feedback(write_jsonl(tmp_path / "fixes.jsonl", fixes), log, say=lambda _: None)
    s = pairs_from_feedback(run.path, log.parent, out=tmp_path / "fb.jsonl")
    assert (s["items"], s["failed"], s["passed"], s["pairs"]) == (3, 2, 1, 2)
    rows = {r["id"]: r for r in read_pairs(s["out"])}
    assert rows["r1:0"] == {"messages": ask, "chosen": answer("cat"), "rejected": '{"animal": "cat"}',
                            "check": "corrected", "id": "r1:0"}  # fmt: skip
    # a /v1/generate prompt of a chat run becomes its user turn, as the run renders it
    assert rows["r2:0"]["messages"] == [{"role": "user", "content": "What colour is the fox?"}]
    assert rows["r2:0"]["rejected"] == answer("owl")
    res = run_cli("data", "pairs", str(run.path), "--from", str(log), "--out", str(tmp_path / "cli.jsonl"))
    assert res.returncode == 0, res.stderr[-1500:]
    assert (
        res.stdout.strip() == f"pairs: 2 of 3 feedback items corrected the model's answer -> {tmp_path / 'cli.jsonl'}"
    )
    with pytest.raises(DataError, match="no feedback for this log"):
        pairs_from_feedback(run, tmp_path / "fixes.jsonl")


def test_cli_prints_the_summary(run, tmp_path):
    out = tmp_path / "p.jsonl"
    res = run_cli("data", "pairs", str(run.path), "--from", "generations", "--limit", "12", "--out", str(out))
    assert res.returncode == 0, res.stderr[-1500:]
    s = json.loads((tmp_path / "p.json").read_text())
    line = res.stdout.strip()
    assert line.startswith(f"pairs: {s['failed']} of 12 train outputs failed the fields check (") and line.endswith(
        f" -> {out}"
    )


@pytest.mark.parametrize(
    "source, args, message",
    [
        ("generations", ["--check", "reward"], "--check reward needs --reward module:function"),
        ("{tmp}", [], "no feedback for this log; import corrections first"),
    ],
)
def test_cli_mistakes_are_one_line_exit_2(run, tmp_path, source, args, message):
    res = run_cli("data", "pairs", str(run.path), "--from", source.format(tmp=tmp_path), *args)
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [res.stderr.strip()]
    assert message in res.stderr and "Traceback" not in res.stderr


def test_user_mistakes_in_the_library(run, tmp_path):
    with pytest.raises(ConfigError, match="--split dev: unknown split"):
        pairs(run, split="dev")
    with pytest.raises(ConfigError, match="--check nearly: unknown check"):
        pairs(run, check="nearly")
    plain = tmp_path / "plain"
    shutil.copytree(run.path, plain)
    cfg = yaml.safe_load((plain / "config.yaml").read_text())
    cfg["generate"]["json_keys"] = None
    (plain / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="has no generate.json_keys"):
        pairs(plain, check="json")
    cfg["task"] = "text-classification"
    cfg.pop("generate")
    (plain / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(RunError, match="does not generate"):
        pairs(plain)


def test_verdicts_and_what_is_left_out():
    assert json_verdict("not json", KEYS) == Verdict("invalid_json", "invalid_json")
    assert json_verdict('{"animal": "cat"}', KEYS).check == "missing_keys:colour"
    assert fields_verdict('{"animal": "CAT ", "colour": "red"}', answer("cat"), KEYS) == Verdict()
    got = PairSet()
    completion = Sample(0, prompt="Q:", completion=" yes")
    for rejected in ("no", "no", "", "yes"):
        got.add(completion, rejected, Verdict("mismatch", "exact_mismatch"))
    # generation strips its answer: the rejected side gets the chosen's leading space back
    assert got.rows == [{"prompt": "Q:", "chosen": " yes", "rejected": " no", "check": "exact_mismatch"}]
    assert got.failed == {"mismatch": 4} and got.skipped == {"duplicate": 1, "empty_output": 1, "same_text": 1}
