"""The package's layers import only downwards, and no module imports itself in a circle.

Every module of each lower layer is imported in a fresh interpreter; no module of a
higher layer may be loaded by them. The import graph, late imports included, has no cycle.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import authproxy

# Lowest first. A module may import its own layer and those below, never above.
LAYERS: list[list[str]] = [
    ["authproxy.errors", "authproxy.config"],
    ["authproxy.observability", "authproxy.db", "authproxy.keys", "authproxy.tls"],
    ["authproxy.upstream", "authproxy.auth"],
    ["authproxy.http"],
    ["authproxy.admin", "authproxy.ui", "authproxy.server"],
    ["authproxy.app"],
    ["authproxy.cli"],
]
# Inside http/: the shared lifecycle never loads a front end.
HTTP_CORE = [
    "authproxy.http.headers",
    "authproxy.http.errormap",
    "authproxy.http.admission",
    "authproxy.http.lifecycle",
    "authproxy.http.reserved",
]
FRONT_ENDS = ("authproxy.http.aio", "authproxy.http.fast")
PACKAGE_ROOT = Path(authproxy.__file__).parent


def _loaded_by(package: str) -> list[str]:
    """authproxy modules loaded by importing every module of ``package`` (or the module
    itself) in a fresh interpreter."""
    mine = [m for m in _modules() if m == package or m.startswith(package + ".")]
    code = (
        f"import sys, json, {', '.join(mine)}; "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('authproxy'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    loaded: list[str] = json.loads(out)
    return loaded


def _layer_of(module: str) -> int:
    for index, layer in enumerate(LAYERS):
        if any(module == top or module.startswith(top + ".") for top in layer):
            return index
    raise AssertionError(f"{module} is in no layer: add its package to LAYERS")


def _modules() -> list[str]:
    names = []
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if name not in ("authproxy", "authproxy.__main__"):
            names.append(name)
    return names


_MODULES = frozenset(_modules())


@pytest.mark.parametrize("module", [top for layer in LAYERS[:-1] for top in layer])
def test_a_lower_layer_loads_nothing_above_it(module: str) -> None:
    mine = _layer_of(module)
    above = [m for m in _loaded_by(module) if m != "authproxy" and _layer_of(m) > mine]
    assert above == [], f"importing {module} loads higher layers: {above}"


@pytest.mark.parametrize("module", HTTP_CORE)
def test_the_shared_lifecycle_loads_no_front_end(module: str) -> None:
    assert [m for m in _loaded_by(module) if m.startswith(FRONT_ENDS)] == []


def test_every_module_is_in_a_layer() -> None:
    for module in _modules():
        _layer_of(module)


def _imports(module: str) -> set[str]:
    """The authproxy modules ``module`` imports at run time, late imports in functions
    included; ``if TYPE_CHECKING:`` blocks left out (they never run)."""
    path = PACKAGE_ROOT.parent / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = PACKAGE_ROOT.parent / module.replace(".", "/") / "__init__.py"
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for statement in node.orelse:
                visit(statement)
            return
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "authproxy" or node.module.startswith("authproxy."):
                # "from authproxy.http.fast import head" imports the module head.
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    found.add(sub if sub in _MODULES else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("authproxy."))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return found - {"authproxy", module}


def test_no_import_goes_up_not_even_inside_a_function() -> None:
    for module in sorted(_MODULES):
        mine = _layer_of(module)
        up = sorted(dep for dep in _imports(module) if _layer_of(dep) > mine)
        assert up == [], f"{module} imports higher layers: {up}"


def test_no_import_cycles() -> None:
    """Not even one hidden inside a function (a late import is still a cycle)."""
    graph = {m: {i for i in _imports(m) if i in _MODULES} for m in _MODULES}
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in sorted(graph[module]):
            if state.get(dep) == 1:
                cycle = path[path.index(dep) :] + [dep] if dep in path else [module, dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, [*path, dep])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_the_readme_code_map_names_every_folder_and_module() -> None:
    """README's "Code map" is how a newcomer finds things: it must match the tree."""
    readme = (PACKAGE_ROOT.parent / "README.md").read_text()
    code_map = readme.split("## Code map", 1)[1].split("\n## ", 1)[0]
    for path in sorted(PACKAGE_ROOT.rglob("*")):
        if "__pycache__" in path.parts or path.name in ("__init__.py", "__main__.py", "py.typed"):
            continue
        if path.is_dir() and not (path / "__init__.py").exists():
            continue  # data folders (db/sql, a link to the repository's sql/)
        if path.parent.name == "sql" or path.suffix == ".sql":
            continue
        name = path.name + "/" if path.is_dir() else path.name
        # A whole name: "head.py" is not mentioned by "response_head.py".
        assert re.search(rf"(?<![\w.]){re.escape(name)}", code_map), (
            f"README's Code map does not mention {name}"
        )
    files = {p.name for p in PACKAGE_ROOT.rglob("*.py")}
    stale = sorted(set(re.findall(r"(?<![\w/])\w+\.py", code_map)) - files)
    assert stale == [], f"README's Code map names modules that do not exist: {stale}"
