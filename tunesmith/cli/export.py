"""`tunesmith export RUN --format hf|onnx|gguf [--quantize Q] --out DIR`: a thin call of tunesmith.export.export_run.

tunesmith export runs/sentiment-lora-... --format onnx --quantize int8 --out exports/sentiment-int8
tunesmith export runs/chat-lora-...      --format gguf --quantize q8_0 --out exports/chat-q8_0

Every export is checked against the run (parity) unless --no-parity; a failed check exits 2 with one line and
leaves the folder (with export.json saying "failed") for inspection.
"""

from __future__ import annotations

import sys


def add_export_commands(subparsers) -> None:
    """Register `export` on the top-level subparsers of the tunesmith CLI."""
    x = subparsers.add_parser(
        "export",
        help="write a run as a plain transformers folder, ONNX or GGUF, checked against the run (parity)",
        description="Formats: hf (any run: adapters merged, a plain transformers folder), onnx (text "
        "encoder and image classifiers; --quantize int8: dynamic for text, static calibrated for images), gguf (Llama-family causal LMs; --quantize f16 (default) | bf16 | f32 | "
        "q8_0 | q5_1 | q5_0 | q4_1 | q4_0; K-quants: llama.cpp's llama-quantize on an f16 export).",
    )
    x.add_argument("run", help="a complete run folder, or models:/NAME@ALIAS")
    x.add_argument("--out", required=True, help="the folder to write (must not exist, unless --force)")
    x.add_argument("--format", default="hf", choices=["hf", "onnx", "gguf"], help="default: hf")
    x.add_argument("--quantize", help="onnx: none | int8; gguf: f16 (default), bf16, f32, q8_0, q5_1, q5_0, q4_1, q4_0")
    x.add_argument("--no-parity", action="store_true", help="skip the check of the export against the run")
    x.add_argument(
        "--parity-rows",
        type=int,
        help="test rows the parity check compares (default: 200 for classifiers, 16 samples for language models)",
    )
    x.add_argument(
        "--max-metric-drop",
        type=float,
        help="the largest accepted metric drop: macro-F1 points for classifiers, relative perplexity rise for "
        "language models (default by precision, in export.json; e.g. 0.02 for int8 and q8_0)",
    )
    x.add_argument("--force", action="store_true", help="replace --out when it holds an earlier export")
    x.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    from ..export import ParityError, export_run

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        result = export_run(
            args.run,
            args.out,
            format=args.format,
            quantize=args.quantize,
            parity=not args.no_parity,
            parity_rows=args.parity_rows,
            max_metric_drop=args.max_metric_drop,
            force=args.force,
            say=say,
        )
    except ParityError as err:  # the figures on stdout, then the one-line error (exit 2) from the CLI
        print("\n".join(err.lines))
        raise
    print("\n".join(result.lines()))
    r = result.report
    print(
        f"wrote {result.path} ({r['artifact']}, {r['size_mb']:.1f} MB); load: {r['load'].replace('DIR', str(result.path))}"
    )
    return 0
