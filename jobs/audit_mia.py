"""`unlearn audit-mia`: audit one unlearned model with U-LiRA, the per-example likelihood-ratio membership attack.

K shadow models, each trained with the dataset's recipe on a seeded random half of train ∪ val, are kept in a
shadow bank (--bank, local or s3://) and reused by every later audit of the same data, recipe and model; each
audit then makes every shadow unlearn its part of the audited samples with --method and its settings, as the
target was. Per audited sample, Gaussians fitted to the "unlearned" and "never seen" shadow scores turn the
target's score into a likelihood ratio (online), or a one-sided deviation from "never seen" (offline: no
unlearning in the shadows, cheaper, blind to over-unlearning). The figures (AUC, TPR at low FPR, balanced
accuracy, 95 % bootstrap intervals) compare the target's D_f with as many never-seen val samples; the entropy MIA
of `unlearn run` is printed beside them, and the shadow trials (each shadow audited by the others) give the
method's TPR at low FPR. With --original and --gold, the sanity anchors: the bank must find the original's D_f
above never-seen data and the attack must not find a model retrained without D_f attackable; otherwise the output
says the figures must not be trusted.

Prints the figures and writes them to OUT/ulira.json, every shadow score to OUT/ulira-scores.npz (atomically).
With --mlflow, the audit is also one MLflow run (experiment = the dataset, tag kind=audit-mia): the figures as
metrics (the bench's ulira_* names, the entropy MIA, the anchors' AUCs), the settings as params, both files as
artifacts.
"""

from __future__ import annotations

import argparse
import os
import sys

