"""The house rules, checked where CI checks everything: the layering (import-linter contracts
in pyproject.toml, function-level imports included) and the lint rules (ruff, with the ban on
module-level heavy imports)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tool(name):
    path = Path(sys.executable).with_name(name)
    found = str(path) if path.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed; it is part of the testing extra")
    return found


def test_layer_contracts_hold():
    proc = subprocess.run([_tool("lint-imports"), "--no-cache", str(ROOT / "pyproject.toml")],
                          cwd=ROOT / "src", capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_ruff_is_clean():
    proc = subprocess.run([_tool("ruff"), "check", "src", "tests", "benchmarks", "scripts"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:]


def test_at_most_six_modules_beside_the_rooms():
    top = sorted(p.name for p in (ROOT / "src" / "napari_fmbff").glob("*.py"))
    assert len(top) <= 6, top


def test_no_function_in_src_is_longer_than_80_lines():
    """Short functions (issue: one home per idea): every function and method in src/ fits in
    80 lines, docstring included; ruff's C901 / PLR0915 (pyproject) bound their complexity."""
    import ast

    long = []
    for path in sorted((ROOT / "src").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 80:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, "\n".join(long)


def test_no_function_in_src_takes_more_than_8_parameters():
    """Narrow signatures (issue 29): wider input is a typed request object (a frozen
    dataclass such as ``SegmentSettings``, ``training.requests.RunControl``,
    ``propagate.PropagateRequest``), never a long argument list. ``self`` / ``cls``,
    ``*args`` and ``**kwargs`` are not counted."""
    import ast

    wide = []
    for path in sorted((ROOT / "src").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args
                names = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs
                         if a.arg not in ("self", "cls")]
                if len(names) > 8:
                    wide.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} "
                                f"({len(names)} parameters)")
    assert not wide, "\n".join(wide)


def _module_imports(path: Path, package: str) -> set[str]:
    """Every module of ``package`` that ``path`` imports: module level, inside functions and
    under ``TYPE_CHECKING`` alike (a cycle through any of them is a cycle)."""
    import ast

    parts = path.relative_to(ROOT / "src").with_suffix("").parts
    here = list(parts[:-1])  # the package a relative import starts from
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            name = ".".join(base + ([node.module] if node.module else []))
            if not name.startswith(package):
                continue
            found.add(name)
            found.update(f"{name}.{a.name}" for a in node.names)  # "from . import x"
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith(package))
    return found


def test_the_package_has_no_import_cycle():
    """No module reaches itself through imports (function-level and TYPE_CHECKING counted);
    a package's ``__init__`` re-exports are not edges into its own modules."""
    package = "napari_fmbff"
    files = {".".join(p.relative_to(ROOT / "src").with_suffix("").parts).removesuffix(
        ".__init__"): p for p in (ROOT / "src" / package).rglob("*.py")}
    graph = {name: {m for m in _module_imports(path, package) if m in files and m != name}
             for name, path in files.items() if not path.name == "__init__.py"}
    graph = {k: {m for m in v if m in graph} for k, v in graph.items()}
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_layer_metadata_keys_live_in_one_module():
    """Every key napari-fmbff records under (layer metadata, zarr attributes, sidecars) is
    written once, in data/keys.py; everything else imports it (docstrings aside)."""
    import ast

    from napari_fmbff.data import keys

    values = {v for k, v in vars(keys).items() if k.isupper()}
    found = []
    for path in (ROOT / "src" / "napari_fmbff").rglob("*.py"):
        if path.name == "keys.py" and path.parent.name == "data":
            continue
        tree = ast.parse(path.read_text())
        docs = {id(n.body[0].value) for n in ast.walk(tree)
                if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef)) and n.body
                and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        found += [f"{path.name}:{n.lineno} {n.value!r}" for n in ast.walk(tree)
                  if isinstance(n, ast.Constant) and n.value in values and id(n) not in docs]
    assert not found, found


def test_dock_sections_are_composed_with_declared_state():
    """A dock's sections (issue 29) are plain classes the dock holds, built against a declared
    state (``_widgets/_state.py``): no mixin leans on attributes of its host, no class reads
    ``self.__dict__`` (or ``vars(self)``) for state it did not declare, and a section's
    attributes are all made in its ``__init__``."""
    import ast

    found = []
    for path in sorted((ROOT / "src" / "napari_fmbff" / "_widgets").glob("*.py")):
        for cls in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(cls, ast.ClassDef):
                continue
            where = f"{path.name}:{cls.lineno} {cls.name}"
            if "mixin" in cls.name.lower():
                found.append(f"{where}: a mixin")
            for node in ast.walk(cls):
                if (isinstance(node, ast.Attribute) and node.attr == "__dict__"
                        and isinstance(node.value, ast.Name) and node.value.id == "self") or (
                        isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                        and node.func.id == "vars" and len(node.args) == 1
                        and isinstance(node.args[0], ast.Name) and node.args[0].id == "self"):
                    found.append(f"{where}:{node.lineno} reads self.__dict__")
            if cls.name.endswith("Section"):
                found += [f"{where}: {name} made outside __init__"
                          for name in _made_later(cls)]
    assert not found, "\n".join(found)


def _made_later(cls) -> list[str]:
    """The ``self.<name>`` a class's methods assign that its ``__init__`` does not."""
    import ast

    def assigned(function) -> set[str]:
        targets = []
        for node in ast.walk(function):
            if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                for target in getattr(node, "targets", None) or [node.target]:
                    targets += ast.walk(target)
        return {t.attr for t in targets if isinstance(t, ast.Attribute)
                and isinstance(t.value, ast.Name) and t.value.id == "self"}

    methods = [n for n in cls.body if isinstance(n, ast.FunctionDef)]
    init = set().union(*(assigned(m) for m in methods if m.name == "__init__"))
    return sorted(set().union(*(assigned(m) for m in methods)) - init)
