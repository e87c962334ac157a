"""Tests of the package as a whole: its public names and its import graph."""

import ast
import os
import subprocess
import sys

import diffusion_bias

PACKAGE_DIR = os.path.dirname(os.path.abspath(diffusion_bias.__file__))
ROOT = os.path.dirname(PACKAGE_DIR)


def _module_files():
    """{module name: path} of every module of the package, __init__s included."""
    modules = {}
    for folder, _, names in os.walk(PACKAGE_DIR):
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                parts = os.path.relpath(path, ROOT)[: -len(".py")].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                modules[".".join(parts)] = path
    return modules


def _import_graph():
    """{module: the package's modules it imports}, imports inside functions included.

    `from P import x` counts as importing the module P.x where there is one, else P.
    """
    modules = _module_files()
    graph = {}
    for module, path in modules.items():
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        is_package = path.endswith("__init__.py")
        targets = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = module.split(".")[: len(module.split(".")) - node.level + is_package]
                    base = ".".join(anchor + ([base] if base else []))
                for alias in node.names:
                    targets.add(
                        f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                    )
        graph[module] = sorted(t for t in targets if t in modules and t != module)
    return graph


def _reachable(graph, start):
    seen, stack = set(), [start]
    while stack:
        for target in graph[stack.pop()]:
            if target not in seen:
                seen.add(target)
                stack.append(target)
    return seen


def test_the_import_graph_is_read_from_every_module_and_every_import_form():
    graph = _import_graph()
    assert len(graph) == len(_module_files()) > 40
    # "from diffusion_bias import run as run_lib" and "from diffusion_bias.statistics
    # import nearest" both name the module, not the package.
    assert {"diffusion_bias.run", "diffusion_bias.checkpoints"} <= set(
        graph["diffusion_bias.training.train"]
    )
    assert "diffusion_bias.statistics.nearest" in graph["diffusion_bias.instrument.probe"]
    assert "diffusion_bias.instrument.probe" in graph["diffusion_bias.instrument.measure"]
    assert "diffusion_bias.diffusion.samplers" in graph["diffusion_bias.diffusion"]


def test_the_import_graph_has_no_cycle():
    graph = _import_graph()
    cycles = sorted(m for m in graph if m in _reachable(graph, m))
    assert not cycles, f"modules on an import cycle: {cycles}"


def test_analysis_summary_and_statistics_do_not_import_training():
    graph = _import_graph()
    analysis_side = [
        "diffusion_bias.instrument.analysis",
        "diffusion_bias.instrument.measure",
        "diffusion_bias.instrument.probe",
        "diffusion_bias.instrument.summary",
    ] + [m for m in graph if m.startswith("diffusion_bias.statistics")]
    for module in analysis_side:
        assert "diffusion_bias.training.train" not in _reachable(graph, module), module


def test_figures_and_report_read_the_statistics_dict_without_importing_the_analysis():
    graph = _import_graph()
    for module in ("diffusion_bias.figures", "diffusion_bias.instrument.report"):
        reached = _reachable(graph, module)
        assert not reached & {
            "diffusion_bias.instrument.analysis",
            "diffusion_bias.training.train",
        }, module


def test_statistics_and_kernels_import_only_building_blocks():
    graph = _import_graph()
    blocks = ("diffusion_bias.statistics", "diffusion_bias.kernels", "diffusion_bias.diffusion")
    allowed = {
        "diffusion_bias.exact.bp",
        "diffusion_bias.chunking",
        "diffusion_bias.checks",
        "diffusion_bias.setting",
    }
    for module in graph:
        if module.startswith(blocks[:2]):
            outside = {
                m
                for m in _reachable(graph, module)
                if not m.startswith(blocks) and m not in allowed
            }
            assert not outside, f"{module} imports {sorted(outside)}"


def test_every_public_name_resolves_and_the_package_import_loads_no_training():
    for name in diffusion_bias.__all__:
        assert getattr(diffusion_bias, name) is not None, name
    # In a fresh interpreter: this process has imported train through other tests.
    code = "import sys, diffusion_bias; print('diffusion_bias.training.train' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "False"


def test_the_root_holds_the_public_api_and_at_most_eight_modules():
    root = sorted(n for n in os.listdir(PACKAGE_DIR) if n.endswith(".py"))
    assert len(root) <= 8, root
    # The stages are folders; every public short name is one of their modules.
    for stage in ("config", "training", "instrument", "exact"):
        assert os.path.exists(os.path.join(PACKAGE_DIR, stage, "__init__.py")), stage


def test_building_blocks_import_no_stage():
    graph = _import_graph()
    blocks = (
        "diffusion_bias.statistics",
        "diffusion_bias.kernels",
        "diffusion_bias.diffusion",
        "diffusion_bias.models",
        "diffusion_bias.exact",
        "diffusion_bias.setting",
    )
    stages = ("diffusion_bias.config", "diffusion_bias.training", "diffusion_bias.instrument")
    for module in graph:
        if module.startswith(blocks):
            reached = {m for m in _reachable(graph, module) if m.startswith(stages)}
            assert not reached, f"{module} imports the stages {sorted(reached)}"


def _public_functions(tree):
    """Top-level public functions and public methods of public top-level classes."""
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            yield node
        if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            for sub in node.body:
                if isinstance(sub, ast.FunctionDef) and not sub.name.startswith("_"):
                    yield sub


def test_every_public_function_is_annotated():
    missing = []
    for module, path in _module_files().items():
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        for fn in _public_functions(tree):
            a = fn.args
            params = [
                p for p in a.posonlyargs + a.args + a.kwonlyargs if p.arg not in ("self", "cls")
            ]
            params += [p for p in (a.vararg, a.kwarg) if p is not None]
            if fn.returns is None or any(p.annotation is None for p in params):
                missing.append(f"{module}.{fn.name}")
    assert not missing, missing
    # The check sees what it looks for.
    bare = ast.parse(
        "def f(x):\n    pass\nclass C:\n    def g(self, y: int) -> int:\n        return y"
    )
    assert [fn.name for fn in _public_functions(bare)] == ["f", "g"]