from jobs.common import add_mlflow_flag, check_mlflow, track
from jobs.paths import absolute, absolute_spec
from pipeline import storage
from pipeline.config import parse_overrides
from pipeline.errors import ConfigError
from pipeline.methods import REGISTRY
from pipeline.metrics.ulira import BOOTSTRAP_RESAMPLES, DEFAULT_FPRS, VARIANTS
from pipeline.train.console import VERBOSE_ENV
from pipeline.train.ray_address import add_address_flag, use_address


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unlearn audit-mia", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="shard dataset URI (local path or s3://bucket/prefix)")
    p.add_argument("--s3-endpoint", help="S3-compatible endpoint URL (default: $AWS_ENDPOINT_URL)")
    p.add_argument("--no-verify", action="store_true", help="skip sha256 verification of the shards")
    p.add_argument("--model", required=True, help="the unlearned model to audit (checkpoint, local or s3://)")
    p.add_argument("--forget", default="random:0.1", help="the forget set it unlearned: random:F | ids:FILE")
    p.add_argument("--seed", type=int, default=3407,
                   help="seed of the forget spec (as the target's run), of the never-seen samples, the shadows' "
                        "forget sets and the bootstrap")
    p.add_argument("--method", required=True, help=f"the method that unlearned it: {', '.join(REGISTRY)}")
    p.add_argument("--set", action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help="the method's settings as the target was unlearned with them, e.g. --set lotus.alpha=8")
    p.add_argument("--recipe", action="append", default=[], metavar="KEY=VALUE",
                   help="the training recipe of the original (the `retrain` settings `unlearn train` used), e.g. "
                        "--recipe epochs=15; shadows train with it")
    p.add_argument("--shadows", type=int, default=16, help="K, shadow models (even: complementary halves)")
    p.add_argument("--bank", required=True, help="shadow bank URI (local or s3://): built on first use, then reused")
    p.add_argument("--bank-seed", type=int, default=0, help="seed of the shadows' halves (fixed per bank)")
    p.add_argument("--variant", choices=VARIANTS, default="online",
                   help="online (default): unlearned and never-seen shadows, two-sided; offline: never-seen only")
    p.add_argument("--original", help="sanity anchor: the original model (must be attackable)")
    p.add_argument("--gold", help="sanity anchor: a model retrained without D_f (must not be attackable)")
    p.add_argument("--fpr", type=float, nargs="+", default=list(DEFAULT_FPRS),
                   help="false-positive rates for the TPR figures (default: 0.01 0.001)")
    p.add_argument("--resamples", type=int, default=BOOTSTRAP_RESAMPLES, help="bootstrap resamples per interval")
    p.add_argument("--cpus-per-shadow", type=float, default=1.0, help="CPUs (and torch threads) per shadow task")
    p.add_argument("--gpus", action="store_true", help="one GPU per shadow task")
    p.add_argument("--parallel", type=int, help="shadow tasks at once (default: as many as the cluster holds)")
    p.add_argument("--max-failures", type=int, default=1,
                   help="retries of a shadow task whose worker or node was lost, or whose storage kept failing")
    p.add_argument("--out", required=True, help="folder (or s3:// prefix) for ulira.json")
    p.add_argument("--verbose", action="store_true", help="also show Ray's own lines")
    add_address_flag(p)
    add_mlflow_flag(p)
    return p


def method_settings_from(method: str, pairs: list[str]) -> dict:
    if method not in REGISTRY:
        raise ConfigError(f"unknown method {method!r}; available: {', '.join(REGISTRY)}")
    overrides = parse_overrides(pairs)
    unknown = sorted(set(overrides) - {method})
    if unknown:
        raise ConfigError(f"--set names method(s) {unknown} but the audited method is {method!r}")
    return overrides.get(method, {})


def recipe_from(pairs: list[str]) -> dict:
    return parse_overrides([f"retrain.{pair}" for pair in pairs]).get("retrain", {})


def audit_spec(args: argparse.Namespace):
    """The command line as an AuditSpec (imports the run layer: torch)."""
    from pipeline.runs.audit_mia import AuditSpec
    from pipeline.runs.shadows import TaskResources
    from pipeline.runs.spec import DataSpec

    return AuditSpec(data=DataSpec(uri=absolute(args.data), verify=not args.no_verify, s3_endpoint=args.s3_endpoint),
                     model=absolute(args.model), forget=absolute_spec(args.forget), method=args.method,
                     bank=absolute(args.bank), out=absolute(args.out), shadows=args.shadows, variant=args.variant,
                     settings=method_settings_from(args.method, args.set), recipe=recipe_from(args.recipe),
                     seed=args.seed, bank_seed=args.bank_seed, original=absolute(args.original),
                     gold=absolute(args.gold), fprs=tuple(args.fpr), resamples=args.resamples,
                     resources=TaskResources(args.cpus_per_shadow, args.gpus, args.max_failures),
                     parallel=args.parallel)


def check_flags(args: argparse.Namespace) -> None:
    """What the flags alone can refuse, before the run layer or Ray are imported (and MLflow: only its presence
    is checked here)."""
    from pipeline.metrics.ulira import check_even_shadows, check_fpr

    method_settings_from(args.method, args.set)
    recipe_from(args.recipe)
    for fpr in args.fpr:
        check_fpr(fpr)
    check_even_shadows(args.shadows)
    check_mlflow(args.mlflow, absolute(args.out))


def audit_record(result: dict):
    """The audit as a result record, for MLflow only (the audit's own file is ulira.json): kind "eval" (it
    evaluates a model; the MLflow tag says audit-mia), the bench's ulira_* metrics, the entropy MIA beside them,
    each sanity anchor's AUC and whether it passed, the seconds of bank training and of the audit's tasks."""
    from pipeline.results.records import ResultRecord, new_run_id
    from pipeline.runs.audit_mia import record_metrics

    anchors = {f"ulira_{role}_{key}": value for role, anchor in result["anchors"].items()
               for key, value in (("auc", anchor["auc"]["value"]), ("passed", float(anchor["passed"])))}
    metrics = {**record_metrics(result), **anchors, "mia": result["entropy_mia"]["mia"],
               "mia_unseen": result["entropy_mia"]["mia_unseen"]}
    bank, seconds = result["bank"], result["seconds"]
    config = {"u_lira": {"variant": result["variant"], "shadows": bank["shadows_requested"], "bank": bank["uri"],
                         "trained_now": len(bank["trained_now"]), "fprs": result["fprs"],
                         "original": result["original"], "gold": result["gold"], "data": result["data"]},
              result["method"]: result["settings"], "retrain": result["recipe"]}
    return ResultRecord(run_id=new_run_id("audit-mia", result["method"], result["seed"]), kind="eval",
                        method=result["method"], dataset=result["dataset"], model=result["model_name"],
                        seed=result["seed"], forget_spec=result["forget"], config=config, metrics=metrics,
                        phases={"total": seconds["total"], "shadow_training": seconds["shadow_training"],
                                "audit_tasks": seconds["audit_tasks"]},
                        checkpoint_uri=result["model"], notes="U-LiRA audit (unlearn audit-mia)")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    check_flags(args)
    if args.s3_endpoint:  # before Ray starts, so every Ray process inherits them
        os.environ[storage.ENDPOINT_ENV] = args.s3_endpoint
    if args.verbose:
        os.environ[VERBOSE_ENV] = "1"
    use_address(args.address)
    from pipeline.runs.audit_mia import RESULT_FILE, SCORES_FILE, audit

    spec = audit_spec(args)
    result = audit(spec)
    track(args.mlflow, spec.out, [audit_record(result)],
          [storage.join(spec.out, RESULT_FILE), storage.join(spec.out, SCORES_FILE)], tags={"kind": "audit-mia"})
    return 0


if __name__ == "__main__":
    from jobs.common import run_main

    sys.exit(run_main(main))
