"""Named training recipes: presets of `TrainConfig` keys, one YAML file each in `dytune/recipes/`.

    dytune train --data alpaca.json                      # norm: dyt with the default recipe (DEFAULT_RECIPE)
    dytune train --recipe original-study --data ...      # another one, one word away
    dytune train --recipe none ...                       # no preset: only the keys given and TrainConfig's defaults
    TrainConfig.from_recipe("linear-refit", model=..., data=..., output_dir=...)

Precedence: the recipe < the config file < command-line flags < keyword overrides. A LayerNorm run (`norm:
layernorm`) takes the recipe without its DyT-only keys: the same training is the DyT run's twin.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from dytune.errors import DytuneError

DEFAULT_RECIPE = "recover"  # what `dytune train` does when no recipe is named
NO_RECIPE = "none"


def recipe_names() -> list[str]:
    """The recipes shipped with dytune, by name."""
    folder = resources.files("dytune") / "recipes"
    return sorted(p.name[:-len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def check_recipe(name: str) -> None:
    """A `DytuneError` listing the known recipes unless `name` is one of them or NO_RECIPE."""
    names = recipe_names()
    if name not in (*names, NO_RECIPE):
        raise DytuneError(f"unknown recipe {name!r}: choose from {', '.join(names)} (or {NO_RECIPE})")


def load_recipe(name: str) -> dict[str, Any]:
    """A recipe's settings (TrainConfig keys; none for NO_RECIPE). An unknown name is an error that lists the known
    ones."""
    import yaml

    check_recipe(name)
    if name == NO_RECIPE:
        return {}
    values = yaml.safe_load((resources.files("dytune") / "recipes" / f"{name}.yaml").read_text(encoding="utf-8"))
    if not isinstance(values, dict):
        raise DytuneError(f"recipe {name} is not a mapping of settings: reinstall dytune")
    return values


def with_recipe(values: dict[str, Any]) -> dict[str, Any]:
    """`values` (a config file's keys, flags and overrides, already merged) on top of the recipe they name
    (`recipe:`; DEFAULT_RECIPE when none is named). The result records the recipe's name under `recipe`."""
    from dytune.train.config import DYT_ONLY_KEYS, TrainConfig, valid_keys

    name = values.get("recipe") or DEFAULT_RECIPE
    preset = load_recipe(name)
    unknown = sorted(set(preset) - set(valid_keys()))
    if unknown:
        raise DytuneError(f"recipe {name} sets unknown keys {', '.join(unknown)}: reinstall dytune")
    norm = values.get("norm", preset.get("norm", TrainConfig.norm))
    if norm == "layernorm":  # the twin: the same training without the conversion
        preset = {k: v for k, v in preset.items() if k not in DYT_ONLY_KEYS}
    return {**preset, **values, "recipe": name}
