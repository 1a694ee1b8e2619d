"""The package's import direction: every import between prismrl's subpackages (function-level ones included)
follows the layer rules of the README's Layout section."""

from __future__ import annotations

import ast
from pathlib import Path

import prismrl

PACKAGE = Path(prismrl.__file__).parent
ENTRY = {"apps", "cli"}
# package -> the prismrl packages it must never import
NEVER: dict[str, set[str]] = {
    "losses": {"rl", "data", "backbones", "policy", "evaluation", "rewards", "datamodules", "callbacks",
               "lightning_modules"} | ENTRY,
    "rl": {"losses", "data", "backbones", "policy", "evaluation", "rewards", "datamodules", "callbacks",
           "lightning_modules"} | ENTRY,
    "data": {"rl", "backbones", "policy", "evaluation", "rewards", "datamodules", "callbacks", "lightning_modules"} | ENTRY,
    "backbones": {"data", "policy", "evaluation", "rewards", "datamodules", "callbacks", "lightning_modules"} | ENTRY,
    "evaluation": {"rl", "backbones", "policy", "rewards", "datamodules", "callbacks", "lightning_modules"} | ENTRY,
    "policy": {"evaluation", "rewards", "datamodules", "callbacks", "lightning_modules"} | ENTRY,
    "rewards": {"policy", "datamodules", "callbacks", "lightning_modules"} | ENTRY,
    "datamodules": {"callbacks", "lightning_modules", "evaluation"} | ENTRY,
    "callbacks": {"datamodules", "lightning_modules"} | ENTRY,
    "lightning_modules": set(ENTRY),
}
SHARED_STAGE_MODULES = {"plumbing", "__init__"}


def _imports(path: Path, package: Path) -> list[tuple[int, str]]:
    rel = path.relative_to(package.parent).with_suffix("")
    parts = list(rel.parts)
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = parts[: len(parts) - node.level]
                found.append((node.lineno, ".".join(base + ([node.module] if node.module else []))))
            elif node.module:
                found.append((node.lineno, node.module))
    return found


def layer_violations(package: Path = PACKAGE) -> list[str]:
    bad = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package)
        src = rel.parts[0].removesuffix(".py")
        for line, name in _imports(path, package):
            parts = name.split(".")
            if parts[0] != "prismrl" or len(parts) < 2:
                continue
            dst = parts[1]
            if src == dst == "lightning_modules" and len(parts) > 2 and len(rel.parts) > 1:
                own = rel.parts[1].removesuffix(".py")
                if own != "__init__" and parts[2] not in SHARED_STAGE_MODULES | {own}:
                    bad.append(f"stage -> stage: prismrl/{rel}:{line} imports {name}")
            elif dst in NEVER.get(src, ()):
                bad.append(f"{src} -> {dst}: prismrl/{rel}:{line} imports {name}")
    return bad


def test_every_import_follows_the_layers():
    assert layer_violations() == []


def test_the_rules_catch_an_upward_import(tmp_path):
    fake = tmp_path / "prismrl"
    (fake / "rl").mkdir(parents=True)
    (fake / "lightning_modules").mkdir()
    (fake / "rl" / "math.py").write_text("def f():\n    from prismrl.data.records import PromptRecord\n")
    (fake / "lightning_modules" / "a.py").write_text("from prismrl.lightning_modules.b import B\n")
    (fake / "lightning_modules" / "b.py").write_text("from prismrl.lightning_modules.plumbing import StageModule\n")
    assert layer_violations(fake) == [
        "stage -> stage: prismrl/lightning_modules/a.py:1 imports prismrl.lightning_modules.b",
        "rl -> data: prismrl/rl/math.py:2 imports prismrl.data.records",
    ]
