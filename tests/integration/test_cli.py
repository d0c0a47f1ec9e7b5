"""Every user error gets one clear line and exit code 2; the commands work on a real run folder."""

import json

import pandas as pd
import pytest
from conftest import run_cli, tiny_config, toy_rows, write_csv, write_yaml


def _one_line_error(result, *needles):
    assert result.returncode == 2, result.stdout + result.stderr
    err_lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(err_lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in err_lines[0], err_lines[0]
    return err_lines[0]


@pytest.fixture(scope="module")
def cases(tmp_path_factory, tiny_model, toy_csv):
    d = tmp_path_factory.mktemp("cli")
    good = tiny_config(d, tiny_model, toy_csv)

    def cfg(**sections):
        c = tiny_config(d, tiny_model, toy_csv)
        for k, v in sections.items():
            c[k] = {**c.get(k, {}), **v} if isinstance(v, dict) else v
        return c

    single = write_csv(d / "single.csv", [{"text": f"t {i}", "label": "pos"} for i in range(10)])
    nonutf = d / "nonutf.csv"
    nonutf.write_bytes(
        b"text,label\n" + b"".join(f"{r['text']},{r['label']}\n".encode() for r in toy_rows(20)) + b"caf\xe9,pos\n"
    )
    empty = d / "empty.csv"
    empty.write_text("")
    train = write_csv(d / "train.csv", toy_rows(60))
    test_unseen = write_csv(d / "test_unseen.csv", toy_rows(9) + [{"text": "odd", "label": "weird"}])
    bad_yaml = d / "bad.yaml"
    bad_yaml.write_text("data:\n  path: [oops\n")
    return {
        "dir": d,
        "good": write_yaml(d / "good.yaml", good),
        "missing-file": write_yaml(d / "c1.yaml", cfg(data={"path": str(d / "nope.csv")})),
        "missing-column": write_yaml(d / "c2.yaml", cfg(data={"text_column": "body"})),
        "empty": write_yaml(d / "c3.yaml", cfg(data={"path": str(empty)})),
        "single-class": write_yaml(d / "c4.yaml", cfg(data={"path": str(single)})),
        "unseen": write_yaml(d / "c5.yaml", cfg(data={"path": None, "train": str(train), "test": str(test_unseen)})),
        "non-utf8": write_yaml(d / "c6.yaml", cfg(data={"path": str(nonutf)})),
        "bad-yaml": bad_yaml,
        "bad-strategy": write_yaml(d / "c7.yaml", cfg(strategy={"name": "lorra"})),
        "bad-model": write_yaml(d / "c8.yaml", cfg(model={"name": "./no/such/model"})),
        "hub-offline": write_yaml(d / "c9.yaml", cfg(model={"name": "some-org/some-model"})),
    }


@pytest.mark.parametrize(
    "case, needles",
    [
        ("missing-file", ["nope.csv", "data file not found"]),
        ("missing-column", ["no text column 'body'", "data.text_column"]),
        ("empty", ["empty.csv", "empty"]),
        ("single-class", ["single.csv", "at least 2 labels"]),
        ("unseen", ["test_unseen.csv", "['weird']", "do not occur in the training data"]),
        ("non-utf8", ["nonutf.csv line 22", "not valid utf-8", "encoding_errors"]),
        ("bad-yaml", ["bad.yaml line", "malformed YAML"]),
        ("bad-strategy", ["unknown strategy 'lorra'", "did you mean 'lora'"]),
        ("bad-model", ["./no/such/model", "does not exist"]),
        ("hub-offline", ["some-org/some-model", "offline", "local"]),
    ],
)
def test_user_errors_are_one_line_exit_2(cases, case, needles):
    result = run_cli("train", str(cases[case]))
    _one_line_error(result, *needles)
    runs = cases["dir"] / "runs"
    assert not runs.exists() or not [p for p in runs.iterdir() if not p.name.startswith(".")]  # nothing half-written


def test_missing_config_and_unknown_override(cases):
    _one_line_error(run_cli("train", str(cases["dir"] / "nope.yaml")), "config file not found")
    _one_line_error(run_cli("train", str(cases["good"]), "train.lrr=1"), "unknown key 'lrr'", "did you mean 'lr'")


def test_debug_flag_shows_traceback(cases):
    result = run_cli("--debug", "train", str(cases["missing-file"]))
    assert result.returncode == 2 and "Traceback" in result.stderr


def test_train_predict_eval_runs_end_to_end(cases, tmp_path):
    d = cases["dir"]
    result = run_cli("train", str(cases["good"]))
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = [p for p in (d / "runs").iterdir() if (p / "run.json").is_file()]

    pred = run_cli("predict", str(run_dir), "--text", "great good fine", "--text", "awful bad dire")
    assert pred.returncode == 0, pred.stderr[-2000:]
    labels = [line.split("\t")[0] for line in pred.stdout.strip().splitlines()]
    assert labels == ["pos", "neg"]

    infile = write_csv(tmp_path / "in.csv", toy_rows(30, seed=7))
    out = tmp_path / "preds.csv"
    batch = run_cli("predict", str(run_dir), "--file", str(infile), "--out", str(out))
    assert batch.returncode == 0, batch.stderr[-2000:]
    import pandas as pd

    preds = pd.read_csv(out)
    assert len(preds) == 30 and {"predicted", "score"} <= set(preds.columns)
    assert (preds["predicted"] == preds["label"]).mean() > 0.6

    ev = run_cli("eval", str(run_dir), "--data", str(infile))
    assert ev.returncode == 0, ev.stderr[-2000:]
    assert "macro_f1" in ev.stdout and any((run_dir / "evals").iterdir())

    listing = run_cli("runs", "--output-dir", str(d / "runs"))
    assert run_dir.name in listing.stdout and "complete" in listing.stdout

    _one_line_error(run_cli("predict", str(d / "runs" / "nope"), "--text", "x"), "not a tunesmith run folder")
    _one_line_error(run_cli("eval", str(run_dir), "--data", str(cases["dir"] / "test_unseen.csv")), "['weird']")
    _one_line_error(run_cli("train", "--resume", str(run_dir)), "already complete")


def test_strategies_lists_each_with_a_line():
    result = run_cli("strategies")
    assert result.returncode == 0
    names = [line.split()[0] for line in result.stdout.splitlines()]
    assert {"full", "freeze", "lora"} <= set(names)


def test_train_refuses_a_leaking_split_unless_allowed(tmp_path, tiny_model):
    rows = toy_rows(150)
    train = write_csv(tmp_path / "train.csv", rows[:120])
    test = write_csv(tmp_path / "test.csv", rows[120:] + rows[:10])  # 10 training rows leaked into test
    cfg = tiny_config(tmp_path, tiny_model, train, train={"epochs": 1})
    cfg["data"] = {"train": str(train), "test": str(test), "max_length": 32}
    config = write_yaml(tmp_path / "leak.yaml", cfg)
    line = _one_line_error(run_cli("train", str(config)), "leakage", "test", "--allow-leakage")
    assert "train" in line
    assert not (tmp_path / "runs").exists()
    allowed = run_cli("train", str(config), "--allow-leakage")
    assert allowed.returncode == 0, allowed.stderr[-2000:]
    (run_dir,) = [p for p in (tmp_path / "runs").iterdir() if (p / "run.json").is_file()]
    assert (run_dir / "audit.md").is_file() and "leak" in (run_dir / "audit.md").read_text().lower()


def test_data_audit_command(tmp_path):
    rows = toy_rows(90)
    train = write_csv(tmp_path / "train.csv", rows[:60] + rows[:5])  # 5 exact duplicates
    test = write_csv(tmp_path / "test.csv", rows[60:] + rows[10:13])  # 3 leaked rows
    result = run_cli("data", "audit", str(train), "--test", str(test), "--out", str(tmp_path / "report"))
    assert result.returncode == 1, result.stderr[-2000:]  # leakage blocks
    import json

    report = json.loads((tmp_path / "report" / "audit.json").read_text())
    assert report["counts"]["train.exact_duplicate_rows"] >= 5
    assert report["counts"]["leakage.test_in_train"] >= 3
    _one_line_error(run_cli("data", "audit", str(tmp_path / "nope.csv")), "nope.csv", "not found")


def test_data_audit_with_a_model_a_semicolon_file_and_label_variants(tmp_path, tiny_model):
    rows = toy_rows(90)
    for r in rows[::9]:
        r["label"] = r["label"].upper() + " "  # "POS " beside "pos"
    path = tmp_path / "semi.csv"
    pd.DataFrame(rows).to_csv(path, index=False, sep=";")
    cache = tmp_path / "xdg"
    out = tmp_path / "report"
    result = run_cli(
        "data", "audit", str(path), "--model", str(tiny_model), "--out", str(out), env={"XDG_CACHE_HOME": str(cache)}
    )
    assert result.returncode == 1, result.stderr[-2000:]  # label variants block, like leakage
    assert "blocking: label variants: 'pos' (" in result.stderr and "data.normalize_labels" in result.stderr
    assert f"frozen {tiny_model} features of 90 texts" in result.stderr  # the model's features were computed...
    assert list((cache / "tunesmith" / "features").glob("*.safetensors"))  # ...into the user's cache, not the cwd
    report = json.loads((out / "audit.json").read_text())
    assert (
        report["label_noise"]["model"] == f"tfidf + {tiny_model} features" and report["schema"]["train"]["rows"] == 90
    )


def test_a_run_killed_before_its_first_checkpoint_reads_died_and_restarts_in_place(tmp_path, tiny_model, toy_csv):
    cfg = tiny_config(tmp_path, tiny_model, toy_csv, train={"epochs": 1, "eval_every": 1000})
    config = write_yaml(tmp_path / "c.yaml", cfg)
    killed = run_cli("train", str(config), env={"TUNESMITH_FAULT_AT_STEP": "2:KILL"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    (run_dir,) = [p for p in (tmp_path / "runs").iterdir() if (p / "run.json").is_file()]
    assert not (run_dir / "checkpoints" / "last").exists()

    listing = run_cli("runs", "--output-dir", str(tmp_path / "runs"))
    assert f"{run_dir.name}" in listing.stdout and "died (step " in listing.stdout, listing.stdout
    line = _one_line_error(run_cli("train", "--resume", str(run_dir)), "died before its first checkpoint")
    assert line.endswith(f"tunesmith train --restart {run_dir}")

    restarted = run_cli("train", "--restart", str(run_dir))
    assert restarted.returncode == 0, restarted.stderr[-2000:]
    assert [p.name for p in (tmp_path / "runs").iterdir() if (p / "run.json").is_file()] == [run_dir.name]
    listing = run_cli("runs", "--output-dir", str(tmp_path / "runs"))
    assert "complete" in listing.stdout and "died" not in listing.stdout
