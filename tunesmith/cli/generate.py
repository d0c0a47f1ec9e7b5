"""`tunesmith generate` and `tunesmith chat`: use a fine-tuned generative run.

tunesmith generate RUN --prompt "..." [--prompt ...]      # one completion per prompt
tunesmith generate RUN --file prompts.jsonl --out out.jsonl # batch: a prompt (or messages) column
tunesmith chat RUN                                         # interactive, chat template, streamed tokens
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import DataError


def add_generate_commands(subparsers) -> None:
    g = subparsers.add_parser("generate", help="generate with a fine-tuned causal-LM / seq2seq run")
    g.add_argument("run", help="run folder")
    g.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    g.add_argument("--file", help="CSV/JSONL/Parquet with a prompt column (or messages for chat runs)")
    g.add_argument("--column", help="the prompt column of --file (default: the run's data.prompt_column, or messages)")
    g.add_argument("--out", help="write the file with a `generated` column here (JSONL or CSV by suffix)")
    g.add_argument("--max-new-tokens", type=int)
    g.add_argument(
        "--sample",
        action="store_true",
        help="sample (temperature/top_p from the run's generate: section) instead of greedy",
    )
    g.set_defaults(func=cmd_generate)

    c = subparsers.add_parser(
        "chat", help="talk to a fine-tuned chat model (streams tokens; /reset clears, Ctrl-D quits)"
    )
    c.add_argument("run", help="run folder")
    c.add_argument("--system", help="a system message for the conversation")
    c.add_argument("--max-new-tokens", type=int, default=256)
    c.set_defaults(func=cmd_chat)


def cmd_generate(args) -> int:
    from ..data.loaders import load_table, pick_split, require_columns
    from ..runs.run import Run
    from ..utils import atomic_write_text

    run = Run(args.run)
    if bool(args.prompt) == bool(args.file):
        raise DataError('generate: give --prompt "..." (repeatable) or --file prompts.jsonl [--out out.jsonl]')
    extra = {"do_sample": True} if args.sample else {}
    if args.prompt:
        for prompt, text in zip(args.prompt, run.generate(args.prompt, args.max_new_tokens, **extra)):
            print(text if len(args.prompt) == 1 else f"{prompt}\t{text}")
        return 0
    df = pick_split(load_table(args.file), "test", args.file)
    column = args.column or ("messages" if "messages" in df.columns else run.config.data.prompt_column)
    require_columns(df, {"prompt": column}, args.file, "pass --column")
    prompts = [p.tolist() if hasattr(p, "tolist") else p for p in df[column]]
    prompts = [p[:-1] if isinstance(p, list) and p and p[-1].get("role") == "assistant" else p for p in prompts]
    df["generated"] = run.generate(prompts, args.max_new_tokens, **extra)
    if not args.out:
        for p, text in zip(df[column], df["generated"]):
            print(
                json.dumps(
                    {"prompt": p if isinstance(p, str) else p[-1]["content"], "generated": text}, ensure_ascii=False
                )
            )
        return 0
    out = Path(args.out)
    body = (
        df.to_json(orient="records", lines=True, force_ascii=False)
        if out.suffix == ".jsonl"
        else df.to_csv(index=False)
    )
    atomic_write_text(out, body)
    print(f"wrote {len(df)} generations to {out}")
    return 0


def cmd_chat(args) -> int:
    import torch
    from transformers import TextStreamer

    from ..runs.run import Run
    from ..tasks.generative.formats import stop_token_ids

    run = Run(args.run)
    if not run.task.supports_chat:
        raise DataError(
            f"{args.run}: chat needs a chat model (a causal-lm run; this one is {run.config.task}); use `tunesmith generate`"
        )
    loaded = run.load()
    tok, model = loaded.tokenizer, loaded.model
    history = [{"role": "system", "content": args.system}] if args.system else []
    print(f"chatting with {run.path.name} (/reset clears the conversation, Ctrl-D quits)", file=sys.stderr)
    stops = sorted(stop_token_ids(tok, model))
    while True:
        try:
            user = input("you> ").strip()
        except EOFError:
            print(file=sys.stderr)
            return 0
        if not user:
            continue
        if user == "/reset":
            history = history[:1] if args.system else []
            continue
        history.append({"role": "user", "content": user})
        text = tok.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False, return_tensors="pt").to(loaded.device)
        streamer = TextStreamer(tok, skip_prompt=True, skip_special_tokens=True)
        print("model> ", end="", flush=True)
        with torch.no_grad(), loaded.autocast():
            out = model.generate(
                **ids,
                max_new_tokens=args.max_new_tokens,
                do_sample=False,
                streamer=streamer,
                eos_token_id=stops or None,
                pad_token_id=tok.pad_token_id,
                temperature=None,
                top_p=None,
                top_k=None,
            )
        history.append(
            {
                "role": "assistant",
                "content": tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip(),
            }
        )
