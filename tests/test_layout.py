"""The layout shows the architecture: no import loops, and nothing low imports anything above it.

Layers, lowest first (a module may import its own layer and the ones below):
  0  utils, hardware/           helpers and the machine: precision, fast kernels, memory estimates
  1  loaders/, model, monitoring/records   dataset readers, the networks, the record format
  2  dataset, methods/          the data table; the methods (they compute pictures, never draw them)
  3  storage/, evaluation/, monitoring/    checkpoints, scores, sinks and pictures
  4  solver                     the loop
  5  main                       builds the objects
  6  studies/, benchmarks/, results/ and the thin commands   what runs main
"""

import ast

from conftest import ROOT

LAYERS = {"utils": 0, "hardware": 0, "loaders": 1, "model": 1, "monitoring.records": 1, "dataset": 2, "methods": 2,
          "storage": 3, "evaluation": 3, "monitoring": 3, "solver": 4, "main": 5, "studies": 6, "benchmarks": 6,
          "results": 6, "cli": 6, "sweep": 6, "bench": 6, "replay": 6, "study_report": 6}


def modules() -> dict[str, set[str]]:
    """module name -> the project modules it imports (at any depth of its code)."""
    files = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in ("tests", "scripts", "build") or rel.parts[0].startswith("."):
            continue
        parts = rel.with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in files.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in files else node.module
                          for a in node.names}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
        graph[name] = {m for m in found if m in files and m != name}
    return graph


def layer(module: str) -> int:
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in LAYERS:
            return LAYERS[".".join(parts[:i])]
    raise AssertionError(f"{module} has no layer: add it to LAYERS")


def test_no_module_imports_one_above_its_layer():
    upward = [f"{m} (layer {layer(m)}) imports {d} (layer {layer(d)})"
              for m, deps in modules().items() for d in deps if layer(d) > layer(m)]
    assert upward == []


def test_there_is_no_import_loop():
    graph, loops = modules(), []

    def visit(module, path):
        for dep in sorted(graph[module]):
            if dep in path:
                loops.append(" -> ".join(path[path.index(dep):] + [dep]))
            elif dep not in done:
                visit(dep, path + [dep])
        done.add(module)

    done: set[str] = set()
    for module in sorted(graph):
        visit(module, [module])
    assert loops == []


def test_methods_draw_nothing():
    assert not {d for m, deps in modules().items() if m.startswith("methods") for d in deps
                if d.startswith("monitoring")}
