"""Command line: each subcommand is a thin call of one library function.

User errors print one line and exit 2 (a traceback only with --debug); Ctrl-C during training
checkpoints and exits 130 with the command that resumes.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
import warnings
from pathlib import Path

from ..errors import Interrupted, TunesmithError
from .data import add_data_commands
from .evaluation import add_eval_commands
from .export import add_export_commands
from .generate import add_generate_commands
from .improve import add_improve_commands
from .plan import add_plan_command
from .serve import add_serve_commands
from .tune import add_tune_command

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def cmd_train(args) -> int:
    from ..engine.pipeline import finetune

    try:
        overrides = list(args.overrides) + (["audit.block_on_leakage=false"] if args.allow_leakage else [])
        finetune(args.config, overrides, resume=args.resume, restart=args.restart)
    except Interrupted as stop:
        run = args.resume or args.restart or "<the run folder printed above>"
        print(
            f"\ninterrupted after step {stop.step}; checkpoint saved. Resume with:\n  tunesmith train --resume {run}",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    return 0


def cmd_eval(args) -> int:
    from ..runs.run import load_run

    metrics = load_run(args.run).evaluate(args.data, args.text_column, args.label_column, task=args.task)
    print(f"{args.data}: {metrics['n']} rows")
    if "generation" in metrics:  # a generative run
        print(f"  {'loss':18} {metrics['loss']:.4f}\n  {'perplexity':18} {metrics['perplexity']:.4f}")
        for key, value in metrics["generation"].items():
            if key != "n":
                print(f"  {key:18} {value:.4f}   (generation, {metrics['generation']['n']} prompts)")
        return 0
    for key in ("macro_f1", "accuracy", "weighted_f1", "macro_precision", "macro_recall", "loss"):
        print(f"  {key:18} {metrics[key]:.4f}")
    return 0


def cmd_predict(args) -> int:
    from ..errors import DataError
    from ..runs.run import load_run
    from ..utils import atomic_write_text

    run = load_run(args.run)  # a run folder or models:/NAME@ALIAS
    predictor = run.predictor
    kind = predictor.input_kind
    given = args.image if kind == "image" else args.text
    if args.image if kind == "text" else args.text:
        raise DataError(f"predict: this run classifies {kind}s; give --{kind} (repeatable) or --file")
    if bool(given) == bool(args.file):
        raise DataError(f'predict: give --{kind} "..." (repeatable) or --file in.csv [--out preds.csv]')
    if given:
        for item, pred in zip(given, run.predict(given, task=args.task)):
            print(f"{pred.label}\t{pred.score:.4f}\t{item}")
        return 0
    df, inputs = predictor.read_inputs(args.file, args.image_column if kind == "image" else args.text_column)
    column = "image" if kind == "image" else (args.text_column or run.config.data.text_column)
    preds = run.predict(inputs, task=args.task)
    df["predicted"] = [p.label for p in preds]
    df["score"] = [round(p.score, 5) for p in preds]
    if args.out:
        atomic_write_text(Path(args.out), df.to_csv(index=False))
        print(f"wrote {len(df)} predictions to {args.out}")
    else:
        print(df[[column, "predicted", "score"]].to_csv(index=False, sep="\t"), end="")
    return 0


def cmd_runs(args) -> int:
    from ..runs.run import list_runs

    runs = list_runs(args.output_dir)
    if not runs:
        print(f"no runs in {args.output_dir}/")
        return 0
    print(f"{'run':42} {'status':26} {'task':20} {'strategy':9} {'model':12} results (test)")
    for run in runs:
        try:
            brief = run.task.brief(run.metrics) if run.metrics else "-"
        except TunesmithError:  # e.g. a user task that is not importable here: list the run all the same
            brief = "-"
        print(
            f"{run.path.name:42} {run.liveness.describe():26} {str(run.info.get('task'))[-20:]:20} {run.info.get('strategy', '?'):9} "
            f"{run.info.get('model', {}).get('name', '?')[-12:]:12} {brief}"
        )
    return 0


def cmd_strategies(args) -> int:
    from ..strategies import get_strategy_class, strategy_names

    for name in strategy_names():
        print(f"{name:18} {get_strategy_class(name).summary}")
    return 0


def cmd_tasks(args) -> int:
    from ..tasks.registry import get_task_class, task_names

    for name in task_names():
        print(f"{name:20} {get_task_class(name).summary}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tunesmith", description="Fine-tune pretrained models from a YAML config.")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="fine-tune, evaluate and record a run")
    t.add_argument(
        "config", nargs="?", help="YAML config (optional with --resume; not with --restart: it uses the saved one)"
    )
    t.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=3e-4 strategy.r=16")
    again = t.add_mutually_exclusive_group()
    again.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    again.add_argument(
        "--restart", metavar="RUN_DIR", help="train a run that did not complete again from scratch, in the same folder"
    )
    t.add_argument(
        "--allow-leakage", action="store_true", help="train even if validation/test rows also occur in train"
    )
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="evaluate a saved run on another labelled file")
    e.add_argument("run")
    e.add_argument("--data", required=True)
    e.add_argument("--text-column")
    e.add_argument("--label-column")
    e.add_argument("--task", help="a multi-task run: the task whose head is evaluated (default: the first primary)")
    e.set_defaults(func=cmd_eval)

    pr = sub.add_parser("predict", help="predict labels with a saved run")
    pr.add_argument("run")
    pr.add_argument("--text", action="append", help="a text to classify (repeatable)")
    pr.add_argument("--file", help="CSV/JSONL/Parquet with a text (or image) column; image runs: also a folder")
    pr.add_argument("--out", help="write the file with predictions here (CSV)")
    pr.add_argument("--text-column")
    pr.add_argument("--image", action="append", help="an image file to classify (repeatable; image runs)")
    pr.add_argument("--image-column", help="the image column of --file (default: the run's images.column)")
    pr.add_argument("--task", help="a multi-task run: the task whose head predicts (default: the first primary)")
    pr.set_defaults(func=cmd_predict)

    r = sub.add_parser("runs", help="list runs with their headline metrics")
    r.add_argument("--output-dir", default="runs")
    r.set_defaults(func=cmd_runs)

    s = sub.add_parser("strategies", help="list the fine-tuning strategies")
    s.set_defaults(func=cmd_strategies)

    ts = sub.add_parser("tasks", help="list the tasks (what can be learned)")
    ts.set_defaults(func=cmd_tasks)

    for add_commands in COMMAND_GROUPS:
        add_commands(sub)
    return p


# The rest of the command table: each group adds its subcommands (thin calls of library functions).
COMMAND_GROUPS = (
    add_data_commands,
    add_eval_commands,
    add_plan_command,
    add_generate_commands,
    add_export_commands,
    add_serve_commands,
    add_tune_command,
    add_improve_commands,
)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not args.debug:  # deprecation chatter between our dependencies is not the user's business
        warnings.filterwarnings("ignore", category=FutureWarning)
        # bitsandbytes (imported by PEFT) warns at import that its optional hub-fetched CPU kernels are absent.
        logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    if args.command == "train" and args.config and "=" in args.config and not Path(args.config).is_file():
        args.overrides.insert(0, args.config)  # `train --resume RUN key=value` parses the override as config
        args.config = None
    try:
        return args.func(args)
    except TunesmithError as err:
        if args.debug:
            traceback.print_exc()
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
