"""`tunesmith data pairs RUN`: preference pairs (chosen, rejected) from what a generative run got wrong.

Two sources of failures:
- `--from generations`: the run answers every prompt of one of its own splits (rebuilt through its task, so exactly
  the samples it trained or was tested on) with its own model and generation settings; an answer that fails the check
  becomes a pair: chosen = the reference, rejected = the run's answer.
- `--from LOG`: the corrections people made to a server's answers (`tunesmith feedback import` writes them to
  `feedback.jsonl` beside the prediction log): chosen = the corrected completion, rejected = the logged answer.

Checks (`--from generations`): `json` (a JSON object with every key of `generate.json_keys`), `fields` (json, plus
every field equal to the reference's after whitespace/case normalisation), `exact` (the normalised text equals the
reference), `reward` (a user function `module:fn(completions, prompts, references) -> floats` scores at least
`threshold`). Left out (and counted): a pair whose chosen side fails the same check (a reference that is no valid
JSON object, or scores below the threshold: it would teach the wrong thing), an empty answer, one equal to the
chosen, and a duplicate of a pair already collected.

The pairs are written in the form the preference task reads (`messages` ending with the user's turn, or `prompt`;
`chosen`, `rejected`, plus `check`: why the answer failed), with a `.json` summary beside them. Generation is saved
chunk by chunk to `<out>.partial`: an interrupted run picks up where it stopped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from tqdm.auto import tqdm

from ..errors import ConfigError, DataError, RunError, TunesmithError
from ..runs.run import Run, load_run
from ..tasks.generative.formats import Sample
from ..tasks.generative.generation import parse_json_object
from ..tasks.preference.rewards import build_rewards
from ..utils import atomic_write_json, atomic_write_text
from .feedback import feedback_path, read_feedback

CHECKS = ("json", "fields", "exact", "reward")
SPLITS = ("train", "validation", "test")
FAILED = {
    "invalid_json": "invalid JSON",
    "missing_keys": "missing keys",
    "field_mismatch": "field mismatch",
    "mismatch": "mismatch",
    "low_reward": "low reward",
    "corrected": "corrected",
}
SKIPPED = {
    "reference_fails": "reference fails the check too",
    "same_text": "same text as the reference",
    "empty_output": "empty output",
    "duplicate": "duplicate pair",
}
CHUNK_BATCHES = 4
"""Prompts generated per progress step (and per save of the partial file), in generation batches."""


@dataclass
class Verdict:
    reason: str | None = None
    """None: the answer passed; else a key of FAILED."""
    check: str = ""
    """What the pair records: e.g. invalid_json, field_mismatch:colour, reward 0.31 < 0.5."""


PASS = Verdict()


@dataclass
class PairSet:
    """The pairs being collected, with the count of every failure (kept as a pair or left out, and why)."""

    rows: list[dict] = field(default_factory=list)
    failed: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)
    seen: set = field(default_factory=set)

    def add(self, sample: Sample, rejected: str, verdict: Verdict, **extra) -> None:
        """A failed answer: a pair (chosen = the sample's reference) unless it would teach nothing new: an empty answer
        (the preference task refuses those), one equal to the chosen, or a pair already collected."""
        self.failed[verdict.reason] += 1
        chosen = sample.reference
        if sample.messages is None:
            # Generation strips its answer; a completion trained with a leading space keeps the same first token.
            rejected = chosen[: len(chosen) - len(chosen.lstrip())] + rejected.lstrip()
        head = {"messages": sample.messages[:-1]} if sample.messages is not None else {"prompt": sample.prompt}
        key = json.dumps([head, chosen, rejected], ensure_ascii=False)
        why = "empty_output" if not rejected.strip() else "same_text" if rejected.strip() == chosen.strip() else None
        if why or key in self.seen:
            self.skipped[why or "duplicate"] += 1
            return
        self.seen.add(key)
        self.rows.append({**head, "chosen": chosen, "rejected": rejected, "check": verdict.check, **extra})


def pairs_from_generations(
    run: Run | str | Path,
    split: str = "train",
    limit: int | None = None,
    check: str | None = None,
    reward: str | None = None,
    threshold: float = 0.5,
    out: str | Path | None = None,
    batch_size: int | None = None,
    say=print,
) -> dict:
    """Generate the run's answers for a split, keep the failing ones as pairs; write them; return the summary."""
    run = run if isinstance(run, Run) else load_run(run)
    _require_generative(run)
    check = _pick_check(run, check, reward)
    if split not in SPLITS:
        raise ConfigError(f"--split {split}: unknown split; use one of {', '.join(SPLITS)}")
    for flag, value in (("--limit", limit), ("--batch-size", batch_size)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} {value}: give a positive number")
    scorer = _reward_scorer(reward) if check == "reward" else None
    samples = _split_samples(run, split, say)
    if limit is not None and limit < len(samples):
        rows = sorted(random.Random(run.config.seed).sample(range(len(samples)), limit))
        samples = [samples[i] for i in rows]
    out = Path(out) if out else run.path / f"pairs-{split}.jsonl"
    run.load()  # a run without a saved model says so now, before any work
    outputs = _generate(run, samples, out, batch_size, say)
    references = [s.reference for s in samples]
    verdicts = judge(check, outputs, [s.prompt_view() for s in samples], references, run, scorer, threshold)
    pairs = PairSet()
    for sample, output, (answer, ref) in zip(samples, outputs, verdicts):
        if answer.reason is not None and ref.reason is not None:
            pairs.failed[answer.reason] += 1
            pairs.skipped["reference_fails"] += 1
        elif answer.reason is not None:
            pairs.add(sample, output, answer)
    source = {"source": "generations", "split": split, "check": check}
    if check == "reward":
        source |= {"reward": reward, "threshold": threshold}
    summary = _write(run, out, pairs, len(samples), source)
    summary["line"] = _line(f"{split} outputs failed the {check} check", summary, pairs)
    (out.with_name(out.name + ".partial")).unlink(missing_ok=True)
    return summary


def pairs_from_feedback(run: Run | str | Path, log: str | Path, out: str | Path | None = None, say=print) -> dict:
    """Pairs from the corrections joined to a server's prediction log (`feedback.jsonl`, generative runs)."""
    run = run if isinstance(run, Run) else load_run(run)
    _require_generative(run)
    path = feedback_file(log)
    rows = read_feedback(path)
    if not rows:
        raise DataError(f"{path}: holds no corrections; import some with `tunesmith feedback import FILE --log LOG`")
    out = Path(out) if out else run.path / "pairs-feedback.jsonl"
    pairs = PairSet()
    for k, item in enumerate(rows, 1):
        sample = feedback_sample(run, item, f"{path} line {k}")
        predicted = "" if item.get("predicted") is None else str(item["predicted"])
        if predicted.strip() != sample.reference.strip():  # else the answer was confirmed (it passed)
            pairs.add(sample, predicted, Verdict("corrected", "corrected"), id=item.get("id"))
    versions = Counter(str(item.get("version")) for item in rows)
    own = str(run.info.get("name") or run.path.name)
    if set(versions) - {own}:
        others = ", ".join(f"{v} {n}" for v, n in versions.most_common() if v != own)
        say(f"note: feedback on other versions than {own} is paired too ({others})")
    summary = _write(run, out, pairs, len(rows), {"source": str(path), "check": "feedback", "versions": dict(versions)})
    summary["line"] = _line("feedback items corrected the model's answer", summary, pairs, reasons=False)
    return summary


# --------------------------------------------------------------------------------------------
# checks


def judge(check, outputs, prompts, references, run, scorer=None, threshold=0.5) -> list[tuple[Verdict, Verdict]]:
    """(the answer's verdict, the reference's verdict under the same check) per sample."""
    keys = run.config.generate.json_keys or []
    if check == "json":
        return [(json_verdict(o, keys), json_verdict(r, keys)) for o, r in zip(outputs, references)]
    if check == "fields":
        return [(fields_verdict(o, r, keys), json_verdict(r, keys)) for o, r in zip(outputs, references)]
    if check == "exact":
        return [(exact_verdict(o, r), PASS) for o, r in zip(outputs, references)]
    scores, ref_scores = scorer(outputs, prompts, references), scorer(references, prompts, references)
    return [(_reward_verdict(s, threshold), _reward_verdict(r, threshold)) for s, r in zip(scores, ref_scores)]


def json_verdict(text: str, keys: list[str]) -> Verdict:
    obj = parse_json_object(text)
    if obj is None:
        return Verdict("invalid_json", "invalid_json")
    missing = [k for k in keys if k not in obj]
    return Verdict("missing_keys", "missing_keys:" + ",".join(missing)) if missing else PASS


def fields_verdict(text: str, reference: str, keys: list[str]) -> Verdict:
    """json_verdict, then each field against the reference's (as generation.json_scores compares them)."""
    verdict = json_verdict(text, keys)
    if verdict.reason:
        return verdict
    got, want = parse_json_object(text), parse_json_object(reference) or {}
    wrong = [k for k in keys if normalise(str(got.get(k))) != normalise(str(want.get(k)))]
    return Verdict("field_mismatch", "field_mismatch:" + ",".join(wrong)) if wrong else PASS


def exact_verdict(text: str, reference: str) -> Verdict:
    return PASS if normalise(text) == normalise(reference) else Verdict("mismatch", "exact_mismatch")


def _reward_verdict(score: float, threshold: float) -> Verdict:
    return PASS if score >= threshold else Verdict("low_reward", f"reward {score:.2f} < {threshold:g}")


def normalise(text: str) -> str:
    """Whitespace and case folded away (the comparison of generation_scores' exact match)."""
    return " ".join(text.strip().lower().split())


def _pick_check(run: Run, check: str | None, reward: str | None) -> str:
    keys = run.config.generate.json_keys
    check = check or ("reward" if reward else "fields" if keys else "exact")
    if check not in CHECKS:
        raise ConfigError(f"--check {check}: unknown check; use one of {', '.join(CHECKS)}")
    if check == "reward" and not reward:
        raise ConfigError("--check reward needs --reward module:function (fn(completions, prompts, references))")
    if reward and check != "reward":
        raise ConfigError(f"--reward is used by --check reward only (this is --check {check}); drop one of them")
    if check in ("json", "fields") and not keys:
        raise ConfigError(
            f"--check {check}: {run.path} has no generate.json_keys to check against; "
            "use --check exact or --check reward"
        )
    return check


def _reward_scorer(target: str):
    """The user's reward function, imported and its answers checked as GRPO's python rewards are."""
    try:
        rewards = build_rewards([SimpleNamespace(kind="python", fn=target, name="--reward", weight=1.0)])
    except TunesmithError as err:
        raise ConfigError(str(err).replace("reward[1].fn: ", "--reward: ", 1)) from None
    return rewards.scorers[0]


# --------------------------------------------------------------------------------------------
# samples, generation, rows


def _require_generative(run: Run) -> None:
    if "generate" not in run.task.serves:
        raise RunError(
            f"{run.path}: a {run.info.get('task')} run does not generate; pairs come from a generative run "
            "(its model answers prompts), e.g. task causal-lm or seq2seq"
        )


def _split_samples(run: Run, split: str, say) -> list[Sample]:
    """The split's samples, rebuilt through the run's own task (a note when they differ from what the run saw)."""
    data = run.task.load_data()
    part = getattr(data.splits, split)
    samples = list(part.samples)
    if not samples:
        raise DataError(f"{run.path}: its {split} split is empty; pick another with --split")
    if all(s.messages is None and s.prompt is None for s in samples):
        raise DataError(
            f"{run.path}: its data are plain text (no prompts with reference answers); pairs need prompt/completion "
            "or chat data"
        )
    recorded = run.info.get("data", {}).get("splits", {}).get(split, {}).get("fingerprint")
    if recorded and recorded != part.fingerprint():
        say(f"note: the {split} data differ from what the run recorded (the file changed since it trained)")
    return samples


def _generate(run: Run, samples: list[Sample], out: Path, batch_size: int | None, say) -> list[str]:
    """The run's answers, chunk by chunk with a progress bar; chunks done before an interruption are reused."""
    gen = run.config.generate
    batch = batch_size or gen.batch_size
    prompts = [s.messages[:-1] if s.messages is not None else s.prompt for s in samples]
    partial = out.with_name(out.name + ".partial")
    key = _generation_key(run, prompts)
    done = _read_partial(partial, key)
    if done:
        say(f"resuming: {len(done)} of {len(prompts)} answers were generated before ({partial})")
    todo = [i for i in range(len(prompts)) if i not in done]
    out.parent.mkdir(parents=True, exist_ok=True)
    if not done:
        atomic_write_text(partial, json.dumps({"key": key}) + "\n")
    step = batch * CHUNK_BATCHES
    bar = tqdm(total=len(prompts), initial=len(done), desc="pairs: generate", unit="prompt")
    with partial.open("a", encoding="utf-8") as log, bar:
        for start in range(0, len(todo), step):
            rows = todo[start : start + step]
            texts = run.predictor.generate([prompts[i] for i in rows], batch_size=batch)
            for i, text in zip(rows, texts):
                done[i] = text
                log.write(json.dumps({"i": i, "output": text}, ensure_ascii=False) + "\n")
            log.flush()
            bar.update(len(rows))
    return [done[i] for i in range(len(prompts))]


def _generation_key(run: Run, prompts: list) -> str:
    """What the answers depend on: the model, the prompts and the generation settings (not the batch size)."""
    settings = {k: v for k, v in dataclasses.asdict(run.config.generate).items() if k not in ("batch_size", "samples")}
    model = run.path / "model"
    stamp = model.stat().st_mtime_ns if model.exists() else None
    text = json.dumps([str(run.path.resolve()), stamp, settings, prompts], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _read_partial(path: Path, key: str) -> dict[int, str]:
    """{sample index: answer} of an interrupted run with the same key (a torn last line is skipped)."""
    if not path.is_file():
        return {}
    lines = path.read_text(encoding="utf-8").splitlines()
    try:
        if not lines or json.loads(lines[0]).get("key") != key:
            return {}
    except json.JSONDecodeError:
        return {}
    done = {}
    for line in lines[1:]:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        done[int(rec["i"])] = rec["output"]
    return done


def feedback_file(log: str | Path) -> Path:
    """The generative feedback of a prediction log: feedback.jsonl beside it (or in the folder, or the file itself)."""
    path = Path(log)
    if not path.exists():
        raise DataError(
            f"{path}: no such prediction log or feedback file; give --from generations or a server's log (file or "
            "folder) whose corrections were imported with `tunesmith feedback import`"
        )
    if path.is_dir():
        target = path / "feedback.jsonl"
    elif path.suffix == ".jsonl" and path.name.startswith("feedback"):
        target = path
    else:
        target = feedback_path(path, generative=True)
    if not target.is_file():
        if (target.parent / "feedback.csv").is_file():
            raise DataError(
                f"{target.parent / 'feedback.csv'}: label corrections of a classifier; pairs need corrected "
                "completions of a generative run (feedback.jsonl)"
            )
        raise DataError(
            f"{target}: no feedback for this log; import corrections first "
            f"(tunesmith feedback import corrections.csv --log {path})"
        )
    return target


def feedback_sample(run: Run, item: dict, where: str) -> Sample:
    """A feedback row as a sample rendered like the run's training data; its reference is the corrected answer."""
    if isinstance(item.get("messages"), list) and item["messages"]:
        return Sample(0, messages=item["messages"])
    if not isinstance(item.get("prompt"), str) or not isinstance(item.get("completion"), str):
        raise DataError(f"{where}: a feedback row needs 'messages', or 'prompt' and 'completion' (re-import it)")
    sample = run.predictor.sample(item["prompt"])
    if sample.messages is not None:
        sample.messages[-1] = {"role": "assistant", "content": item["completion"]}
    else:
        sample.completion = item["completion"]
    return sample


def _write(run: Run, out: Path, pairs: PairSet, total: int, source: dict) -> dict:
    """The pairs (JSONL) and their summary (`.json` beside them), each written atomically; returns the summary."""
    atomic_write_text(out, "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs.rows))
    failed = sum(pairs.failed.values())
    summary_path = out.with_suffix(".json") if out.suffix != ".json" else out.with_name(out.name + ".summary.json")
    summary = {"out": str(out), "summary": str(summary_path), "run": str(run.path), **source, "items": total}
    summary |= {"failed": failed, "passed": total - failed, "pairs": len(pairs.rows)}
    summary |= {"reasons": dict(pairs.failed), "skipped": dict(pairs.skipped)}
    atomic_write_json(summary_path, summary)
    return summary


def _line(what: str, summary: dict, pairs: PairSet, reasons: bool = True) -> str:
    """pairs: 13 of 52 train outputs failed the fields check (field mismatch 13); 7 pairs (left out: ...) -> PATH"""
    reasons = reasons and ", ".join(f"{FAILED[k]} {n}" for k, n in pairs.failed.most_common())
    left = ", ".join(f"{SKIPPED[k]} {n}" for k, n in pairs.skipped.most_common())
    line = f"pairs: {summary['failed']} of {summary['items']} {what}" + (f" ({reasons})" if reasons else "")
    if left:
        line += f"; {summary['pairs']} pairs (left out: {left})"
    return f"{line} -> {summary['out']}"
