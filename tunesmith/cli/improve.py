"""The improvement loop: `tunesmith monitor | feedback import | retrain` (the gate is `promote --if-better`).

tunesmith monitor models:/sentiment@production --log serve/predictions.jsonl --window 500   # exit 3 on an alert
tunesmith feedback import corrections.csv --log serve/predictions.jsonl
tunesmith retrain models:/sentiment@production --new new.csv --feedback serve/ --out runs/
tunesmith promote sentiment --if-better runs/<candidate>
"""

from __future__ import annotations

EXIT_ALERT = 3


def add_improve_commands(subparsers) -> None:
    m = subparsers.add_parser(
        "monitor", help="drift report of recent traffic against the model's test data; exit 3 on alert"
    )
    m.add_argument("model", help="a run folder or models:/NAME@ALIAS")
    src = m.add_mutually_exclusive_group(required=True)
    src.add_argument("--log", help="the server's prediction log (tunesmith serve --log)")
    src.add_argument("--data", help="a file of recent inputs (CSV/JSONL/Parquet; a label column gives live quality)")
    m.add_argument(
        "--reference", help="a run folder (its test split) or a file to compare with (default: the model's test split)"
    )
    m.add_argument("--served", help="the served model name to watch when the log holds several")
    m.add_argument("--window", help="items per window (500) or a span of log time (30m, 1h, 1d); default: all at once")
    m.add_argument("--feedback", help="feedback labels for live quality (default: feedback.csv beside the log)")
    m.add_argument("--alpha", type=float, default=0.05, help="false-alarm rate per window (Holm over the drift tests)")
    m.add_argument(
        "--psi-alert", type=float, help="also alert when a PSI reaches this (e.g. 0.25); default: report only"
    )
    m.add_argument("--min-window", type=int, default=30, help="windows with fewer items are reported, not tested")
    m.add_argument("--permutations", type=int, default=500, help="permutations of the embedding MMD test")
    m.add_argument(
        "--max-rows", type=int, default=1000, help="items per side tested (a seeded sample of larger windows)"
    )
    m.add_argument("--text-column", help="--data: the text column (default: the run's)")
    m.add_argument("--label-column", help="--data: the label column, when present (default: the run's)")
    m.add_argument("--out", default="monitor", help="folder for monitor.md/.html/.json/.png (default: monitor/)")
    m.set_defaults(func=cmd_monitor)

    f = subparsers.add_parser("feedback", help="human corrections for logged predictions")
    fs = f.add_subparsers(dest="feedback_command", required=True)
    fi = fs.add_parser("import", help="join corrections (id, label | completion) to a prediction log's answers")
    fi.add_argument(
        "corrections", help="CSV/JSONL with the item id (`<response id>:<position>`) and the correct answer"
    )
    fi.add_argument("--log", required=True, help="the server's prediction log")
    fi.add_argument("--out", help="feedback file (default: feedback.csv, or feedback.jsonl, beside the log)")
    fi.add_argument("--id-column", default="id")
    fi.add_argument("--label-column", help="column with the correct label or completion (default: label, completion)")
    fi.set_defaults(func=cmd_feedback_import)

    r = subparsers.add_parser("retrain", help="train the next version on new data + feedback + replayed old data")
    r.add_argument("model", help="the production model: models:/NAME@ALIAS or a run folder")
    r.add_argument("overrides", nargs="*", help="dotted overrides of the parent's config, e.g. train.epochs=1")
    r.add_argument("--new", help="new labelled data (split into train / validation / a new test set)")
    r.add_argument("--feedback", help="a feedback file, or the log (its folder's feedback.csv)")
    r.add_argument("--out", default="runs", help="output folder of the candidate run (default: runs/)")
    r.add_argument(
        "--from",
        dest="start",
        default="production",
        choices=["production", "base"],
        help="continue from the production model (default) or the parent's base model",
    )
    r.add_argument(
        "--replay", type=float, default=1.0, help="old training rows replayed per added row (default 1.0; 0 = none)"
    )
    r.add_argument(
        "--new-test-size", type=float, default=0.2, help="share of the new data held out as the new test set"
    )
    r.add_argument("--name", help="run name (default: <parent>-retrain)")
    r.set_defaults(func=cmd_retrain)


def cmd_monitor(args) -> int:
    from ..tools.monitor import monitor

    report = monitor(
        args.model,
        log=args.log,
        data=args.data,
        reference=args.reference,
        served=args.served,
        window=args.window,
        feedback=args.feedback,
        alpha=args.alpha,
        psi_alert=args.psi_alert,
        min_window=args.min_window,
        permutations=args.permutations,
        max_rows=args.max_rows,
        out=args.out,
        text_column=args.text_column,
        label_column=args.label_column,
    )
    return EXIT_ALERT if report["alert"] else 0


def cmd_feedback_import(args) -> int:
    from ..tools.feedback import import_feedback

    import_feedback(args.corrections, args.log, args.out, args.id_column, args.label_column)
    return 0


def cmd_retrain(args) -> int:
    from ..tools.retrain import retrain

    retrain(
        args.model,
        new=args.new,
        feedback=args.feedback,
        out=args.out,
        start=args.start,
        replay=args.replay,
        new_test_size=args.new_test_size,
        overrides=args.overrides,
        name=args.name,
    )
    return 0
