"""`tunesmith feedback import corrections.csv --log serve/predictions.jsonl`: human corrections joined to logged answers.

Every item a server answered has an id: `<request id>:<position>` (the response's `id`, and the item's 0-based
position in the request; a one-item request may be named by its request id alone). A corrections file holds
`id` and the correct `label` (classifiers) or the corrected `completion` (generative runs), plus any other columns
(rater, note), which are kept. Each correction is joined to its logged input and answer:

    id, text, label, predicted, score, error, model, version, time, + the file's other columns    (classify)
    id, prompt | messages, completion, predicted, error, model, version, time                       (generate, chat)

and written beside the log as `feedback.csv` (classify) or `feedback.jsonl` (generative, trainable as it is:
prompt/completion, or messages ending with the corrected assistant turn). Importing again merges: a later
correction of the same id replaces the earlier one. The file is written under a temporary name, then renamed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..data.loaders import load_table, pick_split
from ..errors import ConfigError, DataError
from ..serve.predlog import read_log
from ..utils import atomic_write_text

ENDPOINT_KIND = {"classify": "label", "generate": "completion", "chat": "completion"}


def item_id(request_id: str, position: int) -> str:
    return f"{request_id}:{position}"


def log_file(log: str | Path) -> Path:
    """The prediction log: the file itself, or the one log in a folder (`--log serve/` as well as the file)."""
    path = Path(log)
    if not path.is_dir():
        return path
    logs = sorted(p for p in path.glob("*.jsonl") if p.name != "feedback.jsonl")
    if len(logs) != 1:
        found = ", ".join(p.name for p in logs) or "none"
        raise ConfigError(f"{path}: give the prediction log file itself (.jsonl files in the folder: {found})")
    return logs[0]


def logged_items(log: str | Path, served: str | None = None, shadows: bool = False) -> pd.DataFrame:
    """One row per answered item of the log (status 200): id, time, endpoint, model, version, input, output, score.
    Shadow answers (`shadow_of`) are left out unless `shadows`; `served` keeps one served model name."""
    rows = []
    for rec in read_log(log_file(log)):
        if rec.get("status", 200) >= 400 or bool(rec.get("shadow_of")) != shadows:
            continue
        if served is not None and rec.get("model") != served:
            continue
        endpoint, inputs, outputs = rec.get("endpoint"), rec.get("inputs") or [], rec.get("outputs") or []
        if endpoint == "chat":
            inputs = [inputs]  # one conversation per request
        for i, (inp, out) in enumerate(zip(inputs, outputs)):
            row = {
                "id": item_id(rec.get("request_id"), i),
                "request_id": rec.get("request_id"),
                "time": rec.get("time"),
                "endpoint": endpoint,
                "model": rec.get("model"),
                "version": rec.get("version"),
                "input": inp,
            }
            if isinstance(out, dict):
                row.update(predicted=out.get("label"), score=out.get("score"), probs=out.get("probs"))
            else:
                row.update(predicted=out, score=None, probs=None)
            rows.append(row)
    return pd.DataFrame(
        rows,
        columns=["id", "request_id", "time", "endpoint", "model", "version", "input", "predicted", "score", "probs"],
    )


def feedback_path(log: str | Path, generative: bool = False) -> Path:
    """Where a log's feedback lives: beside it (`feedback.csv`, or `feedback.jsonl` for generative answers)."""
    return log_file(log).parent / ("feedback.jsonl" if generative else "feedback.csv")


