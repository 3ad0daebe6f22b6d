"""The package's import structure: layers that import downward only, no cycles, imports at the top.

An equivalent of import-linter's layers and acyclic contracts, written here because mattrt binds
heavy modules through `lazy_import("...")` (mattrt/lazy.py), which import-linter cannot see: this
test reads every module's source with `ast` and counts an import statement at any depth, and a
`lazy_import("mattrt....")` call, as an edge.

Layers, high to low (a module may import its own layer and the ones below):
    commands     mattrt.cli, mattrt.commands.core, mattrt.commands.infer, mattrt.jobs.demo, mattrt.serving
    export       mattrt.export (torch -> ONNX, parity, the artifact cache)
    calibration  mattrt.calibration (metrics, synthetic data, FP16/INT8 graphs, fidelity)
    runtime      mattrt.runtime (engines, backends, lint, pipeline)
    models | kernels  (independent of each other)
    core         mattrt.manifest, mattrt.imageio, mattrt.availability, mattrt.lazy, mattrt.errors, ...
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The top-level folders, each reached as mattrt.<folder> through a symlink in mattrt/.
PACKAGES = ("models", "data", "kernels", "runtime", "engines", "export", "calibration", "deploy", "serving", "jobs",
            "training")

# Highest first; modules of one layer may import each other, except across the packages of a
# layer listed in INDEPENDENT.
LAYERS: list[tuple[str, ...]] = [
    ("mattrt.cli", "mattrt.commands"),
    ("mattrt.jobs", "mattrt.training"),
    ("mattrt.serving",),
    ("mattrt.deploy",),
    ("mattrt.export", "mattrt.calibration"),
    ("mattrt.engines",),
    ("mattrt.runtime",),
    ("mattrt.models", "mattrt.kernels", "mattrt.data"),
    ("mattrt",),  # the core: every other module of the mattrt/ folder
]

INDEPENDENT = {("mattrt.export", "mattrt.calibration"), ("mattrt.models", "mattrt.kernels", "mattrt.data")}

# Third-party libraries that are heavy or optional: bound through mattrt.lazy.lazy_import, or
# imported at module top only by modules that need them anyway.
HEAVY = ("torch", "onnx", "onnxruntime", "openvino", "onnxscript", "onnxslim", "cupy", "tensorrt",
         "tensorrt_lean_bindings", "tritonclient", "scipy", "cuda", "triton_python_backend_utils", "pymatting", "numba",
         "ray", "pyarrow")


def _module_name(path: Path, root: Path, prefix: str) -> str:
    parts = [prefix, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_files() -> dict[str, Path]:
    files = {}
    core = ROOT / "mattrt"
    for path in sorted(core.rglob("*.py")):
        if not any((core / part).is_symlink() for part in path.relative_to(core).parts[:1]):
            files[_module_name(path, core, "mattrt")] = path
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            files[_module_name(path, ROOT / package, f"mattrt.{package}")] = path
    return files


MODULES = _module_files()


def _resolve(name: str) -> str | None:
    """The mattrt module an imported name refers to (a module, or a package for its attributes)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


class _Imports(ast.NodeVisitor):
    def __init__(self, module: str):
        self.module = module
        self.depth = 0  # function nesting
        self.type_checking = 0
        self.edges: list[tuple[str, int, bool]] = []  # (target, line, at module top)
        self.inner: list[tuple[str, int]] = []  # imports inside functions (any library)
        self.lazy: list[tuple[str, int]] = []  # the project's own modules bound through lazy_import

    def _function(self, node):
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_If(self, node: ast.If):
        guarded = "TYPE_CHECKING" in ast.unparse(node.test)
        self.type_checking += guarded
        for child in node.body:
            self.visit(child)
        self.type_checking -= guarded
        for child in node.orelse:
            self.visit(child)

    def _add(self, names: list[str], line: int):
        for name in names:
            if self.depth:
                self.inner.append((name, line))
            if self.type_checking:
                continue
            target = _resolve(name) if name.startswith("mattrt") else None
            if target and target != self.module:
                self.edges.append((target, line, self.depth == 0))

    def visit_Import(self, node: ast.Import):
        self._add([alias.name for alias in node.names], node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom):
        base = node.module or ""
        if node.level:
            package = self.module if MODULES[self.module].stem == "__init__" else self.module.rpartition(".")[0]
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            base = f"{package}.{base}" if base else package
        names = [f"{base}.{alias.name}" for alias in node.names if _resolve(f"{base}.{alias.name}") not in (None, base)]
        self._add(names or [base], node.lineno)

    def visit_Constant(self, node: ast.Constant):
        # The command index names command modules by string (mattrt/commands/__init__.py).
        if self.module == "mattrt.commands" and isinstance(node.value, str) and node.value in MODULES:
            self.edges.append((node.value, node.lineno, True))

    def visit_Call(self, node: ast.Call):
        func = node.func
        called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
        if called == "lazy_import" and node.args and isinstance(node.args[0], ast.Constant):
            name = node.args[0].value
            target = _resolve(name) if name.startswith("mattrt") else None
            if target and target != self.module:
                self.edges.append((target, node.lineno, True))
                self.lazy.append((target, node.lineno))
        self.generic_visit(node)


