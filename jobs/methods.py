"""`unlearn methods`: every registered unlearning method, what it does, its default settings, what it cannot do
(METHOD_NOTES) and the settings of the shared loop that no paper has (EXTENSIONS)."""

from __future__ import annotations

import argparse
import sys

from jobs.common import run_main
from pipeline.methods import DIFFUSION_REGISTRY, EXTENSIONS, METHOD_NOTES, REGISTRY, create_diffusion_method, method_class


def parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog="unlearn methods", description=__doc__)


def main(argv: list[str] | None = None) -> int:
    parser().parse_args(argv)
    from pipeline.methods.base import UnlearningMethod  # torch: after --help and flag errors, which need none

    for name in REGISTRY:
        cls = method_class(name)
        settings = {**UnlearningMethod.defaults, **cls.defaults}
        print(f"{name:<11} {cls.summary}")
        if name in METHOD_NOTES:
            print(f"{'':<11} note: {METHOD_NOTES[name]}")
        print(f"{'':<11} defaults: {', '.join(f'{k}={v}' for k, v in settings.items())}")
    print("\nDiffusion family (`unlearn run --family diffusion`, class-conditional DDPMs; docs/diffusion.md):")
    for name in DIFFUSION_REGISTRY:
        method = create_diffusion_method(name, log=None)
        print(f"{name}\n{'':<11} {method.summary}" if len(name) > 11 else f"{name:<11} {method.summary}")
        print(f"{'':<11} defaults: {', '.join(f'{k}={v}' for k, v in method.config.items())}")
    print("\nNot in the papers (every record holds the value it ran with):")
    for key, text in EXTENSIONS.items():
        print(f"  {key}: {text}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
