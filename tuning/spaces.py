"""Search spaces: per-method YAML files plus command-line overrides, turned into Tune spaces or grids.

A space maps each method setting to a constant or to one dimension:

    alpha: {loguniform: [0.5, 64]}   # log-uniform between the bounds
    lr: {uniform: [1.0e-4, 1.0e-3]}  # uniform between the bounds
    msteps: {int: [1, 4]}            # an integer, both bounds included
    optimizer: {choice: [sgd, adam]} # one of the values (`grid` is an alias)
    epochs: 10                       # a constant, passed to every trial

On the command line, `--space lotus.alpha=loguniform:1,16` replaces a dimension
and `--space lotus.epochs=3` (or `--set lotus.epochs=3`) a constant.
"""

from __future__ import annotations

import itertools
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import load_yaml, parse_overrides, parse_value
from pipeline.errors import ConfigError

SPACES_DIR = str(Path(__file__).resolve().parents[1] / "configs" / "sweeps")
RANGE_KINDS = ("loguniform", "uniform", "int")
VALUE_KINDS = ("choice", "grid")
KINDS = RANGE_KINDS + VALUE_KINDS


def is_dimension(value: Any) -> bool:
    """A searched setting is a one-key mapping {kind: arguments}; anything else is a constant."""
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in KINDS


def checked_dimension(key: str, value: Any) -> dict:
    """The dimension with numeric bounds as numbers, or a ConfigError naming the setting."""
    if isinstance(value, dict) and not is_dimension(value):
        raise ConfigError(f"space setting {key!r}: {value!r} is not one of {', '.join(KINDS)} (e.g. "
                          f"{{loguniform: [1e-5, 1e-2]}}); a constant must be a plain value")
    (kind, arguments), = value.items()
    if not isinstance(arguments, (list, tuple)) or not arguments:
        raise ConfigError(f"space setting {key!r}: {kind} needs a list, e.g. {{{kind}: [1, 2]}}")
    if kind in VALUE_KINDS:
        return {"choice": list(arguments)}
    if len(arguments) != 2:
        raise ConfigError(f"space setting {key!r}: {kind} needs [low, high], not {arguments!r}")
    try:
        low, high = (int(a) if kind == "int" else float(a) for a in arguments)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"space setting {key!r}: {kind} bounds must be numbers, not {arguments!r}") from exc
    if not low < high or (kind == "loguniform" and low <= 0):
        raise ConfigError(f"space setting {key!r}: {kind} needs low < high" +
                          (" and low > 0" if kind == "loguniform" else "") + f", not [{low}, {high}]")
    return {kind: [low, high]}


def checked_space(space: dict) -> dict:
    return {key: checked_dimension(key, value) if isinstance(value, dict) else value for key, value in space.items()}


def load_space(method: str, spaces_dir: str | None = None) -> dict:
    """The method's space from SPACES_DIR/<method>.yaml."""
    path = os.path.join(spaces_dir or SPACES_DIR, f"{method}.yaml")
    if not os.path.exists(path):
        raise ConfigError(f"no search space for {method!r}: {path} does not exist "
                          f"(add it, or pick from: {', '.join(available_spaces(spaces_dir))})")
    return checked_space(load_yaml(path))


def available_spaces(spaces_dir: str | None = None) -> list[str]:
    folder = spaces_dir or SPACES_DIR
    return sorted(name[:-5] for name in os.listdir(folder) if name.endswith(".yaml")) if os.path.isdir(folder) else []


