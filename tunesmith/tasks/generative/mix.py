"""Weighted dataset mixes for generative tasks (`data.mix`): loading, the training mixture, per-source test rows.

Each source file is read like `data.path` and split into train/validation/test on its own (the configured shares,
near duplicates kept on one side, a seed per source name), so every source is represented in validation and test
in proportion to its size and adding or reordering sources does not reshuffle the others. The splits are the
sources' splits (train one source after the other; validation and test taking the sources in turn, so the first
`generate.samples` test prompts cover every source); `GenSplit.origins` says which source each sample came from.
`data.max_samples` caps each source (before its split), not the whole mix.

Training draws every optimizer step (with train.grad_accum > 1: every micro-batch) from one source, by weight
(engine/mixing.py): the realised shares of the trained samples equal the normalised weights up to one draw per epoch.
Packing is refused: a packed row holds a varying number of samples, so weights over rows would not be weights
over samples.
"""

from __future__ import annotations

import random
from pathlib import Path

from ...config.schema import Config
from ...data.loaders import load_table, pick_split
from ...engine.batches import Subset
from ...engine.mixing import Mixture, mixing_probs
from ...errors import ConfigError, DataError
from ...utils import resolve_path
from .formats import GenSplit, GenSplits, Sample, detect_format, leak_notes, split_samples, to_samples
from .generation import perplexity

SPLITS = ("train", "validation", "test")


def mix_names(mix) -> list[str]:
    """Each source's name: its `name`, else the file's stem (else its path, where two stems are the same)."""
    stems = [s.name or Path(s.path).stem for s in mix]
    return [stem if s.name or stems.count(stem) == 1 else s.path for s, stem in zip(mix, stems)]


def load_mix_splits(cfg: Config) -> GenSplits:
    """The concatenated splits of every source, each sample tagged with its source (see the module docstring)."""
    d = cfg.data
    if d.packing:
        raise ConfigError(
            "data.packing with data.mix: a packed row holds a varying number of samples, so the mix weights could "
            "not hold; set data.packing: false"
        )
    parts: dict[str, list[list[tuple[Sample, str]]]] = {split: [] for split in SPLITS}  # per source: (sample, name)
    notes: list[str] = []
    table: dict[str, dict] = {}
    first: tuple[str, str] | None = None  # (path, format) of the first source
    total = sum(s.weight for s in d.mix)
    for i, (source, name) in enumerate(zip(d.mix, mix_names(d.mix))):
        rows, fmt = _read_source(cfg, i, source.path)
        if first and fmt != first[1]:
            raise DataError(
                f"data.mix: {first[0]} holds {first[1]} samples but {source.path} holds {fmt} samples; give every "
                f"source the same columns (or set data.sample_format and the data.*_column names)"
            )
        first = first or (source.path, fmt)
        rng = random.Random(f"{cfg.seed}/{name}")  # per source name: stable when sources are added or reordered
        if d.max_samples and len(rows) > d.max_samples:
            rows = rng.sample(rows, d.max_samples)
            notes.append(f"mix {name}: subsampled to {d.max_samples} rows (data.max_samples, per source)")
        test, validation, train, split_notes = split_samples(rows, cfg, source.path, rng)
        for split, picked in zip(SPLITS, (train, validation, test)):
            parts[split].append([(rows[r], name) for r in picked])
        counts = dict(zip(SPLITS, map(len, (train, validation, test))))
        table[name] = {"path": source.path, "weight": source.weight / total, **counts}
        notes.append(
            f"mix {name} ({source.path}, weight {source.weight / total:.2f}): {len(rows)} rows -> train {len(train)} / "
            f"validation {len(validation)} / test {len(test)}"
        )
        notes += [f"mix {name}: {note}" for note in split_notes]
    where = "mix of " + ", ".join(s.path for s in d.mix)
    splits = {}
    for split in SPLITS:
        pairs = [p for part in parts[split] for p in part] if split == "train" else _in_turn(parts[split])
        label = where if split == "train" else f"{where} (split)"
        splits[split] = GenSplit(split, [x for x, _ in pairs], label, [name for _, name in pairs])
    notes += leak_notes(splits["train"], splits["test"])
    return GenSplits(splits["train"], splits["validation"], splits["test"], first[1], notes, table)


def _in_turn(parts: list[list]) -> list:
    """The items of every part, one part after the other in turn (a part that runs out drops out)."""
    return [part[k] for k in range(max(map(len, parts), default=0)) for part in parts if k < len(part)]


