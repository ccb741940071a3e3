"""The package's shape holds: imports point one way, and nothing imports in a circle.

Read from the source with ``ast`` (nothing is imported), counting imports inside
functions too: a circle closed inside a function is still a circle. Imports under
``if TYPE_CHECKING:`` never run and are not counted.

Layers, lowest first; a module may import its own layer and those below:

- base: exceptions, states, settings, messages, options, the core, signals, logs,
  events, coroutines, typed, schedules;
- broker: ``fastq.broker`` and below, the only code that speaks Redis;
- api: the producer side (app, task, canvas, workflow, result, aio, eager, unique,
  fairness, ratelimit, routing, beat, control's client, monitoring, mail, contrib);
- worker: ``fastq.worker`` and below;
- apps: the CLI, the dashboard, the benchmark and the test helpers.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

SRC = pathlib.Path(__file__).resolve().parents[1] / "src" / "fastq"

#: Compiled modules (no .py file): the Cython core.
COMPILED = {"fastq._core"}
BASE = {"exceptions", "states", "settings", "messages", "options", "_speedups", "_core", "_core_py", "signals", "logs",
        "events", "coroutines", "typed", "schedules", "current"}
APPS = {"cli", "__main__", "bench", "bench_realistic", "bench_producers", "testing"}
LAYERS = ["base", "broker", "api", "worker", "apps"]
#: Imports allowed inside a function: the core's selector (compiled or pure Python), and
#: optional dependencies, which only the feature that needs them loads.
LAZY_OK = {("_speedups", "fastq._core"), ("_speedups", "fastq._core_py"), ("cli", "fastq.dashboard")}


def layer_of(module: str) -> str:
    parts = module.split(".")[1:]  # without "fastq"
    if not parts:
        return "api"  # the package: re-exports the public API
    if parts[0] in BASE:
        return "base"
    if parts[0] == "broker":
        return "broker"
    if parts[0] == "worker":
        return "worker"
    if parts[0] in APPS or parts[0] == "dashboard":
        return "apps"
    return "api"


def modules() -> dict[str, pathlib.Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC.parent).with_suffix("")
        name = ".".join(rel.parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in node.body:
                lines.update(range(sub.lineno, (sub.end_lineno or sub.lineno) + 1))
    return lines


def imports(mods: dict[str, pathlib.Path]) -> list[tuple[str, str, int, bool]]:
    """(importer, imported fastq module, line, inside a function) for every import that runs."""
    out = []
    for name, path in mods.items():
        tree = ast.parse(path.read_text())
        skip = _type_checking_lines(tree)
        in_function = {sub.lineno for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                       for sub in ast.walk(node) if isinstance(sub, (ast.Import, ast.ImportFrom))}
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)) or node.lineno in skip:
                continue
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                module = ".".join([*base, node.module] if node.module else base) if node.level else node.module or ""
                # "from . import x" imports the module x when there is one
                targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in {*mods, *COMPILED} else module
                           for a in node.names]
            for t in targets:
                if (t in mods or t in COMPILED) and t != name:
                    out.append((name, t, node.lineno, node.lineno in in_function))
    return out


MODS = modules()
EDGES = imports(MODS)


def test_the_graph_is_read():
    """The reader itself: it sees the imports that certainly exist."""
    edges = {(a, b) for a, b, _, _ in EDGES}
    assert ("fastq.app", "fastq.task") in edges
    assert ("fastq.worker.consumer", "fastq.broker.redis") in edges
    assert ("fastq._speedups", "fastq._core_py") in edges  # inside a function
    assert ("fastq._speedups", "fastq._core") in edges  # compiled
    assert len(MODS) > 50


def test_no_import_cycles():
    graph: dict[str, set[str]] = {m: set() for m in [*MODS, *COMPILED]}
    for a, b, _, _ in EDGES:
        if not b.startswith(a + "."):  # a package importing its own submodule (re-exports) is no circle
            graph[a].add(b)
    # Tarjan's strongly connected components: any with more than one module is a circle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for m in sorted(graph):
        if m not in index:
            visit(m)
    assert circles == [], f"modules that import each other: {circles}"


def test_imports_point_down_the_layers():
    upward = [f"{a}:{line} ({layer_of(a)}) imports {b} ({layer_of(b)})" for a, b, line, _ in EDGES
              if LAYERS.index(layer_of(b)) > LAYERS.index(layer_of(a))]
    assert upward == [], "\n".join(upward)


def test_fastq_modules_are_imported_at_the_top():
    """An import inside a function hides a dependency (and used to hide circles);
    only the core's selector and optional dependencies may wait until they are needed."""
    lazy = [f"{a}:{line} imports {b}" for a, b, line, inside in EDGES
            if inside and (a.removeprefix("fastq."), b) not in LAZY_OK
            and not any(b.startswith(ok) for m, ok in LAZY_OK if m == a.removeprefix("fastq."))]
    assert lazy == [], "\n".join(lazy)


#: Third-party packages fastq does not require (extras), which may be imported late.
OPTIONAL_PACKAGES = {"prometheus_client", "uvicorn", "starlette", "django", "pydantic"}


def test_only_optional_packages_are_imported_inside_functions():
    """Issue #19: an import inside a function only where it spares a user an
    optional dependency, and it says why on its line; everything else (the
    standard library, fastq's own dependencies) is imported at the top."""
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        lines = path.read_text().split("\n")

        def visit(node, inside, path=path, lines=lines):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.Import, ast.ImportFrom)) and inside:
                    names = [a.name for a in child.names] if isinstance(child, ast.Import) else [child.module or ""]
                    top = {n.split(".")[0] for n in names}
                    ours = isinstance(child, ast.ImportFrom) and child.level > 0
                    where = f"{path.relative_to(SRC)}:{child.lineno}"
                    if not ours and not top <= OPTIONAL_PACKAGES:
                        bad.append(f"{where}: {ast.unparse(child)} (import it at the top)")
                    elif "#" not in lines[child.lineno - 1]:
                        bad.append(f"{where}: {ast.unparse(child)} (say why on its line)")
                visit(child, inside or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))
        visit(ast.parse("\n".join(lines)), False)
    assert bad == [], "\n".join(bad)


@pytest.mark.parametrize("module", sorted(m for m in MODS if m.count(".") <= 2))
def test_module_names_are_not_repeated(module):
    """No two modules share a name (there were two called ``aio``)."""
    leaf = module.rpartition(".")[2]
    if leaf in ("fastq", "__main__"):
        return
    same = [m for m in MODS if m.rpartition(".")[2] == leaf]
    assert same == [module], f"{same} share a name"


def test_the_readme_layout_names_every_module_in_its_layer():
    """README.md's Layout table is the map a newcomer reads first: every module is on
    it, in the layer this test enforces."""
    readme = (SRC.parents[1] / "README.md").read_text()
    table = readme[readme.index("## Layout"):]
    rows: dict[str, str] = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] in LAYERS:
            for path in cells[1].replace("`", "").split(","):
                rows[path.strip()] = cells[0]
    missing, wrong = [], []
    for name, path in MODS.items():
        rel = path.relative_to(SRC).as_posix()
        if rel == "__main__.py" or rel == "__init__.py":
            continue
        folder = rel.rsplit("/", 1)[0] + "/" if "/" in rel else None
        layer = rows.get(rel) or (rows.get(folder) if folder else None)
        if layer is None:
            missing.append(rel)
        elif layer != layer_of(name):
            wrong.append(f"{rel}: README says {layer}, the code is {layer_of(name)}")
    assert missing == [], f"modules missing from README's Layout: {missing}"
    assert wrong == [], "\n".join(wrong)
