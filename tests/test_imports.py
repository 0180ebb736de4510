"""The import graph of src/lvm has no circle, and no stage imports another stage.

Read from the source with ast (nothing is imported), counting imports inside functions too: a lazy
import hides a circle from Python at load time but not from the reader who follows it.
"""
from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

SRC = REPO / "src"

# No stage imports another stage (shared code lives in lvm/, e.g. lvm.docs, lvm.checkpoints).
KNOWN_STAGE_IMPORTS: set = set()


def module_name(path: Path, src: Path = SRC) -> str:
    parts = path.relative_to(src).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    """module -> the lvm modules it imports. `from a.b import c` names the module a.b.c when that is
    a module, else a.b; parent packages are not counted (their __init__ is run, but is no dependency
    the importing code reads)."""
    paths = {module_name(p, src): p for p in sorted(src.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: `from .base import x` inside lvm.models
                    anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.add(sub if sub in paths else base)
        graph[name] = {t for t in targets if t in paths and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None (depth-first search)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def stage_imports(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    def is_stage(m):
        return m.startswith("lvm.stages.")
    return {(a, b) for a, targets in graph.items() if is_stage(a) for b in targets if is_stage(b)}


def test_no_import_circle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_no_stage_imports_another_stage():
    assert stage_imports(import_graph()) <= KNOWN_STAGE_IMPORTS


def test_the_checks_see_circles_and_stage_imports(tmp_path):
    # the graph reader on a tiny package: a lazy (in-function) circle and a relative stage import
    pkg = tmp_path / "lvm"
    (pkg / "stages").mkdir(parents=True)
    for name in ("__init__.py", "stages/__init__.py"):
        (pkg / name).write_text("")
    (pkg / "cli.py").write_text("def main():\n    from lvm.inspect import run\n")
    (pkg / "inspect.py").write_text("from lvm import cli\n")
    (pkg / "stages/a.py").write_text("from .b import thing\n")
    (pkg / "stages/b.py").write_text("thing = 1\n")
    graph = import_graph(tmp_path)
    assert graph["lvm.cli"] == {"lvm.inspect"} and graph["lvm.inspect"] == {"lvm.cli"}
    assert find_cycle(graph) == ["lvm.cli", "lvm.inspect", "lvm.cli"]
    assert stage_imports(graph) == {("lvm.stages.a", "lvm.stages.b")}
    del graph["lvm.inspect"]
    assert find_cycle(graph) is None


# --------------------------------------------------------------------------
# Every stage's deps cover all the code it runs (else `dvc repro` says "up to date" over changed code)
# --------------------------------------------------------------------------


def source_path(module: str, src: Path = SRC) -> str:
    """The file that holds `module`, relative to the repository (a package: its __init__.py)."""
    path = src / Path(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    return path.relative_to(src.parent).as_posix()


def code_run_by(module: str, graph: dict) -> set[str]:
    """The files of every lvm module that running `module` executes: itself, what it imports (also
    inside functions), and the __init__.py of every package on the way (importing lvm.models.gru runs
    lvm/__init__.py and lvm/models/__init__.py first). The params loader and the error wrapper count
    too: lvm.config decides what each train stage trains (for_experiment), lvm.entry how it starts."""
    todo, runs = [module], set()
    while todo:
        m = todo.pop()
        if m not in runs:
            runs.add(m)
            todo += graph[m]
            todo += [".".join(m.split(".")[:i]) for i in range(1, m.count(".") + 1)]  # its packages
    return {source_path(m) for m in runs}


def uncovered(files: set[str], deps: list[str]) -> set[str]:
    """The files no dep covers (a dep is a file, or a folder covering everything under it)."""
    return {f for f in files if not any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps)}


def stage_modules(dvc_yaml: Path = REPO / "dvc.yaml") -> dict[str, str]:
    import re

    import yaml

    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    return {name: (re.search(r"-m (lvm\.stages\.\w+)", stage["cmd"]).group(1), stage["deps"])
            for name, stage in stages.items()}


def test_every_stage_depends_on_all_the_code_it_runs():
    # a module split off a stage's code must become a dep, or `dvc repro` misses its changes
    graph = import_graph()
    assert {"src/lvm/training.py", "src/lvm/models/gru.py", "src/lvm/config.py", "src/lvm/__init__.py"} \
        <= code_run_by("lvm.stages.train", graph)
    stages = stage_modules()
    assert {"ingest", "export_ctx100", "train_baseline", "train_retrieval", "evaluate", "analyze"} <= set(stages)
    for name, (module, deps) in stages.items():
        assert uncovered(code_run_by(module, graph), deps) == set(), name


def test_the_dependency_check_catches_a_planted_import(tmp_path):
    # a stage whose module starts importing a helper its deps do not list: found, by file
    pkg = tmp_path / "src" / "lvm"
    (pkg / "stages").mkdir(parents=True)
    (pkg / "models").mkdir()
    for name in ("__init__.py", "stages/__init__.py", "models/__init__.py", "models/gru.py", "helper.py"):
        (pkg / name).write_text("")
    (pkg / "stages/fit.py").write_text("from lvm.models import gru\n")
    graph = import_graph(tmp_path / "src")
    files = code_run_by("lvm.stages.fit", graph)
    deps = ["src/lvm/__init__.py", "src/lvm/stages/__init__.py", "src/lvm/stages/fit.py", "src/lvm/models"]
    assert files == {"src/lvm/__init__.py", "src/lvm/stages/__init__.py", "src/lvm/stages/fit.py",
                     "src/lvm/models/__init__.py", "src/lvm/models/gru.py"}
    assert uncovered(files, deps) == set()  # the folder dep covers the model files
    (pkg / "stages/fit.py").write_text("from lvm.models import gru\n\ndef run():\n    from lvm import helper\n")
    graph = import_graph(tmp_path / "src")
    assert uncovered(code_run_by("lvm.stages.fit", graph), deps) == {"src/lvm/helper.py"}
    assert uncovered(code_run_by("lvm.stages.fit", graph), deps[:-1]) == {
        "src/lvm/helper.py", "src/lvm/models/__init__.py", "src/lvm/models/gru.py"}


def test_no_module_outside_the_stages_imports_a_stage():
    # a stage reads, calls, writes: what another module needs from it belongs in the library
    # (e.g. lvm.evaluation, lvm.corpus); bench/ scripts count too
    graph = import_graph()
    outside = {(a, b) for a, targets in graph.items() if not a.startswith("lvm.stages")
               for b in targets if b.startswith("lvm.stages")}
    assert outside == set()
    for script in sorted((REPO / "bench").glob("*.py")):
        for node in ast.walk(ast.parse(script.read_text(), str(script))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.startswith("lvm.stages") for n in names), f"{script.name} imports {names}"
