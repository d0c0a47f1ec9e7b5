"""prepare(): audit -> clean -> dedup -> split -> balance -> augment -> a versioned dataset folder.

The folder `<output_dir>/<name>-<fingerprint>` holds train/validation/test (CSV or Parquet),
`manifest.json` (content fingerprint, every cleaning rule with its row count, class weights,
settings) and two audits: `audit_input.*` (the data as given) and `audit.*` (the prepared splits,
before balancing and augmentation). It is written to a temporary folder and renamed at the end.
Point a run at it with `data: {train: <dir>/train.csv, validation: <dir>/validation.csv, test: <dir>/test.csv}`.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import hashlib
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..config.schema import AuditConfig, DataConfig, PrepareConfig
from ..errors import ConfigError, DataError
from ..utils import atomic_dir, atomic_write_json, fingerprint, resolve_path
from .audit import AuditReport, audit
from .augment import Paraphraser, augment_rows
from .balance import class_weights, resample
from .clean import CleanStep, clean_table, to_table
from .dedup import NearIndex, cross_matches
from .loaders import label_str, load_table, require_columns, unify_labels
from .splits import label_names
from .splitting import grouped_split, near_duplicate_groups
from .textkeys import normalize_text

SETS = ("train", "validation", "test")


@dataclass
class PreparedDataset:
    path: Path
    manifest: dict
    class_weights: list[float] | None
    """Loss weights in the order of `manifest['label_names']` (balance: class_weights), else None."""
    input_audit: AuditReport
    output_audit: AuditReport

    def data_section(self) -> dict[str, str]:
        """The `data:` keys that point a run at this dataset."""
        return {name: str(self.path / info["file"]) for name, info in self.manifest["splits"].items()}


def prepare(
    data: DataConfig,
    cfg: PrepareConfig | None = None,
    audit_cfg: AuditConfig | None = None,
    *,
    seed: int = 42,
    out: str | Path | None = None,
    paraphrase: Paraphraser | None = None,
) -> PreparedDataset:
    """Clean, deduplicate, split, balance and augment the data of `data` into a new dataset folder.

    `out` overrides `cfg.output_dir`; `paraphrase` is the model-based augmentation hook (see augment.py).
    """
    cfg = cfg or PrepareConfig()
    cfg.check()
    audit_cfg = audit_cfg or AuditConfig(seed=seed)
    raw, sources = _load(data)
    for name, df in raw.items():
        require_columns(df, {"text": data.text_column, "label": data.label_column}, sources[name])
        if cfg.group_column:
            require_columns(df, {"group": cfg.group_column}, sources[name], "fix prepare.group_column")

    raw, merged = _unify_labels(raw, data, sources)
    input_audit = audit(
        raw["train"],
        {k: v for k, v in raw.items() if k != "train"},
        data.text_column,
        data.label_column,
        audit_cfg,
        sources=sources,
    )
    fixes = _label_fixes(input_audit, cfg, len(raw["train"]))
    log: list[CleanStep] = list(merged)
    if cfg.label_issues != "keep" and input_audit.label_noise.withheld:  # a weak model's list is not acted on either
        log.append(
            CleanStep("label_issues", "train", "skipped", 0, f"not acted on: {input_audit.label_noise.withheld}")
        )
    tables = {
        name: clean_table(
            to_table(df, data.text_column, data.label_column, cfg.group_column),
            name,
            cfg,
            audit_cfg,
            fixes if name == "train" else {},
            log,
        )
        for name, df in raw.items()
    }
    tables = _drop_rare_labels(tables, cfg.min_label_rows, log)
    if cfg.drop_leaked:
        tables = _drop_leaked(tables, audit_cfg, log)
    tables = _split(tables, data, cfg, audit_cfg, seed, sources["train"])
    label_names = _label_names(data, tables["train"])

    frames = {
        name: tables[name].rename(columns={"text": data.text_column, "label": data.label_column}) for name in SETS
    }
    output_audit = audit(
        frames["train"],
        {n: frames[n] for n in SETS[1:]},
        data.text_column,
        data.label_column,
        dataclasses.replace(audit_cfg, label_errors=False),
        sources={n: f"prepared {n}" for n in SETS},
    )

    train = tables["train"]
    before = len(train)
    if cfg.balance in ("oversample", "undersample"):
        train = resample(train, "label", cfg.balance, seed)
    weights = class_weights(train["label"].tolist(), label_names) if cfg.balance == "class_weights" else None
    train = train.assign(augmented=False)
    new_texts, new_labels = augment_rows(train["text"].tolist(), train["label"].tolist(), cfg.augment, seed, paraphrase)
    if new_texts:
        train = pd.concat(
            [train, pd.DataFrame({"text": new_texts, "label": new_labels, "augmented": True})], ignore_index=True
        )
    tables["train"] = train

    splits_fp = {name: fingerprint(tables[name]["text"].tolist(), tables[name]["label"].tolist()) for name in SETS}
    version = hashlib.sha256(("|".join(splits_fp[n] for n in SETS) + "|" + ",".join(label_names)).encode()).hexdigest()[
        :16
    ]
    target = Path(out or cfg.output_dir) / f"{cfg.name}-{version}"
    manifest = {
        "name": cfg.name,
        "version": version,
        "fingerprint": version,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "sources": sources,
        "source_sha256": {n: _file_hash(s) for n, s in sources.items()},
        "text_column": data.text_column,
        "label_column": data.label_column,
        "group_column": cfg.group_column,
        "label_names": label_names,
        "format": cfg.format,
        "seed": seed,
        "splits": {
            n: {
                "file": f"{n}.{cfg.format}",
                "rows": len(tables[n]),
                "fingerprint": splits_fp[n],
                "labels": tables[n]["label"].value_counts().to_dict(),
            }
            for n in SETS
        },
        "cleaning": [dataclasses.asdict(step) for step in log],
        "balance": {
            "method": cfg.balance,
            "class_weights": dict(zip(label_names, weights)) if weights else None,
            "train_rows_before": before,
            "train_rows_after": before
            if cfg.balance not in ("oversample", "undersample")
            else len(train) - len(new_texts),
        },
        "augmentation": {
            "rows_added": len(new_texts),
            **dataclasses.asdict(cfg.augment),
            "hook": getattr(paraphrase, "__name__", None),
        },
        "audit": {
            "input": "audit_input.md",
            "output": "audit.md",
            "input_blocking": input_audit.blocking,
            "output_blocking": output_audit.blocking,
        },
        "prepare": dataclasses.asdict(cfg),
        "audit_settings": dataclasses.asdict(audit_cfg),
    }
    with atomic_dir(target) as tmp:
        for name in SETS:
            frame = tables[name].rename(columns={"text": data.text_column, "label": data.label_column})
            if cfg.format == "csv":
                # QUOTE_ALL: pandas leaves a field with a bare carriage return unquoted, which splits the row on reading.
                frame.to_csv(tmp / f"{name}.csv", index=False, quoting=csv.QUOTE_ALL)
            else:
                frame.to_parquet(tmp / f"{name}.parquet", index=False)
        input_audit.save(tmp, "audit_input")
        output_audit.save(tmp, "audit")
        atomic_write_json(tmp / "manifest.json", manifest)
    return PreparedDataset(target, manifest, weights, input_audit, output_audit)


def _load(data: DataConfig) -> tuple[dict[str, pd.DataFrame], dict[str, str]]:
    if data.path and (data.train or data.validation or data.test):
        raise ConfigError("data: set either `path` (one file, split for you) or `train`/`validation`/`test`, not both")
    if not data.path and not data.train:
        raise ConfigError("data: no data given; set data.path (one file) or data.train (plus optional validation/test)")
    specs = {"train": data.path} if data.path else {n: getattr(data, n) for n in SETS if getattr(data, n)}
    raw, sources = {}, {}
    for name, spec in specs.items():
        loaded = load_table(spec, data.format, data.encoding, data.encoding_errors, data.delimiter)
        if isinstance(loaded, dict):  # a saved DatasetDict brings its own splits
            if "train" not in loaded:
                raise DataError(f"{spec}: the saved DatasetDict has no 'train' split (has {', '.join(loaded)})")
            for n in SETS:
                if n in loaded:
                    raw[n], sources[n] = loaded[n], f"{spec}[{n}]"
        else:
            raw[name], sources[name] = loaded, spec
    return raw, sources


def _unify_labels(raw: dict, data: DataConfig, sources: dict) -> tuple[dict, list[CleanStep]]:
    """Label spelling variants across every set: a DataError, or (data.normalize_labels) merged and logged."""
    given = {n: df[data.label_column].map(label_str) for n, df in raw.items()}
    labels, notes = unify_labels(given, data.normalize_labels, data.labels, ", ".join(dict.fromkeys(sources.values())))
    if not notes:
        return raw, []
    steps = []
    for n, df in raw.items():
        changed = int((labels[n].fillna("\0") != given[n].fillna("\0")).sum())
        if changed:
            raw[n] = df.assign(**{data.label_column: labels[n]})
            steps.append(CleanStep("label_variants", n, "changed", changed, notes[0].split(": ", 1)[1]))
    return raw, steps


def _label_fixes(report: AuditReport, cfg: PrepareConfig, rows: int) -> dict[int, str]:
    issues = report.label_noise.issues[: int(cfg.label_issue_share * rows)]
    return {i.row: i.suggested for i in issues}


def _drop_rare_labels(tables: dict, minimum: int, log: list[CleanStep]) -> dict:
    counts = tables["train"]["label"].value_counts()
    rare = set(counts[counts < minimum].index)
    if not rare:
        return tables
    out = {}
    for name, t in tables.items():
        mask = t["label"].isin(rare)
        if mask.any():
            log.append(
                CleanStep(
                    "rare_labels",
                    name,
                    "dropped",
                    int(mask.sum()),
                    f"labels with fewer than {minimum} training rows: {sorted(rare)}",
                )
            )
        out[name] = t.loc[~mask].reset_index(drop=True)
    return out


def _drop_leaked(tables: dict, a: AuditConfig, log: list[CleanStep]) -> dict:
    """Remove rows of a later set that duplicate an earlier set (train before validation before test)."""
    names = [n for n in SETS if n in tables]
    for i, later in enumerate(names[1:], start=1):
        for ref in names[:i]:
            keys = tables[ref]["text"].map(normalize_text).tolist()
            index = NearIndex.for_audit(keys, a) if a.near_duplicates and keys else None
            hits = {m.other for m in cross_matches(keys, index, tables[later]["text"].map(normalize_text).tolist())}
            if hits:
                log.append(CleanStep("leakage", later, "dropped", len(hits), f"duplicates of {ref} rows"))
                tables[later] = tables[later].drop(index=sorted(hits)).reset_index(drop=True)
    return tables


def _split(tables: dict, data: DataConfig, cfg: PrepareConfig, a: AuditConfig, seed: int, src: str) -> dict:
    """Split missing validation/test sets off the training set: stratified by label, grouped when groups are known."""

    train = tables["train"]
    groups = None
    if cfg.group_column or (cfg.group_near_duplicates and not cfg.drop_near_duplicates and a.near_duplicates):
        groups = near_duplicate_groups(train, cfg.group_column, a if cfg.group_near_duplicates else None)
    carved = 0.0  # share of the rows already split off as test
    for name, share in (("test", data.test_size), ("validation", data.validation_size)):
        if name in tables:
            continue
        if share <= 0:
            raise ConfigError(f"data.{name}_size must be positive when there is no data.{name} file")
        train, tables[name], groups = grouped_split(
            train, share / (1 - carved), groups, seed + (name == "validation"), src, name
        )
        carved = share if name == "test" else carved
    tables["train"] = train
    return tables


def _label_names(data: DataConfig, train: pd.DataFrame) -> list[str]:

    return label_names(data, set(train["label"]), "prepared train")


def _file_hash(spec: str) -> str | None:
    path = resolve_path(spec.split("[")[0])
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