def _scan() -> dict[str, _Imports]:
    result = {}
    for module, path in MODULES.items():
        visitor = _Imports(module)
        visitor.visit(ast.parse(path.read_text(), str(path)))
        result[module] = visitor
    return result


SCAN = _scan()


def _layer(module: str) -> tuple[int, str]:
    for index, group in enumerate(LAYERS):
        for prefix in group:
            if prefix != "mattrt" and (module == prefix or module.startswith(prefix + ".")):
                return index, prefix
    return len(LAYERS) - 1, "mattrt"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def test_every_module_is_seen():
    assert "mattrt.runtime.pipeline" in MODULES and "mattrt.manifest" in MODULES
    assert sum(len(v.edges) for v in SCAN.values()) > 100  # the scan reads imports at all


def test_layers_import_downward_only():
    wrong = []
    for module, visitor in SCAN.items():
        level, group = _layer(module)
        for target, line, _ in visitor.edges:
            target_level, target_group = _layer(target)
            sibling = target_level == level and target_group != group and LAYERS[level] in INDEPENDENT
            if target_level < level or sibling:
                wrong.append(f"{MODULES[module].relative_to(ROOT)}:{line} {module} ({group}) imports {target} ({target_group})")
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_no_package_cycles():
    graph: dict[str, set[str]] = defaultdict(set)
    for module, visitor in SCAN.items():
        for target, _, _ in visitor.edges:
            if _layer(module)[1] != _layer(target)[1]:
                graph[_layer(module)[1]].add(_layer(target)[1])
    assert not _cycles(graph)


def test_no_module_cycles():
    graph = {module: {target for target, _, _ in visitor.edges} for module, visitor in SCAN.items()}
    assert not _cycles(graph), "module import cycles: " + "; ".join(" <-> ".join(c) for c in _cycles(graph))


# A probe's job is to try an import and report what failed: mattrt.availability imports inside
# its probe functions on purpose.
TRIES_IMPORTS = {"mattrt.availability"}

@pytest.mark.parametrize("module", sorted(set(MODULES) - TRIES_IMPORTS))
def test_imports_sit_at_module_top(module):
    """mattrt's own modules and the heavy libraries are imported at the top of each file (heavy
    ones through mattrt.lazy.lazy_import where the importer must stay cheap), never inside
    functions, so every file's dependencies are visible where they are declared."""
    inner = [
        f"line {line}: {name}" for name, line in SCAN[module].inner
        if name.startswith("mattrt") or name.split(".")[0] in HEAVY
    ]
    assert not inner, f"{MODULES[module].relative_to(ROOT)} imports inside functions: " + ", ".join(inner)


# Own modules bound lazily, each with its reason (everything else is imported plainly, so type
# checkers and jump-to-definition follow the code; lazy proxies are for heavy third-party libraries).
LAZY_OWN_IMPORTS = {
    ("mattrt.runtime.pipeline", "mattrt.models.sim_guidance"):
        "Semantic Image Matting's guidance needs torch; the pipeline runs without torch elsewhere (Triton stubs)",
}


def test_own_modules_are_imported_plainly():
    found = {(module, target) for module, visitor in SCAN.items() for target, _ in visitor.lazy}
    assert found == set(LAZY_OWN_IMPORTS), f"lazy imports of mattrt modules: {sorted(found)}"


def test_command_modules_are_registered_and_small():
    """Every command module's commands are in the index, and no module of the package is over ~600 lines."""
    from mattrt import commands

    for name, (module, _) in commands.INDEX.items():
        assert module in MODULES and isinstance(commands.load(name), commands.Command), name
    long = {name: len(path.read_text().splitlines()) for name, path in MODULES.items()
            if len(path.read_text().splitlines()) > 650}
    assert not long, f"modules over 650 lines: {long}"


def test_top_level_folders_resolve_from_a_plain_checkout():
    """Static tools (jump-to-definition, type checkers) follow mattrt/<folder> to the folder."""
    for package in PACKAGES:
        link = ROOT / "mattrt" / package
        assert link.is_symlink() and link.resolve() == (ROOT / package).resolve(), link
        assert (link / "__init__.py").is_file()
