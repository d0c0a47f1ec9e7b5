"""`tunesmith tune`: a thin call of tools.tune.

tunesmith tune config.yaml --trials 24 --workers 2                          # on one machine
tunesmith tune config.yaml --storage postgresql://.../optuna --study s1     # the same command on each machine
tunesmith tune --resume runs/<study>                                        # continue an interrupted study
"""

from __future__ import annotations

import sys

from ..errors import ConfigError, Interrupted


def add_tune_command(subparsers) -> None:
    t = subparsers.add_parser(
        "tune", help="hyperparameter search on Optuna (validation only; the test split is used once, at the end)"
    )
    t.add_argument("config", nargs="?", help="YAML config with an optional tune: section (not with --resume)")
    t.add_argument("overrides", nargs="*", help="dotted overrides, e.g. tune.sampler=random train.epochs=2")
    t.add_argument("--trials", type=int, help="trials in the study (default: tune.trials); with --resume: raise it")
    t.add_argument("--workers", type=int, default=1, help="worker processes on this machine (threads = cores / K)")
    t.add_argument(
        "--storage", help="an Optuna database URL shared by several machines (default: SQLite in the study folder)"
    )
    t.add_argument("--study", help="the study's name (default: <name>-tune-<time>); the same on every machine")
    t.add_argument("--resume", metavar="STUDY_DIR", help="continue an interrupted study")
    t.add_argument("--status", metavar="STUDY_DIR", help="how far a study (running or stopped) has got, then exit")
    t.set_defaults(func=cmd_tune)


def cmd_tune(args) -> int:
    from pathlib import Path

    from ..tools.tune import study_progress, tune

    if args.status:
        p = study_progress(Path(args.status))
        states = ", ".join(f"{k} {v}" for k, v in sorted(p["states"].items())) or "no trials yet"
        print(f"{args.status}: {p['counted']} of {p['target']} trials counted ({states})")
        return 0
    if not args.config and not args.resume:
        raise ConfigError("tune: give a config (tunesmith tune config.yaml) or --resume STUDY_DIR")
    if args.config and "=" in args.config and args.resume:
        args.overrides.insert(0, args.config)
        args.config = None
    try:
        s = tune(
            args.config,
            args.overrides,
            trials=args.trials,
            workers=args.workers,
            storage=args.storage,
            study=args.study,
            resume=args.resume,
        )
    except Interrupted as e:
        where = getattr(e, "study", None) or args.resume
        print(
            f"\nstudy interrupted; trials so far are kept. Continue with:\n  tunesmith tune --resume {where}",
            file=sys.stderr,
        )
        return 130
    t = s["trials"]
    print(
        f"\n[tune] {t['counted']} trials ({', '.join(f'{k} {v}' for k, v in t.items() if k not in ('target', 'counted'))})"
    )
    if "best" in s:
        print(f"[tune] best: trial {s['best']['trial']}, validation {s['metric']} {s['best']['validation']:.4f}")
    for which, r in s["final"].get("runs", {}).items():
        test = f"test {s['metric']} {r['test']:.4f}" if r["test"] is not None else "no test figure"
        print(f"[tune] final {which}: {test} ({r['path']})")
    if "comparison" in s["final"]:
        print(f"[tune] {s['final']['comparison']['verdict']}")
    print(f"[tune] wrote {s['path']}/study.md, study.html, trials.csv and best.yaml")
    return 0
