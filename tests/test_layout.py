"""The package layout, read from the source: module-level imports between mambapro modules form
no cycle, the lower layers never import the audience packages (train, retrieval, deploy,
reports) or the CLI, and those packages import at the top of their files (only optional
dependencies are imported late)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "mambapro"

# Optional dependencies, imported where used so the package works without them.
OPTIONAL = {
    "torch.utils.tensorboard",
    "faiss",
    "onnx",
    "onnxruntime",
    "onnxscript",
    "fastapi",
    "starlette",
    "uvicorn",
}


#: The packages by audience, above the model and data layers.
AUDIENCES = ("train", "retrieval", "deploy", "reports")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _top_level_imports(name: str, path: Path, known: set[str]) -> set[str]:
    """mambapro modules that ``name`` imports when it is imported (TYPE_CHECKING blocks and
    function bodies excluded)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If) and not _is_type_checking(node):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
            elif isinstance(node, ast.Import):
                out.update(a.name for a in node.names if a.name in known)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    target = f"{base}.{node.module}" if node.module else base
                else:
                    target = node.module or ""
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    out.add(sub if sub in known else target)

    visit(tree.body)
    return {m for m in out if m in known and m != name}


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _top_level_imports(name, path, set(mods)) for name, path in mods.items()}


def test_module_imports_have_no_cycle() -> None:
    graph = _graph()
    assert "mambapro.train.trainer" in graph and "mambapro.models.mambapro" in graph
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycle = stack[stack.index(n) :] + [n]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if n not in state:
                dfs(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            dfs(m)


def test_lower_layers_do_not_import_upward() -> None:
    graph = _graph()
    upper = (*(f"mambapro.{p}" for p in AUDIENCES), "mambapro.cli")
    lower = (
        "mambapro.data",
        "mambapro.models",
        "mambapro.ops",
        "mambapro.aggregation",
        "mambapro.evaluation",
    )
    bad = [
        f"{m} imports {n}"
        for m, deps in graph.items()
        if m.startswith(lower)
        for n in deps
        if n.startswith(upper)
    ]
    assert not bad, bad
    # The data package never needs the config at import time (the config reads the specs).
    assert not [
        n
        for m, deps in graph.items()
        if m.startswith("mambapro.data")
        for n in deps
        if n == "mambapro.config"
    ]


def test_audience_packages_import_at_the_top() -> None:
    late = []
    for path in sorted(p for pkg in AUDIENCES for p in (PACKAGE / pkg).glob("*.py")):
        for fn in ast.walk(ast.parse(path.read_text())):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    names = [node.module or ""]
                else:
                    continue
                late += [
                    f"{path.name}:{node.lineno} {n}"
                    for n in names
                    if n not in OPTIONAL and n.split(".")[0] not in OPTIONAL
                ]
    assert not late, late


def test_the_checker_sees_a_cycle(tmp_path: Path) -> None:
    # The graph walk above must be able to fail: a two-module cycle written out is found.
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("from mambapro import b\n")
    b.write_text("import mambapro.a\n")
    known = {"mambapro.a", "mambapro.b"}
    assert _top_level_imports("mambapro.a", a, known) == {"mambapro.b"}
    assert _top_level_imports("mambapro.b", b, known) == {"mambapro.a"}
