"""The package's layers: a module imports only from its own layer or those below it.

    errors, logs, config  <  core  <  models  <  runtime  <  serving

Every import counts: at module level, inside functions (lazy) and under TYPE_CHECKING.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "framepack"
LAYERS = ("core", "models", "runtime", "serving")
TOP_LEVEL = ("errors", "logs", "config")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_modules(path: Path) -> set[str]:
    """Absolute names of the framepack modules (or packages) `path` imports, wherever the import is."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("framepack"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if not source.startswith("framepack"):
                continue
            found.add(source)
            found.update(f"{source}.{alias.name}" for alias in node.names)  # `from . import x` names modules
    return {module for module in found if _is_module(module)}


def _is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _rank(module: str) -> int:
    """0 for the package root and its top-level modules, then 1 + the position of the module's layer."""
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in TOP_LEVEL:
        return 0
    if parts[1] == "__main__":
        return len(LAYERS) + 1
    return 1 + LAYERS.index(parts[1])


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_sits_in_a_layer():
    for path in MODULES:
        parts = path.relative_to(PACKAGE).parts
        allowed = (*TOP_LEVEL, "__init__", "__main__") if len(parts) == 1 else LAYERS
        assert (Path(parts[0]).stem if len(parts) == 1 else parts[0]) in allowed, path


@pytest.mark.parametrize("path", MODULES, ids=lambda path: _module_name(path) or "framepack")
def test_no_module_imports_a_higher_layer(path):
    module = _module_name(path)
    if module == "framepack":  # the package root imports no module of the package up front
        assert _imported_modules(path) == set()
        return
    upward = [target for target in _imported_modules(path) if _rank(target) > _rank(module)]
    assert not upward, f"{module} imports {', '.join(sorted(upward))} from a higher layer"


def test_the_top_level_modules_import_nothing_of_the_package():
    for name in TOP_LEVEL:
        assert _imported_modules(PACKAGE / f"{name}.py") == set(), name


def test_the_check_sees_an_upward_import(tmp_path):
    """The test's own parser: a relative import two levels up is resolved to the module it names."""
    probe = PACKAGE / "core" / "request.py"
    imported = _imported_modules(probe)
    assert "framepack.config" in imported and "framepack.core.controls" in imported
    assert _rank("framepack.serving.engine") > _rank("framepack.core.request")


def test_the_flat_names_of_earlier_versions_import_the_layered_modules():
    import framepack.core.request
    import framepack.request
    import framepack.serving.service
    from framepack.service import FramePackService

    assert framepack.request is framepack.core.request
    assert FramePackService is framepack.serving.service.FramePackService
    with pytest.raises(ModuleNotFoundError):
        import framepack.no_such_module  # noqa: F401
