"""The package layout is the architecture: imports only point down the layers (docs/architecture.md)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cifar_jax"
# Higher layers may import lower ones; models and data are siblings that import neither each other nor upwards.
LAYERS = {"main": 8, "cli": 7, "experiments": 6, "job": 5, "core": 4, "models": 3, "data": 3, "checks": 2,
          "config_paths": 1, "errors": 0}


def room(module: str) -> str:
    """The top-level room of a dotted `cifar_jax.x.y` module name (or of a path below the package)."""
    return module.split(".")[1] if module.startswith("cifar_jax.") else module


def imported_rooms(path: Path) -> set[str]:
    """The cifar_jax rooms a source file imports, at module level or inside functions."""
    rooms = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cifar_jax"):
            if node.module == "cifar_jax":
                rooms.update(alias.name for alias in node.names)
            else:
                rooms.add(room(node.module))
        elif isinstance(node, ast.Import):
            rooms.update(room(alias.name) for alias in node.names if alias.name.startswith("cifar_jax."))
    return rooms


def test_every_room_is_known():
    rooms = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
             if (p.suffix == ".py" and p.stem != "__init__") or (p.is_dir() and (p / "__init__.py").exists())}
    assert rooms == set(LAYERS), f"unplaced rooms: {rooms ^ set(LAYERS)}"


def test_imports_only_point_down():
    upward = []
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE)
        own = relative.parts[0] if len(relative.parts) > 1 else relative.stem
        if own == "__init__":
            continue
        for target in imported_rooms(path) - {own}:
            if LAYERS[target] >= LAYERS[own]:
                upward.append(f"{relative} imports {target}")
    assert not upward, upward
