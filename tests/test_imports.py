"""The package's import graph: no cycle, and engines never import the study modules above them.

Run it as a script too (``python tests/test_imports.py``) to print the graph.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "lcc_utils"
#: Study-level modules (glue between notebooks and engines), top to bottom. An engine importing
#: one of these would be an upward import.
STUDY = ("cli", "demo", "reproduce", "study", "trained", "paper_a", "paper_b")


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(parts) or "__init__"


def import_graph() -> dict[str, set[str]]:
    """``{module: {lcc_utils modules it imports}}``, at any depth (function-level imports too).

    Imports under ``if TYPE_CHECKING:`` are left out: they never execute.
    """
    modules = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        pkg_parts = name.split(".")[:-1] if path.name != "__init__.py" else name.split(".")
        deps: set[str] = set()
        tree = ast.parse(path.read_text())
        # imports under `if TYPE_CHECKING:` are for annotations only and never run
        typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                       and "TYPE_CHECKING" in ast.unparse(block.test) for n in ast.walk(block)}
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg_parts[: len(pkg_parts) - (node.level - 1)] if node.level > 1 else pkg_parts
                    mod = ".".join([*base, *(node.module.split(".") if node.module else [])])
                elif node.module and node.module.startswith("lcc_utils"):
                    mod = node.module[len("lcc_utils."):] if node.module != "lcc_utils" else ""
                else:
                    continue
                targets = [f"{mod}.{a.name}".strip(".") for a in node.names] + [mod]
            elif isinstance(node, ast.Import):
                targets = [a.name[len("lcc_utils."):] for a in node.names if a.name.startswith("lcc_utils.")]
            for t in targets:
                while t and t not in modules:
                    t = t.rpartition(".")[0]
                if t and t != name and not name.startswith(t + "."):
                    deps.add(t)
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (c := visit(m)):
                return c
        state[n] = 2
        stack.pop()
        return None

    for n in sorted(graph):
        if n not in state and (c := visit(n)):
            return c
    return None


def test_import_graph_has_no_cycle():
    graph = import_graph()
    assert {"training", "coresets", "paper_a", "sentinel2", "compression"} <= {m.split(".")[0] for m in graph}
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_engines_do_not_import_the_study_modules():
    graph = import_graph()
    upward = {m: sorted(d for d in deps if d.split(".")[0] in STUDY)
              for m, deps in graph.items() if m.split(".")[0] not in STUDY}
    upward = {m: d for m, d in upward.items() if d}
    assert not upward, f"engines importing study modules: {upward}"
    order = {m: i for i, m in enumerate(STUDY)}
    for m in STUDY:
        for d in graph.get(m, ()):
            top = d.split(".")[0]
            assert order.get(top, len(STUDY)) > order[m], f"{m} imports {d}, a study module above it"


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


if __name__ == "__main__":
    for mod, deps in sorted(import_graph().items()):
        print(f"{mod}: {', '.join(sorted(deps))}")


def test_one_of_each_concept():
    """One definition each: splitter, NDVI, predict, reopening a run, atomic writer, figure saver."""
    import re

    source = {p: p.read_text() for p in PKG.rglob("*.py")}

    def defined(name: str) -> list[str]:  # module-level definitions only
        return [p.name for p, s in source.items() if re.search(rf"^def {name}\(", s, re.M)]

    for name in ("group_split", "ndvi", "normalized_difference", "predict", "reopen_trained", "atomic_path",
                 "atomic_write", "save_figure", "spatial_blocks"):
        assert len(defined(name)) == 1, f"{name} is defined in {defined(name)}"
    for gone in ("_group_fold", "predict_labels", "load_trained", "rebuild_neural", "load_mapping_model",
                 "_atomic_write", "_atomic_write_text"):
        assert not defined(gone), f"{gone} is back in {defined(gone)}"
