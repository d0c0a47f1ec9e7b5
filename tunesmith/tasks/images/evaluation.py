"""The image task's audit (before training) and extended evaluation (after): what goes into audit.md / metrics.json.

The audit reads backbone features of the model about to be fine-tuned (pooled, cached by the images' content
keys) for its label-error model; the evaluation puts a raw-pixel logistic regression beside the fine-tuned model,
slices the test set by image size and brightness (and eval.slice_by columns), checks calibration and robustness to
common corruptions, and draws the most confident errors.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ...data.label_noise import label_errors_line
from ...engine.batches import predict_probs
from ...errors import DataError, TunesmithError
from ...evaluate.calibration import calibration_report, plot_reliability
from ...evaluate.efficiency import measure_efficiency
from ...evaluate.figures import plot_run_slices
from ...evaluate.robustness import plot_robustness
from ...evaluate.slices import slice_metrics
from ...evaluate.stats import metric_cis
from ...models.features import cache_key, cached_features
from ..base import Findings
from .augment import input_size
from .batches import ImageBatches, Pixels
from .sources import LazyImages, load_rgb


def pooled_features(model, batches: ImageBatches, batch_size: int, autocast=None) -> torch.Tensor:
    """What the classification head reads (the pooled backbone output), for every image of a split."""
    from contextlib import nullcontext

    from ...engine.batches import map_batches

    head = model.classifier
    device = next(model.parameters()).device
    model.eval()

    def fn(inputs):
        seen = {}
        hook = head.register_forward_hook(lambda m, args, out: seen.setdefault("x", args[0]))
        try:
            with (autocast or nullcontext)():
                model(pixel_values=inputs["pixel_values"].to(device))
        finally:
            hook.remove()
        return seen["x"].flatten(1).float()

    return torch.from_numpy(map_batches(batches, batch_size, fn))


def backbone_features(cfg, split, processor, source, say=print) -> np.ndarray:
    """Frozen features of `split` from the pretrained model (cached under <output_dir>/.cache/features)."""
    from ...models.vision.loading import load_image_classifier

    key = cache_key(f"{source.location}|{cfg.model.revision}|audit {input_size(processor)}px", split.fingerprint())
    cache = Path(cfg.output_dir) / ".cache" / "features"

    def compute():
        t0 = time.perf_counter()
        model = load_image_classifier(source, ["a", "b"], cfg.model.revision, cfg.model.trust_remote_code)
        batches = ImageBatches(split, Pixels(processor, max_pixels=cfg.images.max_pixels))
        with torch.no_grad():
            x = pooled_features(model, batches, cfg.eval.batch_size)
        say(f"audit: {len(split)} training images through {cfg.model.name} in {time.perf_counter() - t0:.0f}s")
        return x

    x, _ = cached_features(cache, key, compute, read=True, write=True)
    return x.numpy()


def audit_findings(cfg, splits, processor, source) -> Findings:
    """Duplicates, near duplicates, leakage (blocking), label errors, balance, sizes/modes: the run's audit."""
    from ...data.image_audit import ImageSet, audit_images

    a = cfg.audit
    said: list[str] = []
    sets = {
        name: ImageSet(name, s.keys, s.phashes, s.labels, s.sizes, s.modes, s.refs, s.skipped, s.source, s.thumbs)
        for name, s in splits.by_name().items()
    }
    features = None
    if source is not None and a.label_errors and a.label_error_model == "auto":
        features = {"train": backbone_features(cfg, splits.train, processor, source, said.append)}
    report = audit_images(
        sets, splits.label_names, a, features, f"{cfg.model.name} features", stop_at_leakage=a.block_on_leakage
    )
    if report.blocking:
        raise DataError(f"{report.blocking[0]} (or pass --allow-leakage)")
    c, errors = report.counts(), label_errors_line(report.label_noise)
    line = (
        f"audit: {c.get('train.exact_duplicate_rows', 0)} duplicate images, "
        f"{c.get('train.near_duplicate_clusters', 0)} near-duplicate clusters, {errors}; no leakage between splits "
        "(audit.md in the run folder)"
    )
    by_split = splits.by_name()

    def open_image(split: str, ref: str):
        s = by_split[split]
        return load_rgb(s.sources[s.refs.index(ref)])

    return Findings(
        lines=[*said, line, *[f"audit: {w}" for w in report.warnings[:5]]],
        record={"audit": c},
        metrics={f"audit.{k}": v for k, v in c.items() if isinstance(v, (int, float))},
        save=lambda run_dir: report.save(run_dir, "audit", open_image=open_image),
    )


