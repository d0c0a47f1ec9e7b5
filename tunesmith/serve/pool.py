"""The models a server answers with: run folders or registry versions, loaded once, adapters sharing a base.

`NAME=SOURCE` names a model (else the run folder's name, or `NAME@ALIAS` of `models:/NAME@ALIAS`).
Adapter runs on the same base model (same task, labels, adapter kind: `Run.adapter_key`) are loaded
into ONE PEFT model with one adapter each; a request picks its adapter (`set_adapter`) under the
group's lock, so ten LoRA variants cost one copy of the base plus ten adapters.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from ..runs.registry import resolve
from ..runs.run import Run
from ..utils import folder_size


@dataclass
class Group:
    """One model in memory and the lock that serialises its use (adapter switching is model-wide state)."""

    runs: list[Run]
    lock: threading.Lock = field(default_factory=threading.Lock)
    loaded: object = None

    def load(self):
        if self.loaded is None:
            self.loaded = self.runs[0].load(sharing=self.runs[1:])
        return self.loaded

    def activate(self, run: Run) -> None:
        """Make `run`'s adapter the active one (call under `lock`)."""
        loaded = self.load()
        name = loaded.adapters.get(str(run.path))
        if name and loaded.model.active_adapter != name:
            loaded.model.set_adapter(name)


@dataclass
class Served:
    name: str
    run: Run
    group: Group
    source: str

    @property
    def version(self) -> str:
        """The run's folder name (also for a registry copy, whose local folder is MLflow's `artifacts`)."""
        return str(self.run.info.get("name") or self.run.path.name)

    @property
    def serves(self) -> frozenset[str]:
        return self.run.task.serves

    def describe(self) -> dict:
        """An entry of GET /v1/models (OpenAI's shape plus what a client needs to know)."""
        return {
            "id": self.name,
            "object": "model",
            "owned_by": "tunesmith",
            "version": self.version,
            "source": self.source,
            "task": self.run.info.get("task"),
            "strategy": self.run.info.get("strategy"),
            "serves": sorted(self.serves),
            "inputs": self.run.predictor.input_kind,
            "labels": self.run.label_names or None,
            "shares_base_with": [r.path.name for r in self.group.runs if r is not self.run],
        }


def parse_source(spec: str) -> tuple[str | None, str]:
    """`NAME=SOURCE` -> (NAME, SOURCE); a bare SOURCE -> (None, SOURCE)."""
    name, sep, source = spec.partition("=")
    if sep and name and "/" not in name and not name.startswith("models:"):
        return name, source
    return None, spec


def default_name(source: str, run: Run) -> str:
    return source[len("models:/") :].replace("/", "-v") if source.startswith("models:/") else run.path.name


def open_runs(specs: list[str]) -> dict[str, Served]:
    """{name: Served} for the sources, grouped for sharing; nothing is loaded yet (`warm` loads)."""
    if not specs:
        raise ConfigError("serve: name at least one run folder or models:/NAME@ALIAS to serve")
    named: list[tuple[str, str, Run]] = []
    seen: dict[Path, Run] = {}  # one run named twice is one model (and one adapter) in memory
    for spec in specs:
        name, source = parse_source(spec)
        path = resolve(source) if source.startswith("models:/") else Path(source)
        if not path.is_dir():
            raise ConfigError(f"serve: '{source}' is not a run folder (or a models:/NAME@ALIAS of the registry)")
        run = seen.setdefault(path.resolve(), Run(path))
        if run.status != "complete":
            raise ConfigError(f"serve: {path} is {run.status}; only complete runs can be served")
        if not run.task.serves:
            raise ConfigError(f"serve: {path}: task {run.task.name} has nothing to serve")
        named.append((name or default_name(source, run), source, run))
    names = [n for n, _, _ in named]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ConfigError(f"serve: two models are named '{dup}'; name them with NAME=RUN")
    groups: dict[tuple, Group] = {}
    out = {}
    for name, source, run in named:
        key = run.adapter_key()
        group = groups.setdefault(key, Group([])) if key is not None else groups.setdefault(("run", id(run)), Group([]))
        if run not in group.runs:
            group.runs.append(run)
        out[name] = Served(name, run, group, source)
    return out


def warm(models: dict[str, Served], say=print) -> None:
    """Load every group's model (once per shared base)."""
    seen = set()
    for served in models.values():
        if id(served.group) in seen:
            continue
        seen.add(id(served.group))
        served.group.load()
        runs = served.group.runs
        sizes = sum(folder_size(r.path / "model") for r in runs)
        shared = f", {len(runs)} adapters on one base" if len(runs) > 1 else ""
        say(
            f"serve: loaded {', '.join(n for n, s in models.items() if s.group is served.group)}{shared} ({sizes / 1e6:.1f} MB of run weights)"
        )
