"""Registry of unlearning methods: one file each, found by name.

Adding a method = one file in this folder + one line here.
"""

from __future__ import annotations

import importlib
import numbers

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

# What someone choosing a method must know and its defaults do not say: shown by `unlearn methods` and under every
# report table that holds the method. Plain strings, so the report needs no torch to read them.
METHOD_NOTES = {
    "jit": "does not forget memorised samples on digits-hard (property of the published method)",
}

# Settings of the shared loop that no paper has: `unlearn methods` prints them, docs/methods.md gives the figures.
EXTENSIONS = {
    "batchnorm_refresh_batches": (
        "after every epoch, re-estimate BatchNorm's running statistics from up to this many batches of the "
        "method's training set (default 50; retrain 0; jit carries the original's statistics over by the change "
        "its D_f batches show). LoTUS on digits-hard with it: 10 epochs, test -0.09..-0.07 at random 10 %; "
        "without it: early stop after 2 epochs at test 0.27-0.41 (docs/methods.md). 0 = the papers' exact loop"),
    "lotus.channels_last": (
        "run the model and the teacher in channels_last memory format (default true; the caller's model comes back "
        "in its own layout): about half LoTUS's step time on CPU, the same Avg Gap and RF-JSD on digits-hard "
        "(docs/performance.md)"),
    "lotus.batchnorm_refresh_from": (
        "\"pass\" (default): the refresh above is an extra pass after each epoch; \"steps\": the epoch's own "
        "training forwards are averaged instead (no extra pass, one process only), measured faster but with a worse "
        "RF-JSD on digits-hard"),
    "scrub.class_lr": (
        "the learning rate SCRUB uses when whole classes are forgotten (default 1e-3; the paper has one lr, and "
        "5e-3, which forgets a random 10 % here, collapsed a forgotten class)"),
}


def check_method_name(name: str) -> None:
    """A name the registry knows; checked from the names alone, so a typo is reported before torch loads."""
    if name not in REGISTRY:
        raise ConfigError(f"unknown method {name!r}; available: {', '.join(REGISTRY)}")


def method_class(name: str):
    check_method_name(name)
    module_name, class_name = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def create_method(name: str, config: dict | None = None, seed: int = 0, log=print):
    cls = method_class(name)
    unknown = sorted(set(config or {}) - set(cls.defaults) - set(_base_defaults()))
    if unknown:
        raise ConfigError(f"method {name!r} has no setting(s) {unknown}; known: {sorted({**_base_defaults(), **cls.defaults})}")
    for key, value in (config or {}).items():
        _check_type(name, key, value, {**_base_defaults(), **cls.defaults}[key])
    return cls(config, seed=seed, log=log)


def _check_type(method: str, key: str, value, default) -> None:
    """A setting must have its default's kind, so a typo fails here and not inside a Ray worker minutes later.

    Numbers may come as strings that parse (YAML reads 1e-4 as a string); None defaults take anything.
    """
    if default is None or value is None:
        return
    if isinstance(default, bool):
        fits = isinstance(value, bool)
    elif isinstance(default, numbers.Real):
        fits = isinstance(value, numbers.Real) and not isinstance(value, bool) or _parses_as_number(value)
    else:
        fits = isinstance(value, type(default))
    if not fits:
        kind = "true or false" if isinstance(default, bool) else "a number" if isinstance(default, numbers.Real) \
            else type(default).__name__
        raise ConfigError(f"{method}.{key}={value!r} is not {kind} (its default is {default!r})")


def _parses_as_number(value) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return isinstance(value, str)


def _base_defaults() -> dict:
    from pipeline.methods.base import UnlearningMethod

    return UnlearningMethod.defaults


# ---- diffusion family (issue 22): class unlearning for class-conditional DDPMs (pipeline/models/diffusion.py) --
# A separate registry: these methods train a denoiser, not a classifier, and run through the diffusion loop
# (pipeline/train/diffusion_loop.py); `unlearn run --family diffusion --method NAME` picks from it. Their shared
# loss and batches are in diffusion_base.py.
DIFFUSION_REGISTRY = {
    "safemax": "pipeline.methods.safemax:SAFEMax",  # as published: exp(-λt/T) over all t, target ε_T
    "safemax-cutoff": "pipeline.methods.safemax_cutoff:SAFEMaxCutoff",  # the project's first: t >= t_min, max entropy
    "relabel": "pipeline.methods.diffusion_relabel:DiffusionRelabel",
}


def create_diffusion_method(name: str, config: dict | None = None, seed: int = 0, log=print):
    """A diffusion-family method by name, its settings checked as `create_method` checks a classifier method's."""
    if name not in DIFFUSION_REGISTRY:
        raise ConfigError(f"unknown method {name!r} for the diffusion family; available: {', '.join(DIFFUSION_REGISTRY)}")
    module_name, class_name = DIFFUSION_REGISTRY[name].split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    known = {**_base_defaults(), **cls.defaults}
    unknown = sorted(set(config or {}) - set(known))
    if unknown:
        raise ConfigError(f"method {name!r} has no setting(s) {unknown}; known: {sorted(known)}")
    for key, value in (config or {}).items():
        if key not in getattr(cls, "untyped_settings", ()):  # those the method's own check() validates
            _check_type(name, key, value, known[key])
    return cls(config, seed=seed, log=log)
