"""`tunesmith serve` (an HTTP server for finished runs) and `tunesmith log summarize | shadow` (its prediction log).

tunesmith serve runs/a runs/b models:/sentiment@prod --port 8000 --log serve/predictions.jsonl
tunesmith serve A=runs/a B=runs/b --route sentiment=A:0.9,B:0.1 --api-key-file keys.txt
tunesmith serve A=runs/a B=runs/b --shadow A=B --log serve/predictions.jsonl
tunesmith log summarize serve/predictions.jsonl
tunesmith log shadow serve/predictions.jsonl --labels gold.csv
"""

from __future__ import annotations

import json


def add_serve_commands(subparsers) -> None:
    s = subparsers.add_parser("serve", help="serve runs over HTTP: classify, generate, OpenAI-compatible chat")
    s.add_argument("models", nargs="+", help="run folders or models:/NAME@ALIAS, optionally named: NAME=RUN")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--route", action="append", default=[], help="A/B split: NAME=MODEL_A:0.9,MODEL_B:0.1 (repeatable)")
    s.add_argument(
        "--shadow",
        action="append",
        default=[],
        help="PRIMARY=CANDIDATE: CANDIDATE answers PRIMARY's traffic too, into --log only (repeatable)",
    )
    s.add_argument("--api-key-file", help="keys, one per line: requests then need `Authorization: Bearer KEY`")
    s.add_argument("--log", help="append every request and answer to this JSONL prediction log")
    s.add_argument("--log-rotate-mb", type=float, default=50.0)
    s.add_argument("--max-batch", type=int, default=32, help="most texts/prompts per forward pass")
    s.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch waits for more requests")
    s.add_argument("--no-batching", action="store_true", help="run every request alone")
    s.add_argument("--threads", type=int, help="torch threads for the models (default: one per core)")
    s.add_argument("--queue-size", type=int, default=256, help="waiting requests per model before 503")
    s.add_argument("--timeout", type=float, default=60.0, help="seconds per request before 504")
    s.add_argument("--read-timeout", type=float, default=10.0, help="seconds a client has to send its body (408)")
    s.add_argument("--max-texts", type=int, default=256, help="texts, images or prompts per request")
    s.add_argument("--max-text-chars", type=int, default=20_000)
    s.add_argument("--max-tokens", type=int, default=512, help="most new tokens a request may ask for")
    s.add_argument("--max-total-tokens", type=int, default=4096, help="prompt + new tokens per prompt")
    s.add_argument("--max-body-kb", type=int, default=1000)
    s.set_defaults(func=cmd_serve)

    g = subparsers.add_parser("log", help="read a server's prediction log")
    gs = g.add_subparsers(dest="log_command", required=True)
    su = gs.add_parser("summarize", help="per-version traffic, errors, latency and label distribution")
    su.add_argument("log")
    su.add_argument("--json", action="store_true", help="print the summary as JSON")
    su.set_defaults(func=cmd_log_summarize)
    sh = gs.add_parser("shadow", help="compare each shadow with its primary: agreement, labels, accuracy, McNemar")
    sh.add_argument("log")
    sh.add_argument("--labels", help="CSV with columns id,label (id: REQUEST_ID:i, i the item's position)")
    sh.add_argument("--json", action="store_true", help="print the comparison as JSON")
    sh.set_defaults(func=cmd_log_shadow)


def cmd_serve(args) -> int:
    from ..serve import ServeOptions, Server, parse_route, parse_shadow, read_api_keys

    options = ServeOptions(
        host=args.host,
        port=args.port,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        batching=not args.no_batching,
        threads=args.threads,
        queue_size=args.queue_size,
        timeout_s=args.timeout,
        read_timeout_s=args.read_timeout,
        max_texts=args.max_texts,
        max_text_chars=args.max_text_chars,
        max_tokens=args.max_tokens,
        max_total_tokens=args.max_total_tokens,
        max_body_bytes=args.max_body_kb * 1000,
        api_keys=read_api_keys(args.api_key_file) if args.api_key_file else [],
        routes=[parse_route(r) for r in args.route],
        shadows=[parse_shadow(s) for s in args.shadow],
        log=args.log,
        log_rotate_bytes=int(args.log_rotate_mb * 1e6),
    )
    server = Server(args.models, options)
    names = ", ".join([*server.models, *(r.name for r in options.routes)])
    shadows = "".join(f"; {s.candidate} shadows {s.primary}" for s in options.shadows)
    print(f"serving {names} on {server.url}{shadows} (Ctrl-C or SIGTERM stops gracefully)", flush=True)
    server.run()
    print("server stopped", flush=True)
    return 0


def cmd_log_summarize(args) -> int:
    from ..serve import summarize, summary_table

    summary = summarize(args.log)
    print(json.dumps(summary, indent=2) if args.json else summary_table(summary))
    return 0


def cmd_log_shadow(args) -> int:
    from ..serve import compare_arms, read_labels, shadow_table

    comparison = compare_arms(args.log, read_labels(args.labels) if args.labels else None)
    print(json.dumps(comparison, indent=2) if args.json else shadow_table(comparison))
    return 0