def import_feedback(
    corrections: str | Path,
    log: str | Path,
    out: str | Path | None = None,
    id_column: str = "id",
    label_column: str | None = None,
    say=print,
) -> dict:
    """Join a corrections file to the log's answers; write (merge into) the feedback file. Returns counts."""
    df = pick_split(load_table(str(corrections)), "train", str(corrections))
    if id_column not in df.columns:
        raise DataError(
            f"{corrections}: no '{id_column}' column (columns: {', '.join(map(str, df.columns))}); "
            f"give each correction the item id the server answered with (`<response id>:<position>`)"
        )
    value = label_column or next((c for c in ("label", "completion") if c in df.columns), None)
    if value is None or value not in df.columns:
        raise DataError(
            f"{corrections}: no '{label_column or 'label'}' (or 'completion') column with the correct "
            f"answers; name it with --label-column"
        )
    df = df.dropna(subset=[id_column, value]).astype({id_column: str})
    items = logged_items(log)
    if items.empty:
        raise DataError(f"{log}: the log holds no answered items to join corrections to")
    by_id = items.drop_duplicates("id", keep="last").set_index("id")
    single = items.groupby("request_id")["id"].agg(list)
    ids = df[id_column].map(lambda i: i if i in by_id.index else _single(single, i))
    matched, missing = df[ids.notna()].copy(), df.loc[ids.isna(), id_column].tolist()
    if matched.empty:
        raise DataError(
            f"{corrections}: none of its {len(df)} ids is in {log} (e.g. {missing[0]!r}); ids are the server's "
            f"response id and the item's position, `<id>:<i>`"
        )
    matched["id"] = ids[ids.notna()]
    logged = by_id.loc[matched["id"]].reset_index()
    kinds = {ENDPOINT_KIND.get(e, "label") for e in logged["endpoint"]}
    if len(kinds) > 1:
        raise DataError(f"{corrections}: corrects both labels and completions; import one kind per file")
    generative = kinds == {"completion"}
    extra = [c for c in df.columns if c not in (id_column, value)]
    joined = pd.DataFrame(
        {
            "id": logged["id"].to_numpy(),
            "input": logged["input"].to_numpy(),
            "correct": matched[value].astype(str).to_numpy(),
            "predicted": logged["predicted"].to_numpy(),
            "score": logged["score"].to_numpy(),
            "model": logged["model"].to_numpy(),
            "version": logged["version"].to_numpy(),
            "time": logged["time"].to_numpy(),
            "endpoint": logged["endpoint"].to_numpy(),
            **{c: matched[c].to_numpy() for c in extra},
        }
    )
    joined["error"] = joined["correct"].str.strip() != joined["predicted"].astype(str).str.strip()
    target = Path(out) if out else feedback_path(log, generative)
    merged = _merge(target, joined, generative)
    errors = int(joined["error"].sum())
    result = {
        "file": str(target),
        "corrections": len(df),
        "joined": len(joined),
        "errors": errors,
        "confirmed": len(joined) - errors,
        "not_in_log": len(missing),
        "total": len(merged),
    }
    say(
        f"feedback: {len(joined)} corrections joined to the log ({errors} errors of the model, "
        f"{len(joined) - errors} answers confirmed)"
        + (f"; {len(missing)} ids are not in the log (e.g. {missing[0]!r})" if missing else "")
    )
    say(f"wrote {target} ({len(merged)} corrected items in all)")
    return result


def _single(single: pd.Series, request_id: str):
    """A bare request id names its only item."""
    found = single.get(request_id)
    return found[0] if found is not None and len(found) == 1 else None


def _merge(target: Path, joined: pd.DataFrame, generative: bool) -> pd.DataFrame:
    """The old feedback file plus these rows (the newer correction of an id wins), written atomically."""
    rows = joined.to_dict("records")
    if generative:
        old = read_feedback(target) if target.is_file() else []
        new = {r["id"]: _trainable(r) for r in rows}
        kept = [r for r in old if r["id"] not in new] + list(new.values())
        atomic_write_text(target, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
        return pd.DataFrame(kept)
    table = pd.DataFrame([{"text": r.pop("input"), "label": r.pop("correct"), **r} for r in rows])
    table = table.drop(columns=["endpoint"])
    if target.is_file():
        table = pd.concat([pd.read_csv(target, keep_default_na=False), table]).drop_duplicates("id", keep="last")
    atomic_write_text(target, table.to_csv(index=False))
    return table


def _trainable(r: dict) -> dict:
    """A generative correction as a training sample (+ its provenance)."""
    meta = {k: r[k] for k in ("id", "predicted", "error", "model", "version", "time")}
    if r["endpoint"] == "chat":
        return {"messages": [*r["input"], {"role": "assistant", "content": r["correct"]}], **meta}
    return {"prompt": r["input"], "completion": r["correct"], **meta}


def read_feedback(path: str | Path):
    """The feedback file: a DataFrame (classify) or a list of samples (generative JSONL)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"{path}: no feedback file (import corrections first: tunesmith feedback import FILE --log LOG)"
        )
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return pd.read_csv(path, keep_default_na=False)
