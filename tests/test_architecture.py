"""The package structure: stage packages in floors, lower floors never import higher ones, no import loops.

The floors are those of ``docs/architecture.md``. Imports are read from the source (every ``import``,
including those inside functions and under ``TYPE_CHECKING``), so a lazy import cannot hide a loop.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mlcdf"

#: Bottom to top. The core is the plain modules of ``mlcdf/``; each other floor is one package.
CORE = (
    "mlcdf",
    "mlcdf._moved",
    "mlcdf.errors",
    "mlcdf.io",
    "mlcdf.labels",
    "mlcdf.progress",
    "mlcdf.config",
    "mlcdf.metrics",
    "mlcdf.label_graph",
    "mlcdf.devices",
    "mlcdf.weights",
)
FLOORS = ("core", "data", "faces", "models", "tasks", "train", "inference", "graph", "evaluation", "experiments", "serve", "cli")
#: Core modules that the report, the plan checker and ``--help`` rely on importing without torch.
TORCH_FREE = (
    "mlcdf",
    "mlcdf.errors",
    "mlcdf.io",
    "mlcdf.labels",
    "mlcdf.progress",
    "mlcdf.config",
    "mlcdf.metrics",
    "mlcdf.label_graph",
    "mlcdf.devices",
    "mlcdf.evaluation.report",
    "mlcdf.experiments.plans",
    "mlcdf.cli.main",
)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The mlcdf modules that ``name`` imports anywhere in its source (``from a import b`` counts ``a.b``
    when that is a module, else ``a``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {target for target in found if target in known and target != name}


def floor(name: str) -> int:
    if name in CORE:
        return 0
    if name == "mlcdf.__main__":
        return FLOORS.index("cli")
    return FLOORS.index(name.split(".")[1])


def import_graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imported_modules(name, path, set(found)) for name, path in found.items()}


def test_every_module_sits_on_a_floor():
    for name in modules():
        assert name in CORE or name == "mlcdf.__main__" or name.split(".")[1] in FLOORS, (
            f"{name} is on no floor: add it to docs/architecture.md and here"
        )


def test_no_module_imports_a_higher_floor():
    upward = [
        f"{name} ({FLOORS[floor(name)]}) imports {target} ({FLOORS[floor(target)]})"
        for name, targets in import_graph().items()
        for target in sorted(targets)
        if floor(target) > floor(name)
    ]
    assert upward == []


def test_there_is_no_import_loop():
    graph = import_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    loops = []

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                loops.append(" -> ".join(path[path.index(target) :] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert loops == []


def test_the_checker_sees_upward_and_circular_imports(tmp_path, monkeypatch):
    """The rules above are not vacuous: a data module importing the trainer breaks both."""
    fake = tmp_path / "mlcdf"
    for path in modules().values():
        target = fake / path.relative_to(PACKAGE)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    (fake / "data" / "images.py").write_text("def f():\n    from mlcdf.train.stage import train\n", encoding="utf-8")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    with pytest.raises(AssertionError, match=r"mlcdf.data.images \(data\) imports mlcdf.train.stage \(train\)"):
        test_no_module_imports_a_higher_floor()
    with pytest.raises(AssertionError, match="mlcdf.data.images -> mlcdf.train.stage"):
        test_there_is_no_import_loop()


@pytest.mark.parametrize("package", ["mlcdf", *(f"mlcdf.{name}" for name in FLOORS[1:])])
def test_each_stage_package_imports_alone(package):
    """In a fresh interpreter: a package must not rely on another having been imported first."""
    result = subprocess.run([sys.executable, "-W", "error::DeprecationWarning", "-c", f"import {package}"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_core_and_the_torch_free_modules_import_without_torch():
    code = "import importlib, sys\n" + "".join(
        f"importlib.import_module({name!r})\nassert 'torch' not in sys.modules, {name!r}\n" for name in TORCH_FREE
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_old_module_names_warn_and_give_the_new_objects():
    from mlcdf._moved import MOVED_MODULES

    for old, homes in MOVED_MODULES.items():
        sys.modules.pop(old, None)
        with pytest.warns(DeprecationWarning, match=f"{old} is now {homes[0]}"):
            module = importlib.import_module(old)
        new = importlib.import_module(homes[0])
        if len(homes) == 1:
            assert module is new and new.__spec__.name == homes[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from mlcdf.config import TrainConfig
        from mlcdf.evaluate import evaluate_run as old_evaluate_run
        from mlcdf.evaluation.runs import evaluate_run
        from mlcdf.experiments.runner import run_plan
        from mlcdf.plans import run_plan as old_run_plan
        from mlcdf.training import TrainConfig as OldTrainConfig

        assert (old_evaluate_run, old_run_plan, OldTrainConfig) == (evaluate_run, run_plan, TrainConfig)
        with pytest.raises(ImportError):
            from mlcdf.plans import no_such_name  # noqa: F401
