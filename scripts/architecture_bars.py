"""The shape of the source tree in a few figures: `python scripts/architecture_bars.py`.

Prints the largest classes (lines), the methods of the coordinator's `Federation` facade,
`isinstance` dispatch in the coordinator package (a check against one of fedstream's own
classes: dispatch on a feature's type belongs in a policy or a registry, not in a branch;
checks of a value's builtin type are listed apart), string comparisons with a Keras backend's
name outside the backend registry, and import cycles between fedstream's modules. Generated
protobuf stubs are left out. `tests/test_architecture.py` holds the tree to the bars.
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


def own_classes(modules: dict[str, Path]) -> set[str]:
    return {name.rsplit(".", 1)[1] for _, name in classes(modules)}


def _type_names(node: ast.expr) -> set[str]:
    parts = node.elts if isinstance(node, ast.Tuple) else [node]
    return {p.id if isinstance(p, ast.Name) else getattr(p, "attr", "") for p in parts}


def isinstance_checks(modules: dict[str, Path], package: str) -> tuple[list[str], list[str]]:
    """(dispatch on fedstream's own classes, checks of other types) in `package`."""
    own = own_classes(modules)
    dispatch, values = [], []
    for name, path in modules.items():
        if not name.startswith(f"fedstream.{package}"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance" \
                    and len(node.args) == 2:
                where = f"{name}:{node.lineno}"
                (dispatch if _type_names(node.args[1]) & own else values).append(where)
    return dispatch, values


BACKENDS = {"tensorflow", "jax", "torch"}
REGISTRY = "fedstream.common.backend"


def backend_branches(modules: dict[str, Path]) -> list[str]:
    """Comparisons with a backend's name (`== "jax"`, `in ("jax", "torch")`) outside the
    backend registry: a place a new backend would have to be added by hand."""
    hits = []
    for name, path in modules.items():
        if name == REGISTRY:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                constants = [c for c in ast.walk(node) if isinstance(c, ast.Constant)]
                if any(c.value in BACKENDS for c in constants):
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


def bars() -> dict:
    modules = sources()
    dispatch, values = isinstance_checks(modules, "coordinator")
    return {
        "largest_classes": classes(modules)[:5],
        "federation_methods": methods_of(modules["fedstream.coordinator.federation"],
                                         "Federation"),
        "isinstance_dispatch": dispatch,
        "isinstance_values": values,
        "backend_branches": backend_branches(modules),
        "import_cycles": cycles(import_graph(modules)),
    }


def main() -> None:
    b = bars()
    print("largest classes (lines):")
    for lines, name in b["largest_classes"]:
        print(f"  {lines:4d}  {name}")
    print(f"Federation methods: {len(b['federation_methods'])} "
          f"({', '.join(b['federation_methods'])})")
    for key, label in (("isinstance_dispatch", "isinstance dispatch on fedstream's classes in "
                        "fedstream.coordinator"),
                       ("isinstance_values", "isinstance checks of other types in "
                        "fedstream.coordinator"),
                       ("backend_branches", f"backend-name comparisons outside {REGISTRY}")):
        print(f"{label}: {len(b[key])}" + (f" ({', '.join(b[key])})" if b[key] else ""))
    print(f"import cycles: {len(b['import_cycles'])}")
    for loop in b["import_cycles"]:
        print("  " + " <-> ".join(loop))


if __name__ == "__main__":
    main()