def audit_image_sources(specs: dict[str, str], cfg, model: str | None = None, say=print):
    """`tunesmith data audit FOLDER [--test FOLDER]`: the image audit of the given sets as they are (nothing split).

    `cfg`: a Config (its images:, data.label_column and audit: are read); `model`: the model you will fine-tune, whose
    frozen features feed the label-error model (without it, label errors are not checked).
    """
    from ...data.image_audit import ImageSet, audit_images
    from ...data.loaders import label_str
    from .sources import rows_of, scan

    sets, splits = {}, {}
    for name, spec in specs.items():
        rows = rows_of(spec, cfg.images, cfg.data)
        if isinstance(rows, dict):
            raise DataError(f"{spec}: holds train/validation/test folders; audit them as FILE --validation --test")
        s = scan(rows, cfg.images, spec)
        labels = [label_str(rows.labels[i]) for i in s.keep]
        splits[name] = (rows, s, labels)
    names = sorted({y for _, _, labels in splits.values() for y in labels})
    for name, (rows, s, labels) in splits.items():
        refs = [rows.refs[i] for i in s.keep]
        sets[name] = ImageSet(
            name,
            s.keys,
            s.phashes,
            [names.index(y) for y in labels],
            s.sizes,
            s.modes,
            refs,
            s.skipped,
            specs[name],
            s.thumbs,
        )
    features = None
    if model:
        from ...models.loading import resolve_model
        from ...models.vision.loading import load_image_processor
        from .data import ImageSplit

        source = resolve_model(model)
        rows, s, labels = splits["train"]
        train = ImageSplit("train", [rows.sources[i] for i in s.keep], sets["train"].refs, sets["train"].labels,
                           s.keys, s.phashes, s.thumbs, s.sizes, s.modes)  # fmt: skip
        features = {"train": backbone_features(cfg, train, load_image_processor(source), source, say)}
    elif cfg.audit.label_errors:
        say("audit: label errors need a model's features for images; pass --model (e.g. --model efficientnet-lite0)")
    report = audit_images(sets, names, cfg.audit, features, f"{model} features")
    by = {n: dict(zip(sets[n].refs, [splits[n][0].sources[i] for i in splits[n][1].keep])) for n in sets}
    report.open_image = lambda split, ref: load_rgb(by[split][ref])
    return report


def image_evaluation(cfg, run_dir: Path, splits, probs: np.ndarray, predict, trained, batches: dict, ctx) -> dict:
    """Everything beyond the headline metrics, each part timed; a part that fails on the user's data is reported."""
    from ...evaluate import images as ev_images

    ev, y, names = cfg.eval, splits.test.labels, splits.label_names
    test, k = splits.test, len(names)
    out: dict = {}
    seconds: dict[str, float] = {}

    def part(name: str, fn):
        t0 = time.perf_counter()
        try:
            out[name] = fn()
        except TunesmithError as err:
            out[name] = {"error": str(err)}
            ctx.say(f"evaluation: {name} skipped: {err}")
        seconds[name] = round(time.perf_counter() - t0, 2)

    def images_of(split) -> list:  # the test images: decoded once, read by five parts below
        return [load_rgb(s, cfg.images.max_pixels) for s in split.sources]

    test_images = images_of(test)
    out["baseline"] = None
    if ev.baseline:

        def baseline():
            train = LazyImages(splits.train.sources, cfg.images.max_pixels)  # one pass: decoded as it is read
            result = ev_images.pixel_baseline(train, splits.train.labels, test_images, y, names, cfg.seed)
            return {"name": "pixels-logreg", "label": "raw pixels (16x16) + logistic regression", "test": result}

        part("baseline", baseline)
    part(
        "test_ci",
        lambda: {
            "level": ev.ci_level,
            "resamples": ev.bootstrap_resamples,
            **metric_cis(y, probs, ev.ci_level, ev.bootstrap_resamples, cfg.seed),
        },
    )
    pred = probs.argmax(1)

    def slices():
        groups = {
            "image size": ev_images.size_buckets(test.sizes),
            "brightness": ev_images.brightness_buckets(test_images),
            **{c: test.meta[c] for c in ev.slice_by if c not in ("size", "brightness")},
        }
        groups = {n: g for n, g in groups.items() if len(set(g)) > 1}  # one slice says nothing (all one size)
        result = {n: slice_metrics(y, pred, g, k, ev.min_slice_size) for n, g in groups.items()}
        from ...evaluate.stats import metric_value

        overall = float(metric_value("macro_f1", y, pred, k))
        plot_run_slices({"slices": result, "test": {"macro_f1": overall}}, run_dir / "slices.png")
        return result

    part("slices", slices)
    if ev.calibration:

        def calibration():
            val = None
            if ev.temperature_scaling and len(splits.validation):
                val = predict_probs(trained, batches["validation"], ev.batch_size, ctx.autocast)
            report = calibration_report(y, probs, splits.validation.labels, val)
            plot_reliability(report, run_dir / "reliability.png", "test reliability")
            return report

        part("calibration", calibration)
    if ev.robustness:

        def robust():
            r = ev_images.image_robustness(
                test_images, y, predict, names, cfg.seed, ev.robustness_samples, clean_probs=probs
            )
            plot_robustness(r, run_dir / "robustness.png", "test macro-F1 under image corruptions")
            return r

        part("robustness", robust)
    if ev.efficiency:
        part("efficiency", lambda: measure_efficiency(predict, test_images, ev.efficiency_batches, run_dir / "model"))
    part(
        "errors_shown",
        lambda: ev_images.error_grid(
            test_images, y, probs, names, run_dir / "test_errors.png", 16, "most confident errors"
        ),
    )
    seconds["total"] = round(sum(seconds.values()), 2)
    out["extended_seconds"] = seconds
    ctx.say(f"evaluation: baseline, intervals, slices, calibration, robustness, efficiency in {seconds['total']:.1f}s")
    return out
