"""`tunesmith cv|compare|register|models|promote`: thin calls of tunesmith.cv, evaluate.compare and tracking.registry.

tunesmith cv config.yaml --folds 5                       # stratified k-fold: mean, std, per-fold table
tunesmith compare RUN_A RUN_B [RUN_C ...] --out cmp/      # paired significance, Markdown + HTML
tunesmith compare-tasks MULTI_TASK_RUN                     # each task alone vs the multi-task run
tunesmith register RUN --name sentiment                   # a version in the MLflow model registry
tunesmith models                                          # registered names, versions, aliases, metrics
tunesmith promote sentiment 3 --to production             # alias; then predict models:/sentiment@production
"""

from __future__ import annotations

from pathlib import Path


def add_eval_commands(subparsers) -> None:
    c = subparsers.add_parser("cv", help="stratified k-fold cross-validation of a config (parent + child runs)")
    c.add_argument("config")
    c.add_argument("overrides", nargs="*", help="dotted overrides, as for train")
    c.add_argument("--folds", type=int, default=5)
    c.set_defaults(func=cmd_cv)

    m = subparsers.add_parser(
        "compare", help="compare runs on the same test set: deltas with CIs, significance, what changed"
    )
    m.add_argument("runs", nargs="+", help="run folders; the first is the reference")
    m.add_argument(
        "--out", help="folder for compare.md, compare.html, compare.json and plots (default: compare-<A>-vs-<B>)"
    )
    m.add_argument("--metric", default="macro_f1", help="headline metric: macro_f1, accuracy or weighted_f1")
    m.add_argument(
        "--allow-different-data",
        action="store_true",
        help="compare runs tested on different data (unpaired figures only)",
    )
    m.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples and permutations per test")
    m.add_argument("--task", help="multi-task runs: compare this task's head (its folder RUN/tasks/NAME)")
    m.set_defaults(func=cmd_compare)

    ct = subparsers.add_parser(
        "compare-tasks", help="did multi-task help? train each task of a multi-task run alone, then compare"
    )
    ct.add_argument("run", help="a complete multi-task run folder")
    ct.add_argument("--tasks", help="comma-separated tasks (default: the primary ones)")
    ct.add_argument(
        "--budget",
        default="matched",
        choices=["matched", "config"],
        help="matched: as many training examples as the task got in the run (default); config: the run's epochs",
    )
    ct.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples and permutations per test")
    ct.set_defaults(func=cmd_compare_tasks)

    r = subparsers.add_parser("register", help="register a run's model as a new version in the MLflow model registry")
    r.add_argument("run")
    r.add_argument("--name", required=True, help="registered model name")
    r.add_argument("--tracking-uri", help="MLflow store (default: the run's own, e.g. sqlite:///runs/mlflow.db)")
    r.set_defaults(func=cmd_register)

    ls = subparsers.add_parser("models", help="list registered models: versions, aliases, headline metrics")
    ls.add_argument("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI or sqlite:///runs/mlflow.db)")
    ls.add_argument(
        "--lineage", metavar="NAME", help="print the chain of versions of NAME: parents, data, gate verdicts"
    )
    ls.set_defaults(func=cmd_models)

    p = subparsers.add_parser("promote", help="point an alias (e.g. production) at a registered model version")
    p.add_argument("name")
    p.add_argument("version", type=int, nargs="?", help="the version to point the alias at (or --if-better RUN)")
    p.add_argument("--to", default="production", help="alias name (default: production)")
    p.add_argument(
        "--if-better",
        metavar="RUN",
        help="the gate: register and promote RUN only if it beats the alias's version on new data and is not worse "
        "on the old test set (paired bootstrap + permutation test); exit 3 when refused",
    )
    p.add_argument("--metric", default="macro_f1", help="gate metric: macro_f1 | accuracy | weighted_f1")
    p.add_argument("--alpha", type=float, default=0.05, help="gate significance level (default 0.05)")
    p.add_argument(
        "--margin",
        type=float,
        default=0.01,
        help="gate: how much worse on the old test set is tolerated (0.01 = 1 point)",
    )
    p.add_argument(
        "--new-test", help="gate: the new test set (default: the retrain's, else the candidate's test split)"
    )
    p.add_argument("--old-test", help="gate: the old test set (default: the retrain's, else production's test split)")
    p.add_argument("--dry-run", action="store_true", help="gate: decide and report, but do not register or promote")
    p.add_argument("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI or sqlite:///runs/mlflow.db)")
    p.set_defaults(func=cmd_promote)


