"""Configs are data: YAML files, `--set key.sub=value` overrides, merged into plain dicts stored with every result."""

from __future__ import annotations

from typing import Any

import yaml

from pipeline import storage
from pipeline.errors import ConfigError


def load_yaml(uri: str) -> dict:
    try:
        body = yaml.safe_load(storage.read_text(uri)) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{uri} is not valid YAML: {exc}") from exc
    if not isinstance(body, dict):
        raise ConfigError(f"{uri} must hold a mapping at the top level")
    return body


def parse_value(text: str) -> Any:
    """YAML scalars: `2` → int, `1e-4` → float, `true` → bool, anything else stays a string."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads `1e-4` (no dot) as a string
        except ValueError:
            return value
    return value


def typed_values(values: dict) -> dict:
    """A YAML mapping's string values re-parsed as scalars: YAML 1.1 reads `1e-6` (no dot) as a string."""
    return {key: parse_value(value) if isinstance(value, str) else value for key, value in values.items()}


def parse_overrides(pairs: list[str] | None) -> dict:
    """['lotus.alpha=2', 'lotus.lr=1e-4'] → {'lotus': {'alpha': 2, 'lr': 0.0001}}."""
    out: dict = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"bad --set {pair!r}: use name.key=value, e.g. lotus.alpha=2")
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"bad --set {pair!r}: {part!r} is both a value and a section")
        node[parts[-1]] = parse_value(value.strip())
    return out


def deep_merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = deep_merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) \
            else value
    return merged
