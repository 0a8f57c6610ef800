"""Accuracy, MIA, JSD, RF-JSD and Avg Gap from one batched pass per model per split.

Metrics know nothing about methods or Ray: they consume logits and labels and
reduce across workers through `pipeline.distributed`.

    result = evaluate({"unlearned": model, "original": original, "gold": retrained}, sources, device, num_classes)
    record_metrics = summarize(result, seed)
"""

import sys
import types

# Names are loaded from their submodule on first use (PEP 562): `from pipeline.metrics import ulira`, which the
# deletion gate and the command line's flag checks need, must not pull in torch through `accumulate`.
_SOURCES = {
    "PairStats": "accumulate", "SplitStats": "accumulate", "sample_keys": "accumulate", "softmax_entropy": "accumulate",
    "RetrainFreeJsd": "divergence", "js_divergence": "divergence", "kl_divergence": "divergence",
    "retrain_free_jsd": "divergence",
    "EvalPlan": "evaluate", "EvalResult": "evaluate", "default_plan": "evaluate", "evaluate": "evaluate",
    "mia_member_rate": "mia",
    "avg_gap": "summary", "model_metrics": "summary", "summarize": "summary",
}

__all__ = sorted(_SOURCES)


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value) -> None:
        # Importing a submodule binds it to its name here; `evaluate` names both a submodule and the function this
        # package exports, and the function must win whichever is imported first (as when this file was eager).
        if name in _SOURCES and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str):
    if name not in _SOURCES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{_SOURCES[name]}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value
