"""Generative data: rows -> samples (chat, instruction, completion, text) -> token ids with a loss mask.

A sample is rendered ONCE, by the same code that renders prompts at inference (`prompt_ids`), so the
model trains on exactly the token sequence it will see when it is used. The loss mask comes from
character spans: the text is rendered with the chat template, the spans of assistant turns are
found by rendering the conversation up to each turn, and the tokens whose characters fall inside
those spans train (label = token id); every other token gets -100.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ...config.schema import Config, DataConfig
from ...data.loaders import load_table, pick_split
from ...data.splitting import near_duplicate_groups
from ...errors import DataError
from ...utils import fingerprint

IGNORE = -100
ROLES = ("system", "user", "assistant")

# tunesmith's documented default chat template, for tokenizers without one. Every turn ends with the EOS
# token, so the model learns to stop after its answer.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}### System:\n{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}### User:\n{{ message['content'] }}\n\n"
    "{% else %}### Assistant:\n{{ message['content'] }}{{ eos_token }}\n\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}### Assistant:\n{% endif %}"
)


@dataclass
class Sample:
    """One training example. Chat samples keep the whole conversation; the last turn is the reference."""

    row: int
    messages: list[dict] | None = None
    prompt: str | None = None
    completion: str | None = None
    text: str | None = None

    @property
    def reference(self) -> str:
        if self.messages is not None:
            return self.messages[-1]["content"]
        return self.completion if self.completion is not None else ""

    def prompt_view(self) -> str:
        """The prompt as a person reads it (for reports)."""
        if self.messages is not None:
            return "\n".join(f"[{m['role']}] {m['content']}" for m in self.messages[:-1])
        return self.prompt or ""


@dataclass
class GenSplit:
    name: str
    samples: list[Sample]
    source: str
    origins: list[str] | None = None
    """With data.mix: the source (its name) each sample came from; None for one file."""

    def __len__(self) -> int:
        return len(self.samples)

    def fingerprint(self) -> str:
        return fingerprint([_sample_key(s) for s in self.samples], [s.reference for s in self.samples])


@dataclass
class GenSplits:
    train: GenSplit
    validation: GenSplit
    test: GenSplit
    format: str
    notes: list[str] = field(default_factory=list)
    mix: dict[str, dict] | None = None
    """With data.mix: {source: {path, weight (normalised), train, validation, test (rows)}}, in config order."""

    def summary(self) -> dict:
        return {
            s.name: {"rows": len(s), "fingerprint": s.fingerprint(), "source": s.source}
            | ({"mix": {name: m[s.name] for name, m in self.mix.items()}} if self.mix else {})
            for s in (self.train, self.validation, self.test)
        }


# --------------------------------------------------------------------------------------------
# rows -> samples


def detect_format(columns, cfg: DataConfig, task: str) -> str:
    cols = set(columns)
    if cfg.sample_format != "auto":
        return cfg.sample_format
    if cfg.messages_column in cols:
        return "chat"
    if "instruction" in cols and "output" in cols:
        return "instruction"
    if cfg.prompt_column in cols and cfg.completion_column in cols:
        return "completion"
    if cfg.text_column in cols and task == "causal-lm":
        return "text"
    raise DataError(
        f"cannot tell the sample format from the columns {sorted(map(str, cols))[:12]}: give '{cfg.messages_column}' (chat), "
        f"'instruction' + 'output' (instruction), '{cfg.prompt_column}' + '{cfg.completion_column}' (completion) or "
        f"'{cfg.text_column}' (plain text), or set data.sample_format and the data.*_column names"
    )


def to_samples(df: pd.DataFrame, cfg: DataConfig, fmt: str, task: str, src: str) -> list[Sample]:
    need = {
        "chat": [cfg.messages_column],
        "instruction": ["instruction", "output"],
        "completion": [cfg.prompt_column, cfg.completion_column],
        "text": [cfg.text_column],
    }[fmt]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise DataError(
            f"{src}: data.sample_format={fmt} needs column(s) {missing} (columns: {', '.join(map(str, df.columns[:20]))})"
        )
    if task == "seq2seq" and fmt in ("chat", "text"):
        raise DataError(
            f"{src}: seq2seq trains on input/target pairs; give '{cfg.prompt_column}' + '{cfg.completion_column}' or instruction/output columns"
        )
    out = []
    for i, row in enumerate(df.to_dict("records")):
        where = f"{src} row {i + 1}"
        if fmt == "chat":
            out.append(Sample(i, messages=_messages(row[cfg.messages_column], where)))
        elif fmt == "instruction":
            instr, inp, output = (
                _text(row.get("instruction"), where, "instruction"),
                row.get("input"),
                _text(row.get("output"), where, "output", empty_ok=True),
            )
            user = instr + (f"\n\n{inp}" if isinstance(inp, str) and inp.strip() else "")
            if task == "seq2seq":
                out.append(Sample(i, prompt=user, completion=output))
            else:
                out.append(
                    Sample(i, messages=[{"role": "user", "content": user}, {"role": "assistant", "content": output}])
                )
        elif fmt == "completion":
            out.append(
                Sample(
                    i,
                    prompt=_text(row[cfg.prompt_column], where, cfg.prompt_column, empty_ok=True),
                    completion=_text(row[cfg.completion_column], where, cfg.completion_column, empty_ok=True),
                )
            )
        else:
            out.append(Sample(i, text=_text(row[cfg.text_column], where, cfg.text_column)))
    return out


def _text(value, where: str, column: str, empty_ok: bool = False) -> str:
    if value is None or (isinstance(value, float) and value != value):
        value = ""
    if not isinstance(value, str):
        value = str(value)
    if not value.strip() and not empty_ok:
        raise DataError(f"{where}: column '{column}' is empty; fill it or drop the row")
    return value


def _messages(value, where: str) -> list[dict]:
    if hasattr(value, "tolist"):
        value = value.tolist()
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: messages must be a non-empty list of {{role, content}} objects")
    out = []
    for k, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise DataError(
                f'{where}: message {k + 1} must be {{"role": one of {", ".join(ROLES)}, "content": text}}, got {str(m)[:80]}'
            )
        out.append({"role": m["role"], "content": m["content"]})
    if out[-1]["role"] != "assistant":
        raise DataError(f"{where}: the last message must be the assistant's (it is what the model learns to answer)")
    return out


def load_gen_splits(cfg: Config) -> GenSplits:
    """Train/validation/test samples: explicit files, or one file shuffled and split by the configured shares
    (several weighted files, data.mix: mix.load_mix_splits)."""
    d = cfg.data

    def read(spec: str, split: str = "train") -> pd.DataFrame:
        df = pick_split(
            loaded if spec == first else load_table(spec, d.format, d.encoding, d.encoding_errors, d.delimiter),
            split,
            spec,
        )
        if df.empty:
            raise DataError(f"{spec}: no rows")
        return df

    notes: list[str] = []
    first = d.path or d.train
    loaded = load_table(first, d.format, d.encoding, d.encoding_errors, d.delimiter)
    if isinstance(loaded, dict) and d.train:
        raise DataError(f"{first}: a saved DatasetDict folder; give it as data.path instead of data.train")
    main = read(first)
    fmt = detect_format(main.columns, d, cfg.task)
    samples = to_samples(main, d, fmt, cfg.task, first)
    rng = random.Random(cfg.seed)
    if d.max_samples and len(samples) > d.max_samples:
        samples = rng.sample(samples, d.max_samples)
        notes.append(f"subsampled to {d.max_samples} rows (data.max_samples)")
    given = {}
    for name in ("validation", "test"):
        spec = getattr(d, name)
        if spec:
            given[name] = GenSplit(name, to_samples(read(spec), d, fmt, cfg.task, spec), spec)
        elif isinstance(loaded, dict) and name in loaded:  # a DatasetDict brings its own splits
            given[name] = GenSplit(
                name, to_samples(read(first, name), d, fmt, cfg.task, f"{first}[{name}]"), f"{first}[{name}]"
            )
    src = d.path or d.train
    test_rows, val_rows, train_rows, split_notes = split_samples(samples, cfg, src, rng, given)
    train = GenSplit("train", [samples[i] for i in train_rows], src)
    validation = given.get("validation") or GenSplit("validation", [samples[i] for i in val_rows], f"{src} (split)")
    test = given.get("test") or GenSplit("test", [samples[i] for i in test_rows], f"{src} (split)")
    return GenSplits(train, validation, test, fmt, notes + split_notes + leak_notes(train, test))


def split_samples(
    samples: list[Sample], cfg: Config, src: str, rng: random.Random, given=()
) -> tuple[list[int], list[int], list[int], list[str]]:
    """(test, validation, train) row indices of `samples` by the configured shares, plus notes; a split in `given`
    has its own file and takes no rows. Near duplicates go to one side together (data.group_near_duplicates)."""
    d, n = cfg.data, len(samples)
    cut = {
        name: (0 if name in given else max(1, round(n * share)))
        for name, share in (("test", d.test_size), ("validation", d.validation_size))
    }
    if n - cut["test"] - cut["validation"] < 1:
        raise DataError(f"{src}: {n} rows are too few to split off validation and test; add rows or lower the shares")
    groups = _groups(samples, cfg) if cut["test"] or cut["validation"] else list(range(n))
    k = len(set(groups))
    notes = [f"split so that near duplicates stay on one side ({k} groups of {n} samples)"] if k < n else []
    return (*_split_by_groups(groups, cut["test"], cut["validation"], rng), notes)


def leak_notes(train: GenSplit, test: GenSplit) -> list[str]:
    n = len({_sample_key(s) for s in train.samples} & {_sample_key(s) for s in test.samples})
    return [f"{n} test prompt(s) also occur in train: generation scores on them are optimistic"] if n else []


def _groups(samples: list[Sample], cfg: Config) -> list[int]:
    """A group id per sample: exact and near duplicates (prompt + response, audit.near_threshold) share one."""
    if not cfg.data.group_near_duplicates:
        return list(range(len(samples)))
    table = pd.DataFrame({"text": [sample_text(s) for s in samples], "label": "-"})
    return near_duplicate_groups(table, None, cfg.audit).tolist()  # what the audit will call near duplicates


def _split_by_groups(
    groups: list[int], n_test: int, n_val: int, rng: random.Random
) -> tuple[list[int], list[int], list[int]]:
    """Whole groups, in a seeded random order, fill test, then validation; the rest is train."""
    members: dict[int, list[int]] = {}
    for row, g in enumerate(groups):
        members.setdefault(g, []).append(row)
    order = list(members)
    rng.shuffle(order)
    test, val, train = [], [], []
    for g in order:
        target = test if len(test) < n_test else val if len(val) < n_val else train
        target.extend(members[g])
    return test, val, train


def sample_text(s: Sample) -> str:
    """Everything a sample says, prompt and response: what the audit compares for duplicates and leakage."""
    if s.messages is not None:
        return "\n".join(m["content"] for m in s.messages)
    return "\n".join(x for x in (s.prompt, s.completion, s.text) if x)


def _sample_key(s: Sample) -> str:
    if s.messages is not None:
        return "\x1f".join(m["content"] for m in s.messages[:-1])
    return s.prompt if s.prompt is not None else (s.text or "")


# --------------------------------------------------------------------------------------------
# samples -> token ids and labels


def chat_template_for(tokenizer, setting: str | None) -> str:
    """The chat template a run uses for training and inference (see model.chat_template)."""
    if setting is None:
        return tokenizer.chat_template or DEFAULT_CHAT_TEMPLATE
    if setting == "default":
        return DEFAULT_CHAT_TEMPLATE
    path = Path(setting).expanduser()
    if "{%" not in setting and "{{" not in setting:
        if not path.is_file():
            raise DataError(
                f"model.chat_template: '{setting}' is neither 'default', a Jinja template, nor an existing file"
            )
        return path.read_text(encoding="utf-8")
    return setting


@dataclass
class Rendered:
    ids: list[int]
    labels: list[int]
    truncated_target: bool = False
    """Truncation to max_length cut trained tokens off (the completion, or its EOS, would be lost)."""


def render(
    tokenizer, sample: Sample, task: str, max_length: int, add_eos: bool
) -> Rendered | tuple[Rendered, list[int]]:
    """Token ids and labels of a causal-LM sample (seq2seq: see render_seq2seq)."""
    text, spans = _text_and_spans(tokenizer, sample, add_eos)
    enc = tokenizer(text, add_special_tokens=sample.messages is None, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = [
        tok if any(a <= start < b for a, b in spans) and end > start else IGNORE
        for tok, (start, end) in zip(ids, offsets)
    ]
    if (
        sample.text is not None
        and add_eos
        and tokenizer.eos_token_id is not None
        and (not ids or ids[-1] != tokenizer.eos_token_id)
    ):
        ids, labels = ids + [tokenizer.eos_token_id], labels + [tokenizer.eos_token_id]
    labels = [IGNORE] + labels[1:]  # the first token is never predicted (and must not be, across packed samples)
    truncated = len(ids) > max_length and any(y != IGNORE for y in labels[max_length:]) and sample.text is None
    return Rendered(ids[:max_length], labels[:max_length], truncated)


def _text_and_spans(tokenizer, sample: Sample, add_eos: bool) -> tuple[str, list[tuple[int, int]]]:
    """The full text of a sample and the character spans that train."""
    if sample.messages is not None:
        msgs = sample.messages
        text = tokenizer.apply_chat_template(msgs, tokenize=False)
        spans = []
        for i, m in enumerate(msgs):
            if m["role"] != "assistant":
                continue
            before = tokenizer.apply_chat_template(msgs[:i], tokenize=False, add_generation_prompt=True) if i else ""
            upto = tokenizer.apply_chat_template(msgs[: i + 1], tokenize=False)
            if not (text.startswith(upto) and upto.startswith(before)):
                raise DataError(
                    f"row {sample.row + 1}: the chat template does not render conversations prefix by prefix; "
                    f"set model.chat_template (e.g. `default`)"
                )
            spans.append((len(before), len(upto)))
        return text, spans
    if sample.text is not None:
        return sample.text, [(0, len(sample.text))]
    eos = tokenizer.eos_token if add_eos and tokenizer.eos_token else ""
    text = sample.prompt + sample.completion + eos
    return text, [(len(sample.prompt), len(text))]


def prompt_ids(tokenizer, sample: Sample) -> list[int]:
    """What the model is given at inference: the same rendering as in training, up to the answer."""
    if sample.messages is not None:
        text = tokenizer.apply_chat_template(sample.messages[:-1], tokenize=False, add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(sample.prompt if sample.prompt is not None else "", add_special_tokens=True)["input_ids"]


def render_seq2seq(tokenizer, sample: Sample, max_length: int, add_eos: bool) -> tuple[list[int], Rendered]:
    """Encoder ids, and decoder labels (the target + EOS; the model shifts them into decoder inputs)."""
    src = tokenizer(sample.prompt, truncation=True, max_length=max_length)["input_ids"]
    tgt = tokenizer(text_target=sample.completion)["input_ids"]
    eos = tokenizer.eos_token_id
    if add_eos and eos is not None and (not tgt or tgt[-1] != eos):
        tgt = tgt + [eos]
    return src, Rendered(tgt[:max_length], tgt[:max_length], len(tgt) > max_length)


def stop_token_ids(tokenizer, model=None) -> set[int]:
    """Tokens that end a generation: the tokenizer's EOS plus the model's generation_config eos ids."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    gen = getattr(model, "generation_config", None) if model is not None else None
    extra = getattr(gen, "eos_token_id", None)
    ids |= set(extra if isinstance(extra, list) else [extra] if extra is not None else [])
    return ids
