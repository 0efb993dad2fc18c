"""The package's structure: no import circles, and every exception under `facestream.FacestreamError`."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import facestream
from facestream import FacestreamError

ROOT = Path(__file__).parent.parent
# Where each installed package lives in the repository (pyproject.toml's package-dir).
PACKAGES = {
    "facestream": ROOT / "facestream",
    "facestream.engines": ROOT / "engines",
    "facestream.enroll": ROOT / "enroll",
    "facestream.pipeline": ROOT / "pipeline",
}


def package_modules() -> dict[str, Path]:
    """Every module of the package by its import name."""
    modules = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):  # subpackages too (pipeline/integrations, facestream/compat)
            parts = path.relative_to(folder).with_suffix("").parts
            if package == "facestream" and parts[0] in ("engines", "enroll", "pipeline"):
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join((package, *parts))] = path
    return modules


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules `name` imports at run time, anywhere in its code (imports inside functions count:
    they are circles too, only deferred); imports under `if TYPE_CHECKING:` do not run and do not count."""
    package = name if path.stem == "__init__" else name.rsplit(".", 1)[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target in modules:
                found.add(target)
            for alias in node.names:
                if f"{target}.{alias.name}" in modules:
                    found.add(f"{target}.{alias.name}")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    found.discard(name)
    # importing a.b.c runs a and a.b first: parents of an import are not edges of interest (they are packages)
    return {m for m in found if not m.startswith(name + ".")}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
            if other not in index:
                connect(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return components


def test_the_cycle_finder_finds_a_circle() -> None:
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles() -> None:
    modules = package_modules()
    assert len(modules) > 30
    # packages' __init__ files are run by any import of their modules: leave those edges out
    graph = {name: {m for m in imports_of(name, path, modules) if m not in PACKAGES} for name, path in modules.items()}
    assert find_cycles(graph) == []


# Which packages may import which at run time: models know nothing of galleries or processes, galleries
# nothing of processes; facestream.errors imports nothing of ours.
LAYERS = {"engines": {"engines"}, "enroll": {"engines", "enroll"}, "errors": set()}


def test_dependencies_point_one_way() -> None:
    modules = package_modules()
    wrong = []
    for name, path in modules.items():
        layer = name.split(".")[1] if "." in name else "root"
        allowed = LAYERS.get(layer)
        if allowed is None:
            continue
        for target in imports_of(name, path, modules):
            target_layer = target.split(".")[1] if "." in target else "root"
            if target_layer not in allowed | {"errors"} and target not in PACKAGES:
                wrong.append(f"{name} -> {target}")
    assert wrong == []


# Inside pipeline/: the domain logic knows no processes, sockets, web or command line (it may use the typed
# messages, which are plain data); only the command line imports the command line.
DOMAIN_MAY_IMPORT = ("facestream.pipeline.domain", "facestream.pipeline.config", "facestream.pipeline.runtime.messages")


def test_pipeline_domain_and_cli_sit_at_their_layers() -> None:
    modules = package_modules()
    wrong = []
    for name, path in modules.items():
        for target in imports_of(name, path, modules):
            if not target.startswith("facestream.pipeline.") or target in PACKAGES:
                continue
            if name.startswith("facestream.pipeline.domain") and not target.startswith(DOMAIN_MAY_IMPORT):
                wrong.append(f"{name} -> {target}")
            if target.startswith("facestream.pipeline.cli") and not name.startswith("facestream.pipeline.cli"):
                wrong.append(f"{name} -> {target}")
    assert wrong == []


def test_every_exception_class_derives_from_facestream_error() -> None:
    offenders, seen = [], 0
    for name in package_modules():
        module = importlib.import_module(name)
        for _, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, BaseException) and value.__module__ == name:
                seen += 1
                if not issubclass(value, FacestreamError):
                    offenders.append(f"{name}.{value.__qualname__}")
    assert seen >= 19 and offenders == []
    assert facestream.FacestreamError is FacestreamError


# The stage interfaces: what a new stage, source or output is written against.
DOCUMENTED = [
    "runtime/stages", "runtime/stage_main", "runtime/messages", "sources/spec", "sources/files", "sources/live",
    "sources/process", "runtime/supervisor", "runtime/children", "runtime/faces_queue", "runtime/reports",
    "runtime/preflight", "config/__init__", "config/schema", "config/sections", "config/root", "config/load",
    "config/render", "cli/runner", "runtime/detect_worker", "runtime/embed_worker",
    "sinks/__init__", "sinks/process", "sinks/core", "sinks/matcher", "sinks/outputs", "sinks/writers",
    "sinks/annotate", "sinks/web_feed", "sinks/records",
]


def _is_stub(node: ast.AST) -> bool:
    """A Protocol method like `def read(self) -> X: ...`: the class's docstring covers it."""
    body = getattr(node, "body", [])
    return len(body) == 1 and isinstance(body[0], ast.Expr) and body[0].value.value is Ellipsis


def test_stage_interfaces_have_docstrings_on_every_public_function_and_class() -> None:
    missing = []
    for module in DOCUMENTED:
        path = PACKAGES["facestream.pipeline"] / f"{module}.py"

        def visit(nodes: list[ast.stmt], prefix: str, path: Path = path) -> None:
            for node in nodes:
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    if node.name.startswith("_") or _is_stub(node):
                        continue
                    if not ast.get_docstring(node):
                        missing.append(f"{path.name}:{node.lineno} {prefix}{node.name}")
                    if isinstance(node, ast.ClassDef):
                        visit(node.body, f"{node.name}.")

        visit(ast.parse(path.read_text(encoding="utf-8")).body, "")
    assert missing == []


def test_every_package_folder_is_installed() -> None:
    """pyproject.toml lists the packages one by one: a new subpackage left out of that list would be missing
    from a non-editable install (its imports failing only when that code first runs)."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["packages"])
    folders = set()
    for package, folder in PACKAGES.items():
        for init in folder.rglob("__init__.py"):
            parts = init.parent.relative_to(folder).parts
            if package == "facestream" and parts and parts[0] in ("engines", "enroll", "pipeline"):
                continue
            folders.add(".".join((package, *parts)))
    assert folders - listed == set()
