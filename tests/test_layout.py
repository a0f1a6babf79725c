"""What runs where: the job source bundle holds exactly the container code, host edits cannot reach SageMaker
jobs or the step cache, the packages import each other without cycles or private helpers, and the README's
parameter table is the definition's."""

from __future__ import annotations

import ast
import graphlib
import re
import shutil
from pathlib import Path

import pytest

from pipelines.source_bundle import PACKAGES, ROOT_FILES, collect_bundle
from tests.helpers import ROOT
from tests.helpers.cache_keys import cache_keys

HOST_ONLY_IMPORTS = {"click", "rich", "falcon", "gunicorn", "sqlite3", "mlops"}
PROJECT_PACKAGES = ("mlops", "pipelines", "training", "inference")


def _imports(source: str) -> set[str]:
    """Every module a file imports, at any depth (function-level imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


def test_the_bundle_is_exactly_the_container_code():
    bundle = collect_bundle()
    names = [name for name, _ in bundle.files]
    assert PACKAGES == ("training", "inference")
    assert {name.split("/")[0] for name in names} == set(PACKAGES) | set(ROOT_FILES.values())
    expected = sorted(p.relative_to(ROOT).as_posix() for package in PACKAGES for p in (ROOT / package).rglob("*.py")
                      if "__pycache__" not in p.parts)
    assert sorted(n for n in names if n.endswith(".py")) == expected
    for name, data in bundle.files:
        if name.endswith(".py"):
            roots = {module.split(".")[0] for module in _imports(data.decode())}
            assert not roots & HOST_ONLY_IMPORTS, f"{name} imports host-only {sorted(roots & HOST_ONLY_IMPORTS)}"


@pytest.fixture(scope="module")
def project_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("project")
    for package in PROJECT_PACKAGES:
        shutil.copytree(ROOT / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def test_editing_host_code_leaves_the_bundle_and_every_cache_key_unchanged(project_copy):
    digest, keys = cache_keys(project_copy)
    assert set(keys) == {"Preprocess", "TrainCNN", "TrainXGBoost", "TuneCNN", "EvaluateBaseline", "Evaluate"}
    host_modules = [p for package in ("mlops", "pipelines") for p in (project_copy / package).rglob("*.py")]
    assert len(host_modules) > 30
    for path in host_modules:
        path.write_text(path.read_text() + "\n# edited on the host\n")
    assert cache_keys(project_copy) == (digest, keys)

    job_script = project_copy / "training" / "train_xgboost.py"
    job_script.write_text(job_script.read_text() + "\n# edited job script\n")
    edited_digest, edited_keys = cache_keys(project_copy)
    assert edited_digest != digest
    assert all(edited_keys[name] != keys[name] for name in keys), "every job step runs code from the bundle"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _project_modules() -> dict[str, Path]:
    return {_module_name(p): p for package in PROJECT_PACKAGES for p in (ROOT / package).rglob("*.py")
            if "__pycache__" not in p.parts}


def test_no_import_cycles_and_no_private_helpers_across_modules():
    modules = _project_modules()
    graph: dict[str, set[str]] = {}
    private: list[str] = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        targets = set()
        aliases: dict[str, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for alias in node.names:
                    submodule = f"{node.module}.{alias.name}"
                    if submodule in modules:
                        targets.add(submodule)
                        aliases[alias.asname or alias.name] = submodule
                    elif node.module in modules:
                        targets.add(node.module)
                        if alias.name.startswith("_") and alias.name != "__version__":
                            private.append(f"{name} imports {node.module}.{alias.name}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in modules:
                        targets.add(alias.name)
                        aliases[alias.asname or alias.name] = alias.name
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases \
                    and node.attr.startswith("_") and not node.attr.startswith("__"):
                private.append(f"{name} uses {aliases[node.value.id]}.{node.attr}")
        graph[name] = targets - {name}
    assert private == []
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as exc:
        pytest.fail(f"import cycle: {' -> '.join(exc.args[1])}")
    container = {n for n in modules if n.split(".")[0] in PACKAGES}
    for name in container:
        assert not {t for t in graph[name] if t.split(".")[0] in ("mlops", "pipelines")}, name


def test_readme_parameter_table_is_the_definitions():
    from mlops.definition.build import build_definition
    from mlops.definition.config import PipelineConfig

    readme = (ROOT / "README.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \| (String|Integer|Float|Boolean) \| `([^`]*)` \|", readme, flags=re.MULTILINE)
    assert rows, "README.md has no parameter table"
    for strategy in ("Bayesian", "Grid"):
        declared = build_definition(PipelineConfig(tuning_strategy=strategy).for_local())["Parameters"]
        assert [name for name, _, _ in rows] == [p["Name"] for p in declared]
    declared = build_definition(PipelineConfig().for_local())["Parameters"]
    for (name, kind, default), parameter in zip(rows, declared, strict=True):
        assert kind == parameter["Type"], name
        assert default == str(parameter["DefaultValue"]).replace("mlops-local", "BUCKET"), name
