"""Imports run one way: each layer of ``src/`` (and ``ops_cuda/``) imports only the layers
below it (``../shared/ARCHITECTURE.md``). Every ``.py`` file is parsed (ast), all its imports
are collected (those inside functions and ``if TYPE_CHECKING:`` blocks included, relative ones
resolved), and an import of a layer the table does not allow fails, naming ``file:line`` and the
rule."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# layer -> the layers it may import besides itself (stdlib and third-party are always allowed).
# ``app`` is the entry point's glue (src/app.py, src/__init__.py): anything.
RULES: dict[str, tuple[str, ...]] = {
    "app": ("*",),
    "compare": ("utils",),  # python -m src.compare: reads run dirs
    "engine": ("utils", "config", "logging"),
    "tasks": ("models", "losses", "metrics", "data", "nn", "ops", "utils", "logging"),
    "models": ("nn", "ops", "ops_cuda", "utils"),
    "losses": ("nn", "ops", "utils"),
    "metrics": ("data", "nn", "ops", "utils"),
    "data": ("nn", "ops", "utils"),
    "nn": ("ops", "utils"),
    "ops": ("ops_cuda", "utils"),
    "ops_cuda": (),
    "config": ("utils",),
    "logging": ("utils",),
    "utils": (),
    "utils.errors": (),  # the base of every user error: imports nothing of ours, not even utils
}
OURS = ("src", "ops_cuda")


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> str:
    """``src.nn.bbox`` -> ``nn``; ``ops_cuda.launch`` -> ``ops_cuda``; ``src.app`` -> ``app``."""
    parts = module.split(".")
    if parts[0] == "ops_cuda":
        return "ops_cuda"
    if module == "src.utils.errors":
        return "utils.errors"
    if len(parts) >= 2 and parts[1] in RULES:
        return parts[1]
    return "app"  # src, src.app


def imported_modules(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """``(line, absolute module)`` of every import of ours in ``path``, in line order.
    ``from src import nn`` counts as ``src.nn``; relative imports are resolved against the
    file's package."""
    module = module_name(path, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target in OURS:  # from src import nn, tasks -> each one a module
                out += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
            else:
                out.append((node.lineno, target))
    return sorted((line, m) for line, m in out if m.split(".")[0] in OURS)


def violations() -> list[str]:
    found = []
    files = sorted((ROOT / "src").rglob("*.py")) + sorted((ROOT / "ops_cuda").rglob("*.py"))
    for path in files:
        src_layer = layer_of(module_name(path))
        allowed = RULES[src_layer]
        if "*" in allowed:
            continue
        for line, target in imported_modules(path):
            dst_layer = layer_of(target)
            if dst_layer == "utils.errors" and src_layer != "utils.errors":
                dst_layer = "utils"  # for its importers, src.utils.errors is part of utils
            if dst_layer == src_layer or dst_layer in allowed:
                continue
            found.append(
                f"{path.relative_to(ROOT)}:{line}: imports {target} (layer {dst_layer}); "
                f"{src_layer} may import only: {', '.join(allowed) or 'nothing of ours'}"
            )
    return found


def test_layer_table_covers_every_package():
    packages = {p.name for p in (ROOT / "src").iterdir() if (p / "__init__.py").is_file()}
    assert packages <= set(RULES), f"add a rule for: {sorted(packages - set(RULES))}"


def test_imports_run_one_way():
    bad = violations()
    assert not bad, "imports against the layer rules:\n" + "\n".join(bad)


def test_import_collector_resolves_relative_package_and_inner_imports(tmp_path):
    pkg = tmp_path / "src" / "nn"
    pkg.mkdir(parents=True)
    f = pkg / "mod.py"
    f.write_text(
        "from . import bbox\nfrom ..engine import trainer\nfrom src import tasks, ops\n"
        "import numpy\ndef f():\n    import ops_cuda.launch\n"
    )
    assert imported_modules(f, tmp_path) == [
        (1, "src.nn"),
        (2, "src.engine"),
        (3, "src.ops"),
        (3, "src.tasks"),
        (6, "ops_cuda.launch"),
    ]
    assert [layer_of(m) for _, m in imported_modules(f, tmp_path)] == [
        "nn",
        "engine",
        "ops",
        "tasks",
        "ops_cuda",
    ]
