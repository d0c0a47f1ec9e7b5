"""Preference data: rows -> pairs (a prompt with a chosen and a rejected response; KTO: one labelled completion)
-> token ids and loss masks rendered exactly like causal-lm SFT samples.

Row forms (one file, split by prompt so that pairs of one prompt stay on one side; or train/validation/test files):
    {"messages": [..turns ending with the user's..], "chosen": "...", "rejected": "..."}      chat (chat template)
    {"prompt": "...", "chosen": "...", "rejected": "..."}                                      plain text prompt
    {"chosen": [..whole conversation..], "rejected": [..whole conversation..]}                 implicit shared prompt
    {"prompt" | "messages": ..., "completion": "...", "label": true}                            kto (unpaired)
`chosen`/`rejected`/`completion` may also be message lists (their last assistant turn is the response).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pandas as pd

from ...config.schema import Config
from ...data.loaders import load_table, pick_split
from ...errors import DataError
from ...utils import fingerprint
from ..generative.formats import IGNORE, Sample, render, split_samples

TRUE = {"true", "1", "yes", "desirable", "good", "chosen"}
FALSE = {"false", "0", "no", "undesirable", "bad", "rejected"}


@dataclass
class Pair:
    """One row: the chosen response as a generative Sample (its reference is the chosen text), and the rejected one
    (None for a KTO row, whose `desirable` says whether `chosen` is a good completion)."""

    row: int
    chosen: Sample
    rejected: Sample | None = None
    desirable: bool | None = None

    @property
    def prompt_key(self) -> str:
        s = self.chosen
        return "\x1f".join(m["content"] for m in s.messages[:-1]) if s.messages is not None else s.prompt or ""


@dataclass
class PairSplit:
    name: str
    pairs: list[Pair]
    source: str

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def samples(self) -> list[Sample]:
        """Prompts with their preferred answer as the reference (what generation before/after is scored on)."""
        return [p.chosen for p in self.pairs if p.desirable is not False]

    def fingerprint(self) -> str:
        other = [p.rejected.reference if p.rejected else str(p.desirable) for p in self.pairs]
        return fingerprint(
            [p.prompt_key for p in self.pairs], [p.chosen.reference + "\x1f" + o for p, o in zip(self.pairs, other)]
        )


@dataclass
class PairSplits:
    train: PairSplit
    validation: PairSplit
    test: PairSplit
    format: str
    unpaired: bool
    notes: list[str] = field(default_factory=list)
    mix = None  # no data mixes for preference data (the generative report reads it)

    def summary(self) -> dict:
        return {
            s.name: {"rows": len(s), "fingerprint": s.fingerprint(), "source": s.source}
            for s in (self.train, self.validation, self.test)
        }


def load_pair_splits(cfg: Config, unpaired: bool) -> PairSplits:
    """Train/validation/test pairs from data.path (split by prompt) or data.train/validation/test."""
    d = cfg.data
    first = d.path or d.train
    loaded = load_table(first, d.format, d.encoding, d.encoding_errors, d.delimiter)

    def read(spec: str, split: str = "train") -> pd.DataFrame:
        table = loaded if spec == first else load_table(spec, d.format, d.encoding, d.encoding_errors, d.delimiter)
        df = pick_split(table, split, spec)
        if df.empty:
            raise DataError(f"{spec}: no rows")
        return df

    pairs = to_pairs(read(first), cfg, first, unpaired)
    notes: list[str] = []
    rng = random.Random(cfg.seed)
    if d.max_samples and len(pairs) > d.max_samples:
        pairs = rng.sample(pairs, d.max_samples)
        notes.append(f"subsampled to {d.max_samples} rows (data.max_samples)")
    given = {
        name: PairSplit(name, to_pairs(read(getattr(d, name)), cfg, getattr(d, name), unpaired), getattr(d, name))
        for name in ("validation", "test")
        if getattr(d, name)
    }
    # Split by prompt: the pairs (or KTO rows) of one prompt, and near-duplicate prompts, stay on one side.
    keys = [Sample(i, prompt=p.prompt_key) for i, p in enumerate(pairs)]
    test_rows, val_rows, train_rows, split_notes = split_samples(keys, cfg, first, rng, given)
    pick = lambda rows, name, src: PairSplit(name, [pairs[i] for i in rows], src)  # noqa: E731
    fmt = "chat" if pairs[0].chosen.messages is not None else "completion"
    return PairSplits(
        pick(train_rows, "train", first),
        given.get("validation") or pick(val_rows, "validation", f"{first} (split)"),
        given.get("test") or pick(test_rows, "test", f"{first} (split)"),
        fmt,
        unpaired,
        notes + split_notes,
    )


def to_pairs(df: pd.DataFrame, cfg: Config, src: str, unpaired: bool) -> list[Pair]:
    d = cfg.data
    need = [d.completion_column, d.label_column] if unpaired else ["chosen", "rejected"]
    missing = [c for c in need if c not in df.columns]
    if missing:
        what = (
            f"'{d.completion_column}' + '{d.label_column}' (true = desirable) per row"
            if unpaired
            else "'chosen' + 'rejected' responses per row"
        )
        raise DataError(
            f"{src}: preference loss {cfg.preference.loss} needs {what}; missing {missing} "
            f"(columns: {', '.join(map(str, df.columns[:20]))})"
        )
    out = []
    for i, row in enumerate(df.to_dict("records")):
        where = f"{src} row {i + 1}"
        if unpaired:
            prompt, answer = _prompt_and_response(row, d.completion_column, cfg, where)
            out.append(Pair(i, _sample(i, prompt, answer), None, _label(row[d.label_column], where, d.label_column)))
            continue
        prompt, chosen = _prompt_and_response(row, "chosen", cfg, where)
        prompt_r, rejected = _prompt_and_response(row, "rejected", cfg, where)
        if prompt_r != prompt:
            raise DataError(
                f"{where}: the chosen and rejected conversations have different prompts; a pair must answer one prompt "
                f"(give the prompt once in '{d.messages_column}' or '{d.prompt_column}')"
            )
        out.append(Pair(i, _sample(i, prompt, chosen), _sample(i, prompt, rejected)))
    return out


def _prompt_and_response(row: dict, column: str, cfg: Config, where: str) -> tuple[str | list[dict], str]:
    """(the prompt: text or prompt turns, the response text) of one response column."""
    d = cfg.data
    value = row.get(column)
    if hasattr(value, "tolist"):
        value = value.tolist()
    implicit = None
    if isinstance(value, list):  # a message list: the last assistant turn answers; earlier turns are the prompt
        turns = _turns(value, where, column)
        if turns[-1]["role"] != "assistant":
            raise DataError(f"{where}: '{column}' must end with the assistant's turn")
        value, implicit = turns[-1]["content"], turns[:-1]
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: '{column}' is empty; fill it or drop the row")
    for key in (d.messages_column, d.prompt_column):
        given = row.get(key)
        if hasattr(given, "tolist"):
            given = given.tolist()
        if isinstance(given, list):
            turns = _turns(given, where, key)
            if turns[-1]["role"] == "assistant":
                raise DataError(f"{where}: '{key}' holds the prompt; it must end with the user's turn, not an answer")
            return turns + (implicit or []), value
        if isinstance(given, str) and given.strip():
            if implicit:
                return [{"role": "user", "content": given}, *implicit], value
            return given, value
    if implicit:
        return implicit, value
    raise DataError(f"{where}: no prompt; give '{d.messages_column}' (turns) or '{d.prompt_column}' (text)")


def _turns(value: list, where: str, column: str) -> list[dict]:
    out = []
    for k, m in enumerate(value):
        if (
            not isinstance(m, dict)
            or m.get("role") not in ("system", "user", "assistant")
            or not isinstance(m.get("content"), str)
        ):
            raise DataError(
                f'{where}: {column} turn {k + 1} must be {{"role": ..., "content": text}}, got {str(m)[:80]}'
            )
        out.append({"role": m["role"], "content": m["content"]})
    if not out:
        raise DataError(f"{where}: '{column}' is an empty list")
    return out


def _sample(row: int, prompt: str | list[dict], response: str) -> Sample:
    if isinstance(prompt, list):
        return Sample(row, messages=[*prompt, {"role": "assistant", "content": response}])
    return Sample(row, prompt=prompt, completion=response)


def _label(value, where: str, column: str) -> bool:
    text = str(value).strip().lower()
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    raise DataError(f"{where}: '{column}' must say whether the completion is desirable (true/false), got {value!r}")


# --------------------------------------------------------------------------------------------
# pairs -> token ids


@dataclass
class Encoded:
    """Token ids and labels of the sequences of each row (pairs: chosen, rejected; KTO: completion, mismatched)."""

    ids: list[list[list[int]]]
    labels: list[list[list[int]]]
    kept: list[int]
    problems: list[str] = field(default_factory=list)
    """What the lint refuses (identical responses, different prompt tokens, one response cut by truncation)."""
    dropped: int = 0


def encode_pairs(tokenizer, pairs: list[Pair], max_length: int, add_eos: bool, long_samples: str) -> Encoded:
    """Both responses rendered like SFT samples; pairs whose prompt tokens differ, whose responses are identical, or
    that truncation cuts, are problems (data.long_samples: drop removes the cut ones instead)."""
    out = Encoded([], [], [])
    for k, p in enumerate(pairs):
        where = f"pair {k + 1} (row {p.row + 1})"
        if p.rejected is None:  # KTO rows are encoded by encode_unpaired
            raise ValueError("encode_pairs takes paired rows")
        a = render(tokenizer, p.chosen, "causal-lm", max_length, add_eos)
        b = render(tokenizer, p.rejected, "causal-lm", max_length, add_eos)
        if p.chosen.reference.strip() == p.rejected.reference.strip():
            out.problems.append(f"{where}: chosen and rejected are the same text; the pair teaches nothing (drop it)")
            continue
        if _prompt_part(a) != _prompt_part(b):
            out.problems.append(
                f"{where}: the chosen and rejected token sequences start with different prompt tokens (the tokenizer "
                f"merges the prompt's end into the response); end the prompt with a space or newline"
            )
            continue
        if a.truncated_target or b.truncated_target:
            cut = (
                "both responses"
                if a.truncated_target and b.truncated_target
                else (
                    "the chosen response but not the rejected one"
                    if a.truncated_target
                    else "the rejected response but not the chosen one"
                )
            )
            if long_samples == "error":
                out.problems.append(
                    f"{where}: truncation to data.max_length={max_length} cuts {cut}: the loss would compare a cut "
                    f"answer; raise data.max_length or set data.long_samples: drop"
                )
            else:
                out.dropped += 1
            continue
        out.ids.append([a.ids, b.ids])
        out.labels.append([a.labels, b.labels])
        out.kept.append(k)
    return out


def encode_unpaired(tokenizer, pairs: list[Pair], max_length: int, add_eos: bool, long_samples: str) -> Encoded:
    """KTO rows: the completion, and the prompt with the NEXT row's completion (a mismatched pair, fixed per row so
    its reference log-probability can be cached) whose log-ratio estimates the KL reference point z0."""
    rendered = [render(tokenizer, p.chosen, "causal-lm", max_length, add_eos) for p in pairs]
    out = Encoded([], [], [])
    for k, r in enumerate(rendered):
        if r.truncated_target:
            if long_samples == "error":
                out.problems.append(
                    f"row {pairs[k].row + 1}: truncation to data.max_length={max_length} cuts the completion; raise "
                    "data.max_length or set data.long_samples: drop"
                )
            else:
                out.dropped += 1
            continue
        out.kept.append(k)
    for j, k in enumerate(out.kept):
        r, other = rendered[k], rendered[out.kept[(j + 1) % len(out.kept)]]
        p = len(_prompt_part(r))
        q = len(_prompt_part(other))
        kl_ids = (r.ids[:p] + other.ids[q:])[:max_length]
        kl_labels = ([IGNORE] * p + other.labels[q:])[:max_length]
        out.ids.append([r.ids, kl_ids])
        out.labels.append([r.labels, kl_labels])
    return out


def _prompt_part(r) -> list[int]:
    first = next((i for i, y in enumerate(r.labels) if y != IGNORE), len(r.labels))
    return r.ids[:first]
