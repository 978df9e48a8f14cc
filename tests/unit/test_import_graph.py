"""The package's imports run one way: each stage imports only from itself and earlier stages, and no two modules
import each other, directly or through others (issue 28). Imports inside functions count too: a late import
hides an arrow, it does not remove it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "mimic_utils"

#: The study's stages in import order: a module may import from its own stage and the ones before it.
STAGES = ("artifacts", "data", "models", "evaluation", "training", "analysis", "tools")
#: Top-level modules and subpackages that are tools on top of the pipeline.
TOOLS = ("runner", "param_schema", "kernel_startup", "launch", "organism", "bench")
#: Top-level modules every stage may use, in the first stage with ``artifacts``: where files go, which machine.
BASE = ("artifacts", "machine")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def stage(module: str) -> str:
    """``mimic_utils.data.tasks`` → ``data``; ``mimic_utils.runner`` → ``tools``."""
    top = module.split(".")[1] if "." in module else "artifacts"
    if top in TOOLS:
        return "tools"
    if top in BASE:
        return "artifacts"
    if top not in STAGES:
        raise ValueError(f"{module}: in no stage of {STAGES} (add its folder to STAGES or TOOLS)")
    return top


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The package modules ``path`` imports anywhere in its body (``from mimic_utils.x import y`` names the
    module ``mimic_utils.x.y`` when that is a module, else ``mimic_utils.x``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("mimic_utils.")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("mimic_utils"):
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in known else node.module)
    return {name for name in found if name in known and name != "mimic_utils"}


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}
    known = set(paths)
    return {name: imported_modules(path, known) - {name} for name, path in paths.items()}


GRAPH = import_graph()


def test_every_module_has_a_stage():
    assert [m for m in GRAPH if m != "mimic_utils" and stage(m) not in STAGES] == []


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if m != "mimic_utils"))
def test_no_import_from_a_later_stage(module):
    mine = STAGES.index(stage(module))
    later = sorted(dep for dep in GRAPH[module] if STAGES.index(stage(dep)) > mine)
    assert later == [], f"{module} ({stage(module)}) imports from later stages: {later}"


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each as a sorted list."""
    index, low, on_stack, stack, groups, counter = {}, {}, set(), [], [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for dep in graph[node]:
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in on_stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_no_import_cycle():
    assert cycles(GRAPH) == []


def test_the_checks_find_what_they_look_for():
    """The checks themselves: a cycle and a backward arrow planted in a copy of the graph are reported."""
    planted = {**GRAPH, "mimic_utils.data.tasks": GRAPH["mimic_utils.data.tasks"] | {"mimic_utils.data.mimic_benchmark"}}
    assert ["mimic_utils.data.mimic_benchmark", "mimic_utils.data.tasks"] in cycles(planted)
    assert STAGES.index(stage("mimic_utils.analysis.stats")) > STAGES.index(stage("mimic_utils.data.tasks"))
    assert stage("mimic_utils.organism.recipe") == stage("mimic_utils.runner") == "tools"
    assert "mimic_utils.models.vlm" in GRAPH["mimic_utils.evaluation.harness"]
