"""The package's imports flow one way: no module imports, directly or through others, a module
that imports it back, whether at module level or inside a function (a function-level import
that closes a cycle is a cycle deferred). Imports under ``if TYPE_CHECKING:`` never run and are
left out. The stages import only upstream: data <- plan <- decode <- synth <- iterator <- train."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "bsp_dali"
STAGES = ["data", "plan", "decode", "synth", "iterator", "train"]


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runs(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """False for a node inside ``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``)."""
    while node in parents:
        parent = parents[node]
        if isinstance(parent, ast.If) and node in parent.body:
            test = parent.test
            name = test.id if isinstance(test, ast.Name) else test.attr if isinstance(test, ast.Attribute) else ""
            if name == "TYPE_CHECKING":
                return False
        node = parent
    return True


def imports_of(path: Path, modules: set[str], root: Path = PACKAGE) -> set[str]:
    """The package's modules that ``path`` imports, anywhere in its code: ``from X import name``
    counts as an import of module ``X.name`` when that is a module, else of ``X``."""
    me = module_name(path, root)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text(), filename=str(path))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if not _runs(node, parents):
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            subs = {f"{target}.{a.name}" for a in node.names} & modules
            found.update(subs or ({target} & modules))
    found.discard(me)
    return found


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    files = sorted(root.rglob("*.py"))
    modules = {module_name(p, root) for p in files}
    return {module_name(p, root): imports_of(p, modules, root) for p in files}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 40 and "bsp_dali.synth.kernel_cupy" in graph
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_stages_import_only_upstream():
    graph = import_graph()

    def stage(m: str) -> int | None:
        parts = m.split(".")
        return STAGES.index(parts[1]) if len(parts) > 1 and parts[1] in STAGES else None

    backwards = [(m, n) for m, deps in graph.items() for n in deps
                 if stage(m) is not None and stage(n) is not None and stage(n) > stage(m)]
    assert backwards == []


def test_the_checker_sees_cycles_of_every_kind(tmp_path):
    """Module-level, function-level and through ``from . import``; not under TYPE_CHECKING."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..c import g\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a\ng = 1\n")
    graph = import_graph(pkg)
    assert graph["pkg.a"] == {"pkg.sub.b"} and graph["pkg.sub.b"] == {"pkg.c"} and graph["pkg.c"] == set()
    assert find_cycle(graph) is None
    (pkg / "c.py").write_text("def h():\n    from . import a\n")
    assert find_cycle(import_graph(pkg)) == ["pkg.a", "pkg.sub.b", "pkg.c", "pkg.a"]
