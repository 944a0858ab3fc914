"""The package's architecture, read from its imports: folders are layers, arrows point down.

cli → dashboard → scheduler → engine → store → kernel, with the facade (api), scaffold and
doctor on top of every layer but the CLI. Imports inside functions count as much as those at
the top: a circle hidden in a function is still a circle.
"""

import ast
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, Set

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "featherflow"

KERNEL = {"errors", "config", "clock", "states", "proc", "lean", "graph", "flow", "mark", "_mark", "outputs", "rules", "text",
          "paths", "host", "params", "logcap", "report", "__init__", "__main__"}
TOP = {"api", "scaffold", "doctor"}
# A module may import from its own rank and below; `__main__` only starts the CLI.
RANK = {"kernel": 0, "store": 1, "notify": 2, "engine": 3, "scheduler": 4, "export": 5, "dashboard": 5, "web": 6,
        "top": 7, "cli": 8}


def modules() -> Dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = modules()


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "kernel"  # the package itself
    if len(parts) == 2 and (PACKAGE / f"{parts[1]}.py").exists():
        return "top" if parts[1] in TOP else "kernel"
    return parts[1]


def imports_of(module: str) -> Dict[str, Set[str]]:
    """{imported featherflow module: names taken from it} for every import in `module`."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: Dict[str, Set[str]] = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("featherflow"):
                    found.setdefault(alias.name, set())
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if not source.startswith("featherflow"):
                continue
            for alias in node.names:
                target = f"{source}.{alias.name}"
                if target in MODULES:  # `from featherflow.store import db`: the module db
                    found.setdefault(target, set())
                else:
                    found.setdefault(source, set()).add(alias.name)
    return found


GRAPH = {m: {t for t in imports_of(m) if t in MODULES and t != m} for m in MODULES}


def test_every_module_of_the_package_root_is_classified():
    loose = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in KERNEL | TOP)
    assert not loose, f"modules in featherflow/ that are neither kernel nor top: {loose} (put them in a layer)"


def test_no_import_circles():
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack, on_stack, circles = [], set(), []

    def visit(v):  # Tarjan's strongly connected components; the package is small
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(GRAPH[v] - {"featherflow"}):
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
                circles.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    assert circles == [], f"import circles: {circles}"


def test_imports_point_down_the_layers():
    upward = []
    for module, targets in GRAPH.items():
        if module in ("featherflow", "featherflow.__main__"):
            continue  # the package's lazy `Featherflow` export and `python -m` start the top
        for target in targets:
            if target == "featherflow":
                continue
            if RANK[layer(target)] > RANK[layer(module)]:
                upward.append(f"{module} ({layer(module)}) imports {target} ({layer(target)})")
    assert upward == []


def test_the_kernel_imports_only_the_standard_library_and_itself():
    third_party = {"peewee", "playhouse", "croniter"}
    bad = []
    for module, path in MODULES.items():
        if layer(module) != "kernel" or module.endswith("__main__"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            for name in names:
                if name.split(".")[0] in third_party:
                    bad.append(f"{module} imports {name}")
    assert bad == []


def test_no_private_name_is_imported_from_another_module():
    private = [f"{module} takes {name} from {source}"
               for module in MODULES for source, names in imports_of(module).items()
               for name in names if name.startswith("_") and not name.startswith("__")]
    assert private == []


@pytest.mark.parametrize("module", ["featherflow.dashboard.screen", "featherflow.mark", "featherflow.flow",
                                    "featherflow.engine.script", "featherflow.text"])
def test_pure_modules_load_no_peewee(module):
    code = f"import sys, {module}; print(sorted(m for m in ('peewee', 'croniter') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(ROOT),
                         check=True).stdout.strip()
    assert out == "[]", f"importing {module} loads {out}"


def test_the_source_tree_imports_and_migrates_as_it_is(tmp_path):
    """A copy of the source tree, not installed, first on sys.path (as `python bench/x.py` from a
    clone has it): it imports, finds the top-level migrations/ and migrates a new database."""
    import shutil

    tree = tmp_path / "clone"
    shutil.copytree(PACKAGE, tree / "featherflow", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "migrations", tree / "migrations", ignore=shutil.ignore_patterns("__pycache__"))
    code = ("import featherflow, sys; from featherflow import states; from featherflow.store import db; "
            "d = db.open_database(sys.argv[1]); print(featherflow.__file__); print(db.schema_version(d)); "
            "print(states.SCHEMA_VERSION)")
    import peewee

    # -S: no site, so no .pth file and no editable-install finder; peewee's folder by hand.
    path = os.pathsep.join([str(tree), os.path.dirname(peewee.__file__)])
    done = subprocess.run([sys.executable, "-S", "-c", code, str(tmp_path / "new.db")], capture_output=True,
                          text=True, cwd=str(tree), env={"PYTHONPATH": path, "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    where, version, latest = done.stdout.split()
    assert where.startswith(str(tree)) and version == latest
