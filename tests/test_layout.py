"""The package's layout holds: subpackages import one way, and the shared records read without
torch or Ray (a service or a report reads a run's files without either)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import autofit

PACKAGE = Path(autofit.__file__).parent
# Each layer may import from itself and the layers after it, never from one before it.
LAYERS = [{"cli", "__main__", "client_cli", "files_cli", "client", "client_models"},
          {"service"}, {"preview"}, {"runner", "delivery", "extension"}, {"reporting", "search"},
          {"deliver"}, {"train"}, {"data"}, {"models"},
          {"context"}, {"journal", "events"}, {"records"}, {"config"},
          {"budget", "presets", "faults", "latency_budget", "reserves"},
          {"files", "errors", "environment", "storage", "stopping"}]
MAX_LINES = 400


def _unit(module: str) -> str:
    """A module's layer unit: its subpackage, or itself for a top-level module."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> set[str]:
    """The autofit modules `path` imports at run time (not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    typing_only = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and "TYPE_CHECKING" in ast.unparse(block.test) for node in ast.walk(block)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only or not isinstance(node, ast.ImportFrom) or not node.module:
            continue
        if node.module == "autofit":
            found |= {f"autofit.{alias.name}" for alias in node.names}
        elif node.module.startswith("autofit."):
            found.add(node.module)
    return found


def test_subpackages_import_one_way():
    rank = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(("autofit", *path.relative_to(PACKAGE).with_suffix("").parts))
        unit = _unit(module.removesuffix(".__init__"))
        if unit == "__init__":
            continue  # the package's lazy entry points
        for target in _imports(path):
            other = _unit(target)
            if other in rank and other != unit and rank[other] < rank[unit]:
                wrong.append(f"{module} imports {target}")
    assert not wrong, wrong
    assert {_unit(f"autofit.{p.stem}") for p in PACKAGE.glob("*.py")} - {"__init__"} | {
        p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()} <= set(rank)


def test_no_module_is_over_400_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long


@pytest.mark.parametrize(("imports", "heavy"), [
    # a service or a report reads a run's files without torch or Ray
    ("from autofit.records import JournalState, Summary, TrialRecord\n"
     "from autofit.reporting import run_files, run_table", ("torch", "ray", "nvidia")),
    # a user's script talks to `autofit serve` with the client alone
    ("import autofit\nautofit.Client\nimport autofit.client",
     ("torch", "ray", "nvidia", "fastapi", "onnxruntime", "autofit.service")),
], ids=["records", "client"])
def test_light_entry_points_import_no_heavy_library(imports: str, heavy: tuple[str, ...]):
    code = (f"import sys\n{imports}\n"
            f"print(sorted(m for m in sys.modules if m.startswith({heavy!r})))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert proc.stdout.strip() == "[]"


def test_the_wheel_lists_every_subpackage():
    """pyproject.toml names the packages the wheel carries: a subpackage left out would be
    missing from a wheel install, while an editable install still finds it."""
    import tomllib

    listed = set(tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())
                 ["tool"]["setuptools"]["packages"])
    found = {".".join(("autofit", *p.parent.relative_to(PACKAGE).parts)).rstrip(".")
             for p in PACKAGE.rglob("__init__.py")}
    assert found <= listed, found - listed
