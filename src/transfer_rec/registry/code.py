"""What code a registered model carries: the modules of this package that serving imports, nothing else (no stage,
no harness), found from the package's own import graph."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

PACKAGE = "transfer_rec"
PACKAGE_DIR = Path(__file__).resolve().parents[1]


def module_file(module: str) -> Path | None:
    """The source file of one of this package's modules (a package's __init__.py), or None."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imports_of(module: str) -> set[str]:
    """The package's own modules that `module` imports anywhere in its source (at the top or inside functions)."""
    path = module_file(module)
    if path is None:
        return set()
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(n for n in names if n.split(".")[0] == PACKAGE and module_file(n) is not None)
    return found - {module}


def import_graph() -> dict[str, set[str]]:
    """Every module of the package and the package modules it imports."""
    modules = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        relative = path.relative_to(PACKAGE_DIR.parent).with_suffix("")
        parts = list(relative.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules.append(".".join(parts))
    return {m: imports_of(m) for m in modules}


def closure(roots: list[str]) -> set[str]:
    """The roots and every package module they import, directly or not, with the packages that hold them."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parts = module.split(".")
        todo.extend(".".join(parts[:n]) for n in range(1, len(parts)))  # parent packages' __init__
        todo.extend(imports_of(module))
    return seen


def stage_code(roots: list[str], folder: Path) -> Path:
    """Copy the modules `roots` need into folder/transfer_rec/ (rebuilt each time); return folder/transfer_rec."""
    target = folder / PACKAGE
    shutil.rmtree(target, ignore_errors=True)
    for module in sorted(closure(roots)):
        source = module_file(module)
        if source is None:
            continue
        dest = target / source.relative_to(PACKAGE_DIR)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, dest)
    return target