def parse_space_overrides(pairs: list[str] | None) -> dict:
    """['lotus.alpha=loguniform:1,16', 'lotus.epochs=3']
    → {'lotus': {'alpha': {'loguniform': [1, 16]}, 'epochs': 3}}."""
    out: dict = {}
    for pair in pairs or []:
        key, sep, text = pair.partition("=")
        method, dot, setting = key.strip().partition(".")
        if not sep or not dot or not method or not setting:
            raise ConfigError(f"bad --space {pair!r}: use METHOD.KEY=KIND:A,B (e.g. lotus.alpha=loguniform:1,16) "
                              "or METHOD.KEY=VALUE")
        kind, colon, arguments = text.strip().partition(":")
        if colon and kind in KINDS:
            value = checked_dimension(setting, {kind: [parse_value(a.strip()) for a in arguments.split(",")]})
        else:
            value = parse_value(text.strip())
        out.setdefault(method, {})[setting] = value
    return out


def method_space(method: str, spaces_dir: str | None, space_pairs: list[str], set_pairs: list[str]) -> dict:
    """The file's space, then --space overrides, then --set constants (later wins)."""
    space = load_space(method, spaces_dir)
    space.update(parse_space_overrides(space_pairs).get(method, {}))
    space.update(parse_overrides(set_pairs).get(method, {}))
    return space


def tuned_keys(space: dict) -> list[str]:
    return [key for key, value in space.items() if is_dimension(value)]


def constants(space: dict) -> dict:
    return {key: value for key, value in space.items() if not is_dimension(value)}


def tune_space(space: dict) -> dict:
    """Tune's param_space: a sampling domain per dimension, constants as they are."""
    from ray import tune

    def domain(dimension: dict):
        (kind, arguments), = dimension.items()
        if kind == "loguniform":
            return tune.loguniform(*arguments)
        if kind == "uniform":
            return tune.uniform(*arguments)
        if kind == "int":
            return tune.randint(arguments[0], arguments[1] + 1)  # randint excludes its upper bound
        return tune.choice(arguments)

    return {key: domain(value) if is_dimension(value) else value for key, value in space.items()}


def _dimension_values(dimension: dict, points: int) -> list:
    """A choice's values, or `points` values of a range: the centres of equal (log-)divisions of it.

    Centres, not ends: search ranges are drawn wide on purpose, so their ends are the least likely settings.
    """
    (kind, arguments), = dimension.items()
    if kind == "choice":
        return list(arguments)
    low, high = arguments
    if kind == "int" and points >= high - low + 1:
        return list(range(low, high + 1))
    fractions = (np.arange(points) + 0.5) / points
    spaced = low * (high / low) ** fractions if kind == "loguniform" else low + (high - low) * fractions
    if kind == "int":
        return sorted({math.floor(value + 0.5) for value in spaced})
    return [float(value) for value in spaced]


def grid_points(space: dict, trials: int) -> list[dict]:
    """Exactly `trials` grid points over the tuned settings (constants are not included).

    Ranges get the fewest values per dimension whose full grid has at least
    `trials` points; a larger grid is thinned to `trials` points spread evenly
    along it, so every method gets the same budget. A grid of choices smaller than
    `trials` is repeated.
    """
    keys = tuned_keys(space)
    if not keys:
        return [{} for _ in range(trials)]
    # Integer ranges can need more values per dimension than `trials` before they stop collapsing.
    widest_int = max((space[key]["int"][1] - space[key]["int"][0] + 1 for key in keys if "int" in space[key]),
                     default=0)
    for per_dimension in range(1, trials + widest_int + 1):
        axes = [_dimension_values(space[key], per_dimension) for key in keys]
        if math.prod(len(axis) for axis in axes) >= trials:
            break
    grid = [dict(zip(keys, values)) for values in itertools.product(*axes)]
    if len(grid) > trials:
        grid = [grid[index] for index in np.linspace(0, len(grid) - 1, trials).round().astype(int)]
    return [grid[index % len(grid)] for index in range(trials)]


def epoch_budget(space: dict, default_epochs: int) -> int:
    """The most epochs any trial may run: the space's epochs (its upper end if searched) or the method's default."""
    epochs = space.get("epochs", default_epochs)
    if is_dimension(epochs):
        (kind, arguments), = epochs.items()
        return int(max(arguments))
    return int(epochs)