def _read_source(cfg: Config, i: int, path: str) -> tuple[list[Sample], str]:
    """One source's samples and format; any problem with the file is one line naming data.mix[i] and the file."""
    d, where = cfg.data, f"data.mix[{i}]"
    if not path.startswith("pkg://") and not resolve_path(path).exists():
        raise DataError(f"{where}: {path}: no such file; fix {where}.path (relative paths start at {Path.cwd()})")
    try:
        df = pick_split(load_table(path, d.format, d.encoding, d.encoding_errors, d.delimiter), "train", path)
        if df.empty:
            raise DataError(f"{path}: no rows; point {where}.path at a file with samples, or drop the source")
        fmt = detect_format(df.columns, d, cfg.task)
        return to_samples(df, d, fmt, cfg.task, path), fmt
    except DataError as err:
        message = str(err)
        raise DataError(f"{where}: {message}" if message.startswith(path) else f"{where}: {path}: {message}") from None


# --------------------------------------------------------------------------------------------
# encoded rows by source


def rows_by_source(split: GenSplit, encoded, names: list[str]) -> list[list[int]]:
    """The encoded rows of each source (`encoded.kept`: the samples that encoding kept, in order)."""
    kept = getattr(encoded, "kept", None)
    kept = range(len(split.samples)) if kept is None else kept
    where = {name: g for g, name in enumerate(names)}
    groups: list[list[int]] = [[] for _ in names]
    for row, sample in enumerate(kept):
        groups[where[split.origins[sample]]].append(row)
    return groups


def train_mixture(train, splits: GenSplits, cfg: Config, ctx) -> Mixture:
    """The training rows drawn by weight, one source per optimizer step (per micro-batch with accumulation, so
    that a step's gradient blends the sources as one mixed batch would); says so and records it in run.json."""
    m = mixture(train, splits.train, splits.mix, cfg.train.grad_accum)
    shares = ", ".join(f"{n} {p:.0%} ({len(g)} train rows)" for n, p, g in zip(m.names, m.probs, m.groups))
    ctx.say(f"mix: {shares}; each {m.per} drawn from one source by weight")
    ctx.record["mix"] = {"per": m.per, "shares": dict(zip(m.names, m.probs))}
    return m


def mixture(train, split: GenSplit, mix: dict[str, dict], grad_accum: int) -> Mixture:
    """`train` (the encoded training split) as a `Mixture` of its sources, weighted as `mix` says."""
    names = list(mix)
    groups = rows_by_source(split, train, names)
    empty = [name for name, rows in zip(names, groups) if not rows]
    if empty:
        raise DataError(
            f"data.mix: source {empty[0]} has no training rows left after encoding (data.long_samples: drop removed "
            f"them all); raise data.max_length or drop the source"
        )
    probs = mixing_probs([len(g) for g in groups], "weights", weights=[mix[n]["weight"] for n in names])
    per = "micro-batch" if grad_accum > 1 else "step"
    return Mixture(train, groups, probs, sampling="weights", per=per, names=names)


def mix_realised(mix: Mixture, steps: int, tested: dict | None, cfg: Config, world: int) -> dict[str, dict]:
    """metrics.json's `mix`: per source {rows, configured, share, examples} over the `steps` optimizer steps the run
    trained, with its test losses (`tested`: from `mix_by_source`)."""
    t = cfg.train
    realised = mix.realised(steps, t.batch_size * world, t.grad_accum, cfg.seed, world)
    return {name: {**r, **(tested or {}).get(name, {})} for name, r in realised.items()}


def mix_by_source(after: dict[str, float], before: dict[str, float] | None) -> dict[str, dict]:
    """The test loss of each source after (and before) fine-tuning."""
    before = before or {}
    return {
        name: {"test_loss": x, "test_perplexity": perplexity(x), "before_test_loss": before.get(name)}
        for name, x in after.items()
    }


def source_losses(loss_over, splits: GenSplits, test) -> dict[str, float]:
    """`loss_over(rows)` on each source's rows of the encoded test split (a source with no rows left: none); {}
    without a mix. Every process calls it (the loss is shared across processes)."""
    if not splits.mix:
        return {}
    groups = rows_by_source(splits.test, test, list(splits.mix))
    return {name: loss_over(Subset(test, rows)) for name, rows in zip(splits.mix, groups) if rows}
