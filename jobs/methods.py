"""`unlearn methods`: every registered unlearning method, what it does, and its default settings."""

from __future__ import annotations

import argparse
import sys

from jobs.common import run_main
from pipeline.methods import REGISTRY, method_class
from pipeline.methods.base import UnlearningMethod


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="unlearn methods", description=__doc__).parse_args(argv)
    for name in REGISTRY:
        cls = method_class(name)
        settings = {**UnlearningMethod.defaults, **cls.defaults}
        print(f"{name:<11} {cls.summary}")
        print(f"{'':<11} defaults: {', '.join(f'{k}={v}' for k, v in settings.items())}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
