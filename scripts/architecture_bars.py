"""The shape of the source tree in a few figures: `python scripts/architecture_bars.py`.

Prints the largest classes (lines), the methods of the coordinator's `Federation` facade,
`isinstance` checks in the coordinator package (dispatch on a feature's type belongs in a
policy or a registry, not in a branch), and import cycles between fedstream's modules.
Generated protobuf stubs are left out.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "coordinator", "worker", "datapool", "cli")


def sources() -> dict[str, Path]:
    """Module name -> file, for every fedstream source module."""
    out = {}
    for package in PACKAGES:
        base = ROOT / package
        for path in sorted(base.rglob("*.py")):
            parts = path.relative_to(base).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def classes(modules: dict[str, Path]) -> list[tuple[int, str]]:
    found = []
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                found.append((node.end_lineno - node.lineno + 1, f"{name}.{node.name}"))
    return sorted(found, reverse=True)


def methods_of(path: Path, class_name: str) -> list[str]:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            return [f.name for f in node.body if isinstance(f, ast.FunctionDef)]
    return []


def isinstance_checks(modules: dict[str, Path], package: str) -> list[str]:
    hits = []
    for name, path in modules.items():
        if not name.startswith(f"fedstream.{package}"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance":
                hits.append(f"{name}:{node.lineno}")
    return hits


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def main() -> None:
    modules = sources()
    largest = classes(modules)[:5]
    federation = methods_of(modules["fedstream.coordinator.federation"], "Federation")
    checks = isinstance_checks(modules, "coordinator")
    loops = cycles(import_graph(modules))
    print("largest classes (lines):")
    for lines, name in largest:
        print(f"  {lines:4d}  {name}")
    print(f"Federation methods: {len(federation)}")
    print(f"isinstance in fedstream.coordinator: {len(checks)}"
          + (f" ({', '.join(checks)})" if checks else ""))
    print(f"import cycles: {len(loops)}")
    for loop in loops:
        print("  " + " <-> ".join(loop))


if __name__ == "__main__":
    main()
