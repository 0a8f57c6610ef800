"""Registry of unlearning methods: one file each, found by name.

Adding a method = one file in this folder + one line here.
"""

from __future__ import annotations

import importlib

from pipeline.errors import ConfigError

REGISTRY = {
    "original": "pipeline.methods.original:Original",
    "retrain": "pipeline.methods.retrain:Retrain",
    "finetune": "pipeline.methods.finetune:Finetune",
    "neggrad": "pipeline.methods.neggrad:NegGradPlus",
    "randlabel": "pipeline.methods.randlabel:RandomLabels",
    "badteacher": "pipeline.methods.badteacher:BadTeacher",
    "scrub": "pipeline.methods.scrub:Scrub",
    "ssd": "pipeline.methods.ssd:SelectiveSynapticDampening",
    "unsir": "pipeline.methods.unsir:Unsir",
    "salun": "pipeline.methods.salun:SalUn",
    "jit": "pipeline.methods.jit:JiT",
    "npo": "pipeline.methods.npo:NPO",
    "lotus": "pipeline.methods.lotus:LoTUS",
}


def method_class(name: str):
    if name not in REGISTRY:
        raise ConfigError(f"unknown method {name!r}; available: {', '.join(REGISTRY)}")
    module_name, class_name = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def create_method(name: str, config: dict | None = None, seed: int = 0, log=print):
    cls = method_class(name)
    unknown = sorted(set(config or {}) - set(cls.defaults) - set(_base_defaults()))
    if unknown:
        raise ConfigError(f"method {name!r} has no setting(s) {unknown}; known: {sorted({**_base_defaults(), **cls.defaults})}")
    return cls(config, seed=seed, log=log)


def _base_defaults() -> dict:
    from pipeline.methods.base import UnlearningMethod

    return UnlearningMethod.defaults
