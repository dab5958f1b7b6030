"""The layers of ARCHITECTURE (docs/development.md, "Layout and layers"), read from the source: no import runs
against them, and every run-folder file name is written in one module."""
import ast
from pathlib import Path

import pytest

from utils.run_files import RUN_FILES

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("utils", "data", "models", "losses", "retrieval", "engine", "app", "bench", "tests")
# What each floor may import of the project (its own package included); top-level entry scripts are "scripts".
ALLOWED = {
    "utils": {"utils"},
    "data": {"utils", "data"},
    "models": {"utils", "data", "models", "losses"},
    "losses": {"utils", "data", "models", "losses"},
    "retrieval": {"utils", "data", "retrieval"},              # pure scoring: builds no model, runs no engine
    "engine": {"utils", "data", "models", "losses", "retrieval", "engine"},
    "app": {"utils", "data", "models", "losses", "retrieval", "engine", "app"},
    "scripts": {"utils", "data", "models", "losses", "retrieval", "engine", "app"},
    "bench": {"utils", "data", "models", "losses", "retrieval", "engine", "app", "bench"},
    "tests": set(PACKAGES),
}
FORBIDDEN_MODULES = {"app": {"data.demo"}}      # the app imports no demo generator


def project_sources() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py")
                  if not any(part.startswith(".") for part in p.relative_to(ROOT).parts))


def floor_of(path: Path) -> str:
    parts = path.relative_to(ROOT).parts
    return parts[0] if len(parts) > 1 else "scripts"


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """Every project module an import statement names, at any depth (function-level imports included)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] in PACKAGES]


def test_every_source_file_is_on_a_known_floor():
    assert {floor_of(p) for p in project_sources()} <= set(ALLOWED)


def test_no_import_runs_against_the_layers():
    wrong = []
    for path in project_sources():
        floor = floor_of(path)
        for line, name in imported_modules(ast.parse(path.read_text(encoding="utf-8"))):
            package = name.split(".")[0]
            if package not in ALLOWED[floor] or name in FORBIDDEN_MODULES.get(floor, ()):
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert sorted(set(wrong)) == []


def test_the_layer_check_sees_function_level_imports():
    tree = ast.parse("def f():\n    from engine.extract import x\n    import app.server\n")
    assert [n for _, n in imported_modules(tree)] == ["engine.extract", "engine.extract.x", "app.server"]


def string_literals(tree: ast.AST) -> list[str]:
    """String constants of a module, f-string parts included, docstrings left out."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]


def name_holders(name: str) -> list[str]:
    """The modules outside tests whose string literals contain ``name``."""
    return [str(p.relative_to(ROOT)) for p in project_sources() if floor_of(p) != "tests"
            and any(name in s for s in string_literals(ast.parse(p.read_text(encoding="utf-8"))))]


def test_model_best_is_a_literal_in_one_module():
    assert name_holders("model_best.pth.tar") == ["utils/run_files.py"]


@pytest.mark.parametrize("name", RUN_FILES)
def test_no_run_folder_file_name_is_written_outside_its_home(name):
    assert set(name_holders(name)) <= {"utils/run_files.py"}     # the figures' PDF names are derived there


def module_of(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Project module -> the project modules it imports (function-level imports included; ``from a.b import c``
    counts as ``a.b.c`` when that is a module, else ``a.b``)."""
    modules = {module_of(p): p for p in project_sources() if floor_of(p) != "scripts"}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for _, imported in imported_modules(ast.parse(path.read_text(encoding="utf-8"))):
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, groups, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def test_no_import_circle_among_the_project_modules():
    graph = import_graph()
    assert "engine.flags" in graph and not any(m.startswith("engine") for m in graph["engine.flags"])
    assert import_cycles(graph) == []


def test_the_circle_check_finds_a_circle():
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
