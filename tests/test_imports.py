"""The shape of the house: no import circle between our modules (not even through an import inside a function),
and the recipe schema loads without peft or torch (the CLI and the loader import it)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import adapter_registry

PACKAGE = Path(adapter_registry.__file__).parent


def _modules() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> our modules its import statements run: the one named (``a.b.c``, or ``a.b`` when ``c`` is a name)
    and the packages on the way (``a``, ``a.b``: Python runs their ``__init__`` first), except the packages that
    hold the importing module (they are being imported already whenever it is)."""
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 2)}
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if not target:
                    continue
                parents = {".".join(target.split(".")[:i]) for i in range(1, target.count(".") + 1)}
                edges[name] |= ({target} | (parents - own)) - {name}
    return edges


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import circle (a path that comes back to its start), or None."""
    done: set[str] = set()

    def walk(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        for nxt in sorted(edges[node]):
            found = walk(nxt, [*path, node])
            if found:
                return found
        done.add(node)
        return None

    return next((c for c in (walk(n, []) for n in sorted(edges)) if c), None)


def test_no_import_circle() -> None:
    edges = _imports(_modules())
    assert sum(map(len, edges.values())) > 50, "the import walk found almost nothing: is PACKAGE right?"
    cycle = _cycle(edges)
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_the_recipe_schema_imports_neither_peft_nor_torch() -> None:
    code = "import sys, adapter_registry.recipes; print(sorted({'peft', 'torch'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
