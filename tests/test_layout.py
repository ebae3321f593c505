"""The house's shape: every import arrow points downhill, no two modules import each other,
experiments share through common.py (and figures.py) only, no module is longer than one sitting,
and importing a module changes no global state.

The import graph is read from the source with `ast` (every `import` and `from ... import`, at
any depth, lazy ones included), so it is the graph Python would follow, not a convention.
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# a package's level; an arrow may only point to a lower level or inside its own package
LEVELS = {"nn": 0, "data": 0, "attacks": 1, "training": 2, "gan": 3, "models": 4, "web": 5,
          "experiments": 6}
ENTRY = {"models.build"}  # run as `python -m models.build`: an entry point like the root scripts
MAX_LINES = 300


def modules():
    """Dotted name -> path of every module of the project (root scripts, packages, benchmarks)."""
    paths = [*ROOT.glob("*.py")]
    for package in [*LEVELS, "benchmarks"]:
        paths += (ROOT / package).rglob("*.py")
    found = {}
    for path in paths:
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def imports(name, path, known):
    """The project modules that module `name` imports (relative imports resolved)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            for alias in node.names:  # `from pkg import module` names the module itself
                targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    found = set()
    for target in targets:
        while target and target not in known:  # `import nn.functional.x` -> nn.functional
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)
    return found


GRAPH = {name: imports(name, path, modules()) for name, path in modules().items()}
ROOT_SCRIPTS = {name for name in GRAPH if "." not in name and name not in LEVELS}


def top(name):
    return name.split(".")[0]


def test_the_graph_is_read():
    # the reader must see the arrows we know are there, or every test below passes vacuously
    assert "nn.functional" in GRAPH["nn.layers"]
    assert "experiments.common" in GRAPH["experiments.robust"]
    assert "training.cli" in GRAPH["train"]


def test_no_module_imports_a_root_script():
    wrong = {m: sorted(GRAPH[m] & ROOT_SCRIPTS) for m in GRAPH
             if m not in ROOT_SCRIPTS and GRAPH[m] & ROOT_SCRIPTS}
    assert not wrong


def test_every_arrow_points_downhill():
    wrong = []
    for m, targets in GRAPH.items():
        if top(m) not in LEVELS or m in ENTRY:
            continue
        for t in targets:
            if top(t) != top(m) and (t in ENTRY or LEVELS.get(top(t), 99) >= LEVELS[top(m)]):
                wrong.append(f"{m} -> {t}")
    assert not wrong


def test_no_cycle():
    def reaches(start, goal):
        seen, todo = set(), [start]
        while todo:
            for t in GRAPH[todo.pop()]:
                if t == goal:
                    return True
                if t not in seen:
                    seen.add(t)
                    todo.append(t)
        return False
    # a package's __init__ re-exporting its own modules is not a cycle
    cycles = [f"{m} <-> {t}" for m in GRAPH for t in GRAPH[m]
              if not (t.startswith(m + ".") or m.startswith(t + ".")) and reaches(t, m)]
    assert not cycles


def test_experiments_share_only_through_common():
    shared = {"experiments.common", "experiments.figures", "experiments"}
    wrong = {m: sorted(t for t in GRAPH[m] if top(t) == "experiments" and t not in shared)
             for m in GRAPH if top(m) == "experiments" and m not in shared}
    assert not {m: t for m, t in wrong.items() if t}


@pytest.mark.parametrize("path", sorted(p.relative_to(ROOT) for p in modules().values()),
                         ids=str)
def test_modules_are_short_enough_to_read_in_one_sitting(path):
    lines = len((ROOT / path).read_text().splitlines())
    assert lines <= MAX_LINES, f"{path}: {lines} lines"


def test_importing_changes_no_global_state():
    """No module-level matplotlib.use (a notebook's backend) or os.umask (the process's)."""
    wrong = []
    for name, path in modules().items():
        for stmt in ast.parse(path.read_text()).body:
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            for node in ast.walk(stmt):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                        node.func.attr in ("use", "umask"):
                    wrong.append(f"{name}: {ast.unparse(node)}")
    assert not wrong
