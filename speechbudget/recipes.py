"""The recipes shipped in ``recipes/``: list them, copy one to edit."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Dict, List

import yaml

from .atomic import check_output_file
from .errors import SpeechBudgetError

RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"


def list_recipes() -> List[Dict[str, str]]:
    if not RECIPES_DIR.is_dir():
        raise SpeechBudgetError(
            f"recipes folder {RECIPES_DIR} is missing (install speechbudget from its repository)"
        )
    rows = []
    for p in sorted(RECIPES_DIR.glob("*.yaml")):
        data = yaml.safe_load(p.read_text()) or {}
        rows.append({"name": p.stem, "description": str(data.get("description", "")), "path": str(p)})
    return rows


def recipe_path(name: str) -> Path:
    """A shipped recipe by name; ``fsdd.yaml`` and ``recipes/fsdd.yaml`` (as the docs write it) too."""
    name = Path(name).name.removesuffix(".yaml").removesuffix(".yml")
    p = RECIPES_DIR / f"{name}.yaml"
    if not p.is_file():
        raise SpeechBudgetError(
            f"no recipe named {name!r}; known: {', '.join(r['name'] for r in list_recipes())}"
        )
    return p


def copy_recipe(name: str, dest: Path) -> Path:
    src = recipe_path(name)
    dest = Path(dest)
    target = dest if dest.suffix in (".yaml", ".yml") else dest / src.name
    if target.exists():
        raise SpeechBudgetError(f"{target} exists already; choose another destination")
    check_output_file(target, "recipe copy")
    shutil.copy(src, target)
    return target
