"""The layer rule travels with the project (docs/architecture.md): parts import one way, and no two files import each
other through any chain, counting imports inside functions. A shared name belongs in a module both import (for
errors: forgetbench/errors.py or a part's own errors.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import REPO


def import_graph(package: Path) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(parts, files): which parts (sub-packages and top modules) and which modules each imports, every import
    statement counted, wherever it stands. A package's ``__init__`` importing its own modules is no circle."""
    top = package.name
    modules = {".".join(p.relative_to(package.parent).with_suffix("").parts).removesuffix(".__init__")
               for p in package.rglob("*.py")}
    parts: dict[str, set[str]] = {}
    files: dict[str, set[str]] = {}

    def part(module: str) -> str | None:
        bits = module.split(".")
        return bits[1] if len(bits) > 1 and bits[0] == top else None

    for path in sorted(package.rglob("*.py")):
        dotted = ".".join(path.relative_to(package.parent).with_suffix("").parts)
        anchor = dotted.removesuffix(".__init__") if path.name == "__init__.py" else dotted.rsplit(".", 1)[0]
        module = dotted.removesuffix(".__init__")
        files.setdefault(module, set())
        source = part(module)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    bits = anchor.split(".")
                    base = ".".join(bits[: len(bits) - node.level + 1] + ([base] if base else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                if target in modules and target != module and not module.startswith(target + "."):
                    files[module].add(target)
                destination = part(target)
                is_part = destination and ((package / destination).is_dir() or (package / f"{destination}.py").exists())
                if source and is_part and destination != source:
                    parts.setdefault(source, set()).add(destination)
    return parts, files


def first_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A chain that comes back to where it started, or None.

    >>> first_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    True
    >>> first_cycle({"a": {"b"}, "b": {"a"}})
    ['a', 'b', 'a']
    """
    state: dict[str, int] = {}  # 1: on the current path, 2: finished

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if not state.get(nxt):
                found = visit(nxt, path)
                if found:
                    return found
        state[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if not state.get(start):
            found = visit(start, [])
            if found:
                return found
    return None


def test_no_cycle_between_parts_and_no_circle_of_files():
    parts, files = import_graph(REPO / "forgetbench")
    assert first_cycle(parts) is None, "a cycle between parts: " + " -> ".join(first_cycle(parts))
    assert first_cycle(files) is None, "a circle of files: " + " -> ".join(first_cycle(files))


def test_the_lab_and_compare_stay_in_their_rooms():
    """docs/architecture.md: the lab provides a model and data and imports no other part's code; compare reads
    lmms-eval's outputs without the training or evaluation parts."""
    parts, _ = import_graph(REPO / "forgetbench")
    assert parts.get("lab", set()) <= {"suite", "checkpoint", "errors"}
    assert parts.get("compare", set()) <= {"checkpoint", "outputs", "errors"}
    for part in ("train", "evaluate", "compare"):
        assert not parts.get(part, set()) & ({"train", "evaluate", "compare", "study"} - {part}), part


@pytest.mark.parametrize("circle", [
    {"a.py": "from pkg import b\n", "b.py": "def f():\n    from pkg.a import x\n"},  # inside a function counts
    {"sub/__init__.py": "", "sub/a.py": "from . import b\n", "sub/b.py": "from pkg.sub.a import x\n"},  # relative
])
def test_a_circle_added_to_a_package_is_found(tmp_path, circle):
    package = tmp_path / "pkg"
    for name, text in {"__init__.py": "", **circle}.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    _, files = import_graph(package)
    cycle = first_cycle(files)
    assert cycle is not None and cycle[0] == cycle[-1] and len(cycle) == 3
