"""The package boundaries, read from the source: who may import whom."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SUBPACKAGES = ("data", "dicom", "training", "scoring", "reporting")


def imports_of(source: str, package: list[str]) -> set[str]:
    """Every module ``source`` imports, absolute (relative imports resolved against ``package``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found.add(module)
            found |= {f"{module}.{alias.name}" for alias in node.names}  # `from pipelines import runtime`
    return found


def imported_modules(path: Path) -> set[str]:
    return imports_of(path.read_text(), list(path.relative_to(REPO).with_suffix("").parts[:-1]))


def sources(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


def test_imports_are_resolved_relative_and_by_name():
    source = "from ..data import manifest\nfrom . import train\nimport mlflow.pyfunc\n"
    found = imports_of(source, ["pipelines", "stages"])
    assert {"pipelines.data.manifest", "pipelines.stages.train", "mlflow.pyfunc"} <= found


@pytest.mark.parametrize("path", sources("pipelines/stages"), ids=lambda p: p.name)
def test_a_stage_never_imports_another_stage(path):
    others = {f"pipelines.stages.{p.stem}" for p in sources("pipelines/stages")} - {f"pipelines.stages.{path.stem}"}
    assert not imported_modules(path) & others


@pytest.mark.parametrize("path", [p for sub in SUBPACKAGES for p in sources(f"pipelines/{sub}")],
                         ids=lambda p: str(p.relative_to(REPO / "pipelines")))
def test_subpackages_never_import_stages_or_the_cli(path):
    bad = [m for m in imported_modules(path)
           if m.startswith("pipelines.stages") or m in ("pipelines.cli", "pipelines.pipeline")]
    assert not bad


@pytest.mark.parametrize("path", sources("medvit"), ids=lambda p: p.name)
def test_model_library_is_pure_pytorch(path):
    bad = [m for m in imported_modules(path) if m.split(".")[0] in ("pipelines", "monai", "mlflow")]
    assert not bad


@pytest.mark.parametrize("path", sorted((REPO / "tests").rglob("*.py")), ids=lambda p: str(p.relative_to(REPO)))
def test_no_test_module_imports_another(path):
    tests = {p.stem for p in (REPO / "tests").rglob("test_*.py")}
    bad = [m for m in imported_modules(path) if m.split(".")[0] in tests or m.startswith(("conftest", "tests.test_"))]
    assert not bad
