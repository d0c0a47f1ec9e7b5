"""The layer rule, enforced: imports point down only, no cycles, no private names across modules, and no
task or strategy name compared outside tasks/ and strategies/ (everything else asks the seam)."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "tunesmith"

# Higher layers may import lower ones (and their own layer), never higher ones. Longest prefix wins.
LAYERS = {
    "tunesmith.errors": 0,
    "tunesmith.utils": 0,
    "tunesmith.version": 0,
    "tunesmith.config.schema": 1,
    "tunesmith.config.hygiene": 1,
    "tunesmith.config.forgetting": 1,
    "tunesmith.config.images": 1,
    "tunesmith.config.tune": 1,
    "tunesmith.config.multitask": 1,
    "tunesmith.config.preference": 1,
    "tunesmith.config.distributed": 1,
    "tunesmith.forgetting": 2,
    "tunesmith.config.dump": 1,
    "tunesmith.models": 2,
    "tunesmith.data": 2,
    "tunesmith.evaluate": 2,
    "tunesmith.tracking": 2,
    "tunesmith.strategies": 2,
    "tunesmith.engine": 2,
    "tunesmith.runs.record": 2,
    "tunesmith.runs.folder": 2,
    "tunesmith.tasks": 3,
    "tunesmith.config": 4,
    "tunesmith.config.loader": 4,
    "tunesmith.engine.pipeline": 5,
    "tunesmith.runs": 5,
    "tunesmith.tools": 6,
    "tunesmith.export": 6,
    "tunesmith.serve": 6,
    "tunesmith": 7,
    "tunesmith.cli": 8,
    "tunesmith.__main__": 8,
}
TASK_PACKAGES = ("tunesmith.tasks.classification", "tunesmith.tasks.generative")


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(module: str) -> list[tuple[str, list[str], int]]:
    """(imported tunesmith module, imported names, line) for every import statement, at any depth."""
    path = MODULES[module]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("tunesmith"):
                continue
            for alias in node.names:  # `from . import x` imports the submodule x
                sub = f"{target}.{alias.name}"
                out.append((sub, [], node.lineno) if sub in MODULES else (target, [alias.name], node.lineno))
        elif isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names if a.name.startswith("tunesmith")]
    return [(_known(t), names, line) for t, names, line in out]


def _known(name: str) -> str:
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _layer(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


def _graph() -> dict[str, set[str]]:
    graph = defaultdict(set)
    for module in MODULES:
        for target, _, _ in _imports(module):
            if target != module:
                graph[module].add(target)
    return graph


def test_imports_point_down_the_layers():
    wrong = [
        f"{m} (layer {_layer(m)}) imports {t} (layer {_layer(t)}) at line {line}"
        for m in MODULES
        for t, _, line in _imports(m)
        if _layer(t) > _layer(m)
    ]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    graph, index, low, stack, on, cycles, counter = _graph(), {}, {}, [], set(), [], [0]

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(MODULES):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_no_private_names_across_modules():
    wrong = [
        f"{m} line {line} imports {n} from {t}"
        for m in MODULES
        for t, names, line in _imports(m)
        for n in names
        if n.startswith("_") and not n.endswith("__") and t != m
    ]
    assert not wrong, "\n".join(wrong)


def test_tasks_never_import_each_other():
    wrong = [
        f"{m} imports {t}"
        for m in MODULES
        for t, _, _ in _imports(m)
        for a in TASK_PACKAGES
        for b in TASK_PACKAGES
        if a != b and m.startswith(a) and t.startswith(b)
    ]
    assert not wrong, "\n".join(wrong)


def test_no_task_or_strategy_name_compared_outside_their_seams():
    from tunesmith.strategies import strategy_names
    from tunesmith.tasks import task_names

    names = set(strategy_names()) | set(task_names())
    pattern = re.compile(r"task (==|!=)|strategy\.name (==|in|!=)|getattr\(strategy\.options")
    wrong = []
    for module, path in MODULES.items():
        if module.startswith(("tunesmith.tasks", "tunesmith.strategies")):
            continue
        source = path.read_text(encoding="utf-8")
        wrong += [
            f"{module} line {i}: {line.strip()}"
            for i, line in enumerate(source.splitlines(), 1)
            if pattern.search(line)
        ]
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Compare):
                for const in ast.walk(node):
                    if isinstance(const, ast.Constant) and const.value in names:
                        wrong.append(f"{module} line {node.lineno}: compares with the name '{const.value}'")
    assert not wrong, "\n".join(wrong)


def test_every_module_has_a_layer_and_stays_small():
    big = {m: n for m, p in MODULES.items() if (n := len(p.read_text(encoding="utf-8").splitlines())) > 400}
    assert not big, f"modules over 400 lines: {big}"
    assert all(isinstance(_layer(m), int) for m in MODULES)
