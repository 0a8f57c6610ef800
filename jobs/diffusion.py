"""The diffusion family: `unlearn run --family diffusion --method train|retrain|original|safemax|relabel ...`, and the
diffusion benchmark (`unlearn bench --config configs/diffusion-digits.yaml`, any config with `family: diffusion`).

Parses the command line into a DiffusionRun (or a bench config) and calls pipeline/diffusion; the algorithms live
there and in pipeline/methods (safemax.py, diffusion_relabel.py).
"""

from __future__ import annotations

import argparse
import sys

from jobs.common import add_data_flags, add_ray_flags, apply_endpoint, data_spec, ray_resources, run_main
from jobs.paths import absolute, absolute_args, absolute_spec
from pipeline.config import parse_overrides
from pipeline.methods import DIFFUSION_REGISTRY


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unlearn run --family diffusion", description=__doc__)
    p.add_argument("--family", default="diffusion", choices=["diffusion"], help="this command's family")
    add_data_flags(p)
    add_ray_flags(p)
    p.add_argument("--method", required=True,
                   help="train (the original DDPM and the metrics classifier), retrain (the gold DDPM without the "
                        "class), original (evaluate --original as it is), or an unlearning method: "
                        f"{', '.join(DIFFUSION_REGISTRY)}")
    p.add_argument("--forget", default="class:3", help="class:C, the one class to forget (default class:3)")
    p.add_argument("--original", help="the original DDPM checkpoint (OUT/ddpm.pt of --method train)")
    p.add_argument("--classifier", help="the metrics classifier checkpoint (OUT/classifier.pt of --method train)")
    p.add_argument("--seed", type=int, default=3407)
    p.add_argument("--set", action="append", default=[], metavar="GROUP.KEY=VALUE",
                   help="safemax.t_min=500, safemax.retain_weight=1, relabel.lr=1e-3, train.epochs=40, "
                        "unet.widths=[32,64,64], unet.image_size=32 (the CIFAR-size configuration)")
    p.add_argument("--samples-per-class", type=int, default=100, help="samples generated per class for the metrics")
    p.add_argument("--sampling-steps", type=int, default=25, help="DDIM steps per sample")
    p.add_argument("--guidance", type=float, default=2.0, help="classifier-free guidance scale (1: none)")
    p.add_argument("--attack", action="store_true",
                   help="relearning attack: fine-tune on 8 real images of the class, its accuracy after 10/50/100 steps")
    p.add_argument("--inception-weights", help="a local torchvision inception_v3 state dict: adds real FID")
    p.add_argument("--out", required=True, help="run URI: models, checkpoints, result records")
    p.add_argument("--name", help="run name (default METHOD-sSEED); rerunning it resumes")
    p.add_argument("--overwrite", action="store_true",
                   help="start this run afresh even if --out holds a run of the same name with other settings")
    return p


def diffusion_run(args: argparse.Namespace):
    from pipeline.diffusion.driver import DiffusionRun, Evaluation

    evaluation = Evaluation(per_class=args.samples_per_class, steps=args.sampling_steps, guidance=args.guidance,
                            attack=args.attack, inception_weights=args.inception_weights)
    return DiffusionRun(data=data_spec(args), method=args.method, out=args.out, forget=args.forget, seed=args.seed,
                        original=args.original, classifier=args.classifier, settings=parse_overrides(args.set),
                        name=args.name, overwrite=args.overwrite, evaluation=evaluation, ray=ray_resources(args))


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line parsed, its local paths made absolute (the workers run in folders of their own)."""
    return absolute_args(parser().parse_args(argv),
                         paths=("data", "original", "classifier", "out", "inception_weights"))


def main(argv: list[str] | None = None) -> int:
    """`unlearn run --family diffusion ...` (all of its argv, `--family diffusion` included)."""
    from pipeline.diffusion.driver import run_diffusion

    args = arguments(argv)
    apply_endpoint(args)
    run_diffusion(diffusion_run(args))
    return 0


def bench_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unlearn bench (family: diffusion)",
                                description="the diffusion benchmark: original, retrain gold, SAFEMax (t >= t_min and "
                                            "all timesteps), the relabel baseline, the relearning attack, the "
                                            "poster table and the sample grid")
    p.add_argument("--config", required=True, help="a bench config with family: diffusion (YAML, local or s3://)")
    p.add_argument("--out", help="run URI (default: the config's out/<UTC time>)")
    p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE", help="override a config value")
    p.add_argument("--seeds", nargs="+", type=int, help="override the config's seeds")
    p.add_argument("--workers", type=int, help="override ray.workers")
    return p


def is_diffusion_config(config_uri: str) -> bool:
    """Whether a bench config is the diffusion family's (`family: diffusion`)."""
    from pipeline.config import load_yaml

    return load_yaml(config_uri).get("family") == "diffusion"


def absolute_bench_paths(config: dict) -> dict:
    """The diffusion bench config with its local paths absolute: out, data.uri, data.source (imagefolder:PATH) and
    evaluation.inception_weights, which the Ray workers read from folders of their own."""
    config["out"] = absolute(config["out"])
    config["data"]["uri"] = absolute(config["data"]["uri"])
    config["data"]["source"] = absolute_spec(config["data"].get("source"))
    evaluation = config.get("evaluation") or {}
    if evaluation.get("inception_weights"):
        evaluation["inception_weights"] = absolute(evaluation["inception_weights"])
    return config


def bench_main(argv: list[str] | None = None) -> int:
    """`unlearn bench --config CONFIG ...` for a config with `family: diffusion` (the same argv `unlearn bench` got)."""
    from jobs.report import publish
    from pipeline.diffusion.bench import load_bench_config, run_bench

    args, _ = bench_parser().parse_known_args(argv)
    config = absolute_bench_paths(load_bench_config(args.config, args.set, args.seeds, args.workers))
    publish([run_bench(config, absolute(args.out))], title=config.get("name"))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(bench_main if sys.argv[1:2] == ["bench"] else main,
                      sys.argv[2:] if sys.argv[1:2] == ["bench"] else None))