def cmd_compare_tasks(args) -> int:
    from ..tools.compare_tasks import compare_tasks

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    compare_tasks(args.run, tasks, args.budget, args.resamples)
    return 0


def cmd_cv(args) -> int:
    from ..tools.cv import cross_validate

    result = cross_validate(args.config, args.overrides, args.folds)
    print(
        f"\n{args.folds}-fold cross-validation: "
        + ", ".join(f"{m} {s['mean']:.4f} +- {s['std']:.4f}" for m, s in result["summary"].items())
    )
    print(f"wrote {result['path']}/cv.md")
    return 0


def cmd_compare(args) -> int:
    from ..evaluate.compare_html import headlines, write_comparison
    from ..tools.compare import compare_runs

    result = compare_runs(args.runs, args.metric, args.allow_different_data, args.resamples, task=args.task)
    out = args.out or f"compare-{Path(args.runs[0]).name}-vs-{Path(args.runs[1]).name}"
    md, html = write_comparison(result, out)
    for line in headlines(result):
        print(line)
    print(f"wrote {md} and {html}")
    return 0


def cmd_register(args) -> int:
    from ..runs.registry import register

    v = register(args.run, args.name, args.tracking_uri)
    print(f"registered {v['name']} version {v['version']} (source {v['source']}) in {v['uri']}")
    print(f"promote it: tunesmith promote {v['name']} {v['version']} --to production")
    return 0


def cmd_models(args) -> int:
    from ..runs.registry import list_models, registry_uri

    if args.lineage:
        return print_lineage(args.lineage, args.tracking_uri)
    rows = list_models(args.tracking_uri)
    if not rows:
        print(f"no registered models in {registry_uri(args.tracking_uri)}")
        return 0
    print(f"{'name':20} {'ver':>4} {'aliases':14} {'test F1':>8} {'95% CI':15} {'acc':>7} {'strategy':9} run")
    for r in rows:
        t = r["tags"]
        print(
            f"{r['name']:20} {r['version']:>4} {','.join(r['aliases']) or '-':14} {t.get('test_macro_f1', '-'):>8} "
            f"{t.get('test_macro_f1_ci', '-'):15} {t.get('test_accuracy', '-'):>7} {t.get('strategy', '-'):9} {Path(t.get('run_folder', '-')).name}"
        )
    return 0


def cmd_promote(args) -> int:
    from ..errors import ConfigError
    from ..runs.registry import promote

    if (args.version is None) == (args.if_better is None):
        raise ConfigError("promote: give the VERSION to promote, or --if-better RUN for the gate (one of them)")
    if args.if_better:
        from ..tools.gate import gate

        out = gate(
            args.name,
            args.if_better,
            args.to,
            args.metric,
            args.alpha,
            args.margin,
            args.new_test,
            args.old_test,
            args.tracking_uri,
            dry_run=args.dry_run,
        )
        return 0 if out["promote"] else 3
    promote(args.name, args.version, args.to, args.tracking_uri)
    print(
        f'{args.name}@{args.to} -> version {args.version}; load it with: tunesmith predict models:/{args.name}@{args.to} --text "..."'
    )
    return 0


def print_lineage(name: str, uri: str | None) -> int:
    from ..runs.registry import lineage

    for r in lineage(name, uri):
        t = r["tags"]
        aliases = f" [{', '.join(r['aliases'])}]" if r["aliases"] else ""
        parent = f" <- v{t['parent_version']}" if t.get("parent_version") else " (first version)"
        print(
            f"v{r['version']}{aliases}{parent}  test macro-F1 {t.get('test_macro_f1', '-')}  run {Path(t.get('run_folder', '-')).name}"
        )
        if t.get("gate"):
            gate = t["gate"].replace("vNEW", f"v{r['version']}")
            print(f"    {gate}")
    return 0
