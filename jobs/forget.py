"""`unlearn forget`: honour a deletion request against a production model.

Validates the request before any compute (the operator's id key given, the chain intact and matching its
anchor, every id a training sample, none forgotten by an earlier request of this model's chain, the model file
the one the chain or its training record vouches for, the store refusing a second create of one record),
unlearns through Ray exactly as `unlearn run` does (D_u = the val split), then gates the result without a
retrained model (pipeline/deletion/gate.py): the requested samples must be indistinguishable from never-seen
samples of the same classes, neither more nor less member-like (two-sided tests of accuracy and confidence, and
with a U-LiRA shadow bank, --bank, of each sample's score against shadows that never saw it), and retain and test
accuracy must hold. A check counts only if it tells the input model, which trained on the samples, from never
seen; where none can (too few ids, no bank) the request is NOT VERIFIABLE, never accepted.

The new model goes to a new URI under --out (the input is never touched): models/ when accepted, rejected/ when
rejected, unverified/ when not verifiable (kept, not released). An accepted request also removes its samples
from the dataset (a new version at the same URI, pipeline/data/removal.py), so no later job trains on them.
Each request appends a record to the model's audit chain, its head to the anchor, and writes a one-page HTML
receipt. Exits 0 when accepted, 1 when rejected, 3 when not verifiable: nothing changed then (the model given
stays current, the samples stay in the data); ask again with --bank, or as part of a larger request.

The forgotten ids are kept only as HMACs under the operator's secret: set UNLEARN_ID_KEY_FILE (a file or s3://
object holding it) or UNLEARN_ID_KEY; after a rotation, UNLEARN_ID_KEY_PREVIOUS_FILE holds the earlier secret(s).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import posixpath
import sys
import uuid

from jobs.common import (add_data_flags, add_floor_flag, add_mlflow_flag, add_ray_flags, apply_endpoint, check_mlflow,
                         data_spec, method_overrides, ray_resources, run_main, track)
from jobs.paths import absolute, absolute_args
from pipeline import storage
from pipeline.data import removal
from pipeline.data.id_lists import check_training_ids, read_sample_ids
from pipeline.data.shards import read_index, read_meta
from pipeline.data.splits import build_splits
from pipeline.deletion.chain import (ACCEPTED, FORGOTTEN_DIR, MODELS_DIR, RECEIPTS_DIR, REJECTED, REJECTED_DIR,
                                     RUNS_DIR, SCHEMA_ID, ChainState, NotRecorded, anchor_record, chain_state,
                                     check_store, dataset_problems, file_sha256, location, publish_record, read_chain,
                                     repeated_ids, sha256_hex)
from pipeline.deletion.evidence import BankUse, choose_reference, gather_evidence
from pipeline.deletion.gate import (FORGETTING, NOT_VERIFIABLE, GateThresholds, failed_checks, gate_checks,
                                    unverifiable_reason, verdict_of)
from pipeline.deletion.keys import ALGORITHM, keyring
from pipeline.deletion.receipt import render_receipt
from pipeline.errors import ConfigError, DataError
from pipeline.methods import REGISTRY, check_method_name, create_method
from pipeline.results.records import RECORDS_DIR, load_records, utc_now_iso
from pipeline.runs.common import Phases, check_output_uri, versions
from pipeline.runs.spec import SAFE_NAME, MethodRun, RunSpec
from pipeline.train.console import log

METRICS_KEPT = ("acc_forget", "acc_retain", "acc_test", "acc_unseen", "mia", "mia_unseen", "rf_jsd", "rf_jsd_e4",
                "rf_jsd_floor_e4", "rf_jsd_floor_std_e4", "confidence_forget", "confidence_retain",
                "confidence_test", "confidence_unseen")
# A request's D_f is tiny next to D_r, so LoTUS's benchmark subset (30 % of D_r, chosen for 10 % forget sets) is
# nearly all the model trains on and it drifts toward it: on digits-hard, 30-sample requests lost 0.05-0.07 test
# accuracy with it (lr 5e-5, 3 epochs or no BatchNorm refresh did not help) and 0.02-0.05 with all of D_r, in 5
# epochs as in 10 (docs/deletion.md, "LoTUS's request settings"). --set overrides these.
REQUEST_SETTINGS = {"lotus": {"retain_fraction": 1.0, "epochs": 5}}
UNVERIFIED_DIR = "unverified"  # the model of a not-verifiable request: kept, never the chain's current model


def parser() -> argparse.ArgumentParser:
    defaults = GateThresholds()
    p = argparse.ArgumentParser(prog="unlearn forget", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_flags(p)
    add_ray_flags(p)
    p.add_argument("--model", required=True, help="the production model's checkpoint (local or s3://); never changed")
    p.add_argument("--ids", required=True, help="the ids to forget: a text file (one per line), a .csv or .parquet")
    p.add_argument("--id-column", help="the ids' column in a .csv file (its header line must name it) or a .parquet "
                                       "file (default: sample_id; a .parquet file's only column)")
    p.add_argument("--allow-missing", action="store_true",
                   help="forget the listed ids that are training samples and record how many were not, "
                        "instead of refusing the request")
    p.add_argument("--out", required=True,
                   help="the model's audit chain (local or s3://): the same URI for every request on this model")
    p.add_argument("--request-id", help="this request's name, e.g. a ticket number (default: req-TIME-RANDOM)")
    p.add_argument("--anchor", metavar="URI",
                   help="where each request appends the chain's new head, out of reach of whoever can rewrite the "
                        "chain: a local append-only file (chattr +a) or an s3:// prefix in a bucket with Object Lock. "
                        "The chain is checked against it first; `unlearn audit --anchor` checks it later")
    p.add_argument("--allow-unconditional-store", action="store_true",
                   help="go on although the chain's store ignores create-once writes (If-None-Match / O_EXCL): two "
                        "racing requests are then caught only by a read-back and the anchor. Not recommended")
    p.add_argument("--model-sha256", help="first request only, for a model without an `unlearn train` record beside "
                                          "it: the sha256 your model registry holds for it")
    p.add_argument("--method", default="lotus", help=f"one of: {', '.join(REGISTRY)} (default: lotus)")
    p.add_argument("--set", action="append", default=[], metavar="METHOD.KEY=VALUE", help="method settings")
    p.add_argument("--seed", type=int, default=3407)
    p.add_argument("--alpha", type=float, default=defaults.alpha,
                   help="gate: the chance that a model which never saw the samples is rejected by the forgetting "
                        f"checks, split evenly between them (default {defaults.alpha:g})")
    p.add_argument("--max-acc-drop", type=float, default=defaults.max_acc_drop,
                   help=f"gate: retain and test accuracy may fall this far below the input model's "
                        f"(default {defaults.max_acc_drop:g})")
    p.add_argument("--acc-drop-per-share", type=float, default=defaults.acc_drop_per_share,
                   help="gate: test accuracy may fall this much more per share of the training set the request "
                        f"removes (default {defaults.acc_drop_per_share:g}: 0.3 x 0.1 = 0.03 more for a tenth)")
    p.add_argument("--bank", metavar="URI",
                   help="a U-LiRA shadow bank for this data and the model's training recipe (`unlearn audit-mia "
                        "--bank`, local or s3://): the gate then judges every requested sample against shadows that "
                        "never saw it, the only check with power for one or a few ids. Shadows it lacks are trained "
                        "first (K trainings, once per data version)")
    p.add_argument("--shadows", type=int, default=16, help="with --bank: shadows to use (even; default 16)")
    p.add_argument("--bank-seed", type=int, default=0, help="with --bank: the seed of the shadows' halves")
    p.add_argument("--recipe", action="append", default=[], metavar="KEY=VALUE",
                   help="with --bank: the training recipe of the production model, as `unlearn train` used it "
                        "(the `retrain` settings, e.g. --recipe epochs=15); the bank must have been built with it")
    add_floor_flag(p)
    add_mlflow_flag(p)
    return p


EXIT_CODES = {ACCEPTED: 0, REJECTED: 1, NOT_VERIFIABLE: 3}  # 2: a refused request (error: ...), 75: storage down


def main(argv: list[str] | None = None) -> int:
    record = forget(absolute_paths(parser().parse_args(argv)))
    return EXIT_CODES[record["verdict"]]


def absolute_paths(args: argparse.Namespace) -> argparse.Namespace:
    """Every local path typed, made absolute once: the workers run elsewhere, and the chain and the dataset name
    each other by URI (a relative path would name another place from another folder)."""
    return absolute_args(args, paths=("data", "model", "ids", "out", "anchor", "bank"))


def thresholds_of(args) -> GateThresholds:
    thresholds = GateThresholds(alpha=args.alpha, max_acc_drop=args.max_acc_drop,
                                acc_drop_per_share=args.acc_drop_per_share)
    thresholds.check()
    return thresholds


def request_bank(args, meta) -> BankUse | None:
    """The shadow bank the gate scores with, checked against this data, recipe and model before any compute."""
    from jobs.audit_mia import recipe_from
    from pipeline.metrics.ulira import check_even_shadows
    from pipeline.models import load_checkpoint
    from pipeline.runs.shadows import bank_manifest, open_bank
    from pipeline.runs.train import training_recipe

    if not args.bank:
        if args.recipe:
            raise ConfigError("--recipe describes the shadow bank's training: it needs --bank")
        return None
    check_even_shadows(args.shadows)
    recipe = training_recipe(recipe_from(args.recipe))
    create_method("retrain", recipe, log=None)  # an unknown recipe key: ConfigError before anything runs
    spec = dataclasses.asdict(load_checkpoint(args.model)[1])
    return BankUse(open_bank(args.bank, bank_manifest(meta, recipe, spec, args.bank_seed)), args.shadows)


def forget(args: argparse.Namespace) -> dict:
    """Run one deletion request end to end; return its audit record (stored, with its receipt)."""
    apply_endpoint(args)
    check_flags(args)
    thresholds = thresholds_of(args)
    key, keys = keyring()  # no secret, no request: its tombstones could not be written
    phases = Phases()
    request_id = args.request_id or f"req-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    check_new_request_id(args.out, request_id)
    state = chain_state(args.out, args.anchor)
    anchor = chosen_anchor(args.anchor, state)
    settle_dataset(args.out, args.data, state)
    model = trusted_input_model(args, state)
    version_before = sha256_hex(removal.meta_bytes(args.data))
    meta = read_meta(args.data)
    index = read_index(args.data, meta)
    requested = read_sample_ids(args.ids, args.id_column)
    # Before the index check: an id an earlier request forgot is no longer in the dataset, and "unknown" would hide why.
    refuse_repeated(args.ids, sorted(set(requested)), state, keys)
    refuse_returned(args.data, index, state, keys)
    checked = check_training_ids(index, requested)
    problem = checked.problem(f"deletion request {args.ids}")
    if problem and not args.allow_missing:
        raise DataError(f"{problem}. Nothing was changed; --allow-missing forgets the listed training samples only")
    if not checked.train:
        raise DataError(f"deletion request {args.ids} names no training sample of {args.data}: nothing to forget")
    splits = build_splits(index, f"request:{request_id}", args.seed, checked.train)
    bank = request_bank(args, meta)
    reference = choose_reference(index, checked.train, args.seed)
    conditional = check_store(args.out, args.allow_unconditional_store)
    if not anchor:
        log("WARNING: no --anchor: this request's head is kept only in the chain, so removing the last records or "
            "re-sealing the chain after an edit would go unnoticed unless you keep the head sha256 printed at the end "
            "and audit with --expect-head")
    phases.lap("validate")
    log(f"request {request_id}: {len(checked.train)} training sample(s) to forget from {model['uri']} "
        f"(validated in {phases.seconds['validate']:.2f} s)")

    # The run's code loads torch and Ray (seconds): only once the flags and the request have been checked.
    from pipeline.runs.unlearn import method_settings, unlearn

    output_uri = location(args.out, MODELS_DIR, request_id, ".pt")
    before, after = unlearn(request_run(args, model["uri"], request_id, output_uri), splits=splits)
    phases.lap("unlearn")

    counts = dict(splits.counts)
    verdict, reason, gate = judge(args, meta, index, checked.train, reference, model["uri"], output_uri, (before, after),
                                  thresholds, bank, counts["forget"] / (counts["forget"] + counts["retain"]))
    phases.lap("gate")
    passed = verdict == ACCEPTED
    output = place_output(args.out, request_id, after, verdict)
    forgotten = record_forgotten(args.out, request_id, key.tombstones(checked.train)) if passed else None
    # The next version of the dataset, without the samples: written now, installed once the record is stored.
    removed = removal.plan_removal(args.data, checked.train, args.out, request_id, version_before) if passed else None
    record = {
        "schema": SCHEMA_ID, "sequence": state.next_sequence, "request_id": request_id, "created": utc_now_iso(),
        "verdict": verdict, "reason": reason,
        "request": {"ids_file": args.ids, "ids_count": len(checked.train), "ids_hmac": key.list_digest(checked.train),
                    "lines": len(requested), "duplicates": checked.duplicates, "missing": len(checked.missing),
                    "allow_missing": args.allow_missing},
        "input_model": model, "output_model": output, "forgotten_ids": forgotten,
        "id_key": {"algorithm": ALGORITHM, "version": key.version}, "store": {"conditional_create": conditional},
        "anchor": anchor,
        "data": {"uri": args.data, "dataset": meta.name, "counts": dict(splits.counts),
                 "version_before": version_before, "version_after": removed.version_after if removed else None,
                 "rows_removed": removed.rows_removed if removed else 0},
        # Resolved here, not read from the run's config: there the key "original" names the original model's URI.
        "method": {"name": args.method, "settings": method_settings(args.method, request_settings(args)),
                   "seed": args.seed,
                   "workers": args.workers, "gpus": after.gpus, "epochs_run": after.config.get("epochs_run")},
        "metrics": {"input": _kept(before.metrics), "output": _kept(after.metrics) if after.status == "ok" else None},
        "gate": gate,
        "phases": {"validate": phases.seconds["validate"], **_fit_phases(after), "gate": phases.seconds["gate"],
                   "total": phases.total()["total"]},
        "versions": versions(), "run_records": [before.run_id, after.run_id],
        "previous_record_sha256": state.previous_sha256,
    }
    record_uri = store_request(args.out, record, removed, anchor)
    receipt_uri = write_receipt(args.out, record_uri)
    report(record, record_uri, receipt_uri)
    track(args.mlflow, args.out, [before, after], [record_uri, receipt_uri], tags={"request_id": request_id, "verdict": record["verdict"]})
    return record


def judge(args, meta, index, request_ids, reference: tuple, input_uri: str, output_uri: str, runs, thresholds,
          bank: BankUse | None, removed_share: float) -> tuple[str, str | None, dict]:
    """(verdict, reason, the record's `gate`): the forgetting checks on the input and the unlearned model's
    per-sample figures, and the utility checks on their Ray evaluation (`runs`: the two records;
    `removed_share`: the request's share of the training set)."""
    before, after = runs
    gate = {"passed": False, "verdict": REJECTED, "thresholds": thresholds.as_dict(), "checks": [],
            "reference": {"split": "val", "samples": len(reference)}, "bank": None}
    if after.status != "ok":
        return REJECTED, after.error, gate
    evidence, bank_summary = request_evidence(args, meta, index, request_ids, reference, input_uri, output_uri, bank)
    checks = gate_checks(evidence, before.metrics, after.metrics, thresholds, args.seed, removed_share)
    verdict = verdict_of(checks)
    reason = {ACCEPTED: None, REJECTED: "; ".join(failed_checks(checks)),
              NOT_VERIFIABLE: unverifiable_reason(checks)}[verdict]
    return verdict, reason, {**gate, "passed": verdict == ACCEPTED, "verdict": verdict, "checks": checks,
                             "bank": bank_summary}


def request_evidence(args, meta, index, request_ids, reference: tuple, input_uri: str, output_uri: str,
                     bank: BankUse | None):
    """The gate's per-sample figures, scored as Ray tasks on the request and its never-seen reference."""
    import numpy as np

    from pipeline.models import load_checkpoint
    from pipeline.runs.shadows import DataAccess, TaskResources

    ids = tuple(request_ids) + tuple(reference)
    label_of = dict(zip(index.column("sample_id").to_pylist(), index.column("label").to_pylist()))
    access = DataAccess(args.data, meta, load_checkpoint(output_uri)[1].image_size)
    resources = TaskResources(args.cpus_per_worker, args.gpus, args.max_failures)
    return gather_evidence(access, ids, np.array([label_of[i] for i in ids]), np.arange(len(ids)) < len(request_ids),
                           input_uri, output_uri, bank, resources)


def store_request(chain_uri: str, record: dict, removed: removal.Removal | None, anchor: str | None) -> str:
    """Record the request, then make what it recorded true: the dataset version without its samples installed,
    its head anchored. Recording comes first, so a request that loses the race for its number changes no data
    (the shards it wrote are deleted); one that stops after it is completed by the next request."""
    try:
        record_uri = publish_record(chain_uri, record)
    except NotRecorded:
        if removed:
            removal.discard(removed)
        raise
    if removed:
        removal.install(removed.data_uri, removed.version_before, removed.version_after)
    if anchor:
        anchor_record(chain_uri, record, record_uri, anchor)
    return record_uri


def chosen_anchor(anchor: str | None, state: ChainState) -> str | None:
    """The anchor this request appends to (None: not anchored, warned before the compute). A chain anchored so far
    stays anchored at the same place: a request without it would leave a head nobody can check."""
    if state.anchor and anchor != state.anchor:
        raise ConfigError(f"this chain is anchored at {state.anchor} (its last record says so): give --anchor "
                          f"{state.anchor}" + (f", not {anchor}" if anchor else ""))
    return anchor


def settle_dataset(chain_uri: str, data_uri: str, state: ChainState) -> None:
    """The dataset must still be without every sample this chain's accepted requests removed. A removal that was
    recorded but not installed (a request stopped in between) is installed now."""
    if not state.removals:
        return
    last = state.removals[-1]
    if data_uri != last["uri"]:
        raise ConfigError(f"this chain removes forgotten samples from {last['uri']} (request {last['request_id']}); "
                          f"--data names {data_uri}: a chain's requests all use the dataset it removed them from")
    current = sha256_hex(removal.meta_bytes(data_uri))
    if current in (last["version_before"], last["version_after"]):
        if removal.install(data_uri, last["version_before"], last["version_after"]):
            log(f"installed the version of {data_uri} without the samples of request {last['request_id']}, which "
                "stopped after recording it")
    problems = dataset_problems(chain_uri, state.removals)
    if problems:
        raise DataError(f"forgotten samples may be back in {data_uri}, so no request is added to the chain: "
                        f"{problems[0]}")


def check_flags(args: argparse.Namespace) -> None:
    """The run's flags, checked before the request is even read."""
    check_method_name(args.method)
    data_spec(args).check()
    ray_resources(args).check()
    check_output_uri(args.out)
    check_mlflow(args.mlflow, args.out)


def request_settings(args: argparse.Namespace) -> dict:
    """The method's settings for a request: REQUEST_SETTINGS under --set."""
    return {**REQUEST_SETTINGS.get(args.method, {}), **method_overrides(args.method, args.set)}


def request_run(args: argparse.Namespace, model_uri: str, request_id: str, output_uri: str) -> RunSpec:
    """The input model evaluated as it is, then the method from it, in one fit; D_u = the val split."""
    return RunSpec(data=data_spec(args), original=model_uri, out=storage.join(absolute(args.out), RUNS_DIR, request_id),
                   runs=(MethodRun("original", {}, label="input", model_uri=model_uri),
                         MethodRun(args.method, request_settings(args), model_out=output_uri)),
                   forget=f"request:{request_id}", seed=args.seed, floor_draws=args.floor_draws, ray=ray_resources(args))


def check_new_request_id(out: str, request_id: str) -> None:
    if not SAFE_NAME.fullmatch(request_id) or ".." in request_id:
        raise ConfigError(f"--request-id {request_id!r} must be letters, digits, '.', '_' or '-': it names files")
    for folder, suffix in ((MODELS_DIR, ".pt"), (REJECTED_DIR, ".pt"), (UNVERIFIED_DIR, ".pt"), (RECEIPTS_DIR, ".html")):
        if storage.exists(location(out, folder, request_id, suffix)):
            raise ConfigError(f"request {request_id!r} already exists under {out} ({folder}/); a request is never "
                              f"redone in place: give a new --request-id")


def trusted_input_model(args, state: ChainState) -> dict:
    """The model file, refused unless its sha256 is the one something trustworthy recorded for it: the chain's
    last accepted request, else --model-sha256, else the `unlearn train` record beside the file."""
    sha = file_sha256(args.model)
    if state.head_model:
        head = state.head_model
        if sha != head["sha256"]:
            raise DataError(f"--model {args.model} (sha256 {sha}) is not the model this chain's last accepted request "
                            f"{head['request_id']} produced ({head['uri']}, sha256 {head['sha256']}): a request starts "
                            f"from the chain's current model, and a changed file is refused")
        return {"uri": args.model, "sha256": sha, "trusted_by": f"the output of request {head['request_id']}"}
    if args.model_sha256:
        if sha != args.model_sha256.strip().lower():
            raise DataError(f"--model {args.model} has sha256 {sha}, not {args.model_sha256} as given by "
                            "--model-sha256: the file was changed or is another model")
        return {"uri": args.model, "sha256": sha, "trusted_by": "--model-sha256"}
    folder = posixpath.dirname(absolute(args.model).rstrip("/"))
    stored = load_records(folder) if storage.list_files(storage.join(folder, RECORDS_DIR), ".json") else []
    records = [r for r in stored if r.kind == "train" and r.checkpoint_uri == absolute(args.model)]
    if not records:
        raise ConfigError(f"no training record vouches for {args.model} (none under {folder}/records): give the "
                          f"sha256 your model registry holds with --model-sha256, or train it with `unlearn train`")
    expected = records[-1]
    if sha != expected.checkpoint_sha256:
        raise DataError(f"--model {args.model} has sha256 {sha}, but its training record {expected.run_id} recorded "
                        f"{expected.checkpoint_sha256}: the file was changed after training; refusing the request")
    return {"uri": args.model, "sha256": sha, "trusted_by": f"training record {expected.run_id}"}


def refuse_repeated(source: str, ids: list[str], state: ChainState, keys) -> None:
    repeated = repeated_ids(ids, state, keys)
    if repeated:
        requests = sorted({request for _, request in repeated})
        shown = ", ".join(sample_id for sample_id, _ in repeated[:20]) + (" ..." if len(repeated) > 20 else "")
        raise ConfigError(f"deletion request {source}: {len(repeated)} id(s) were already forgotten by earlier "
                          f"request(s) {', '.join(requests)} of this chain: {shown}. Nothing was changed")


def refuse_returned(data_uri: str, index, state: ChainState, keys) -> None:
    """No training sample of the dataset may match a tombstone: a forgotten sample back in the data (copied in
    again, or a dataset other than the one the removal was made from) would be trained on by the next job."""
    if not state.tombstones:
        return
    split = index.column("split").to_numpy(zero_copy_only=False)
    train_ids = index.column("sample_id").to_numpy(zero_copy_only=False)[split == "train"].tolist()
    returned = repeated_ids(train_ids, state, keys)
    if returned:
        requests = sorted({request for _, request in returned})
        raise DataError(f"{data_uri} holds {len(returned)} training sample(s) that request(s) {', '.join(requests)} "
                        "of this chain forgot: they came back into the data. Remove them before any request or "
                        "training runs on it")


FOLDER_OF = {ACCEPTED: MODELS_DIR, REJECTED: REJECTED_DIR, NOT_VERIFIABLE: UNVERIFIED_DIR}


def place_output(out: str, request_id: str, run, verdict: str) -> dict | None:
    """The unlearned model's final place: models/ when accepted; moved to rejected/ or unverified/ otherwise."""
    if run.status != "ok":
        return None
    uri = location(out, MODELS_DIR, request_id, ".pt")
    data = storage.read_bytes(uri)
    if sha256_hex(data) != run.checkpoint_sha256:
        raise DataError(f"{uri} changed between being written and being recorded (sha256 differs)")
    if verdict != ACCEPTED:
        kept = location(out, FOLDER_OF[verdict], request_id, ".pt")
        if not storage.create_once(kept, data):
            raise ConfigError(f"{kept} already exists; it was left as it is")
        storage.delete_file(uri)
        uri = kept
    return {"uri": uri, "sha256": run.checkpoint_sha256}


def record_forgotten(out: str, request_id: str, hashes: list[str]) -> dict:
    uri = location(out, FORGOTTEN_DIR, request_id, ".txt")
    data = ("\n".join(sorted(hashes)) + "\n").encode("utf-8")
    if not storage.create_once(uri, data):
        raise ConfigError(f"{uri} already exists; request ids must be new")
    return {"uri": uri, "sha256": sha256_hex(data), "count": len(hashes)}


def _kept(metrics: dict) -> dict:
    return {key: metrics.get(key) for key in METRICS_KEPT}


def _fit_phases(run) -> dict:
    return {key: run.phases.get(key) for key in ("startup", "data", "unlearn", "epoch_reports", "eval")}


def write_receipt(out: str, record_uri: str) -> str:
    """The receipt of the record at `record_uri`, with the chain up to it."""
    entries = read_chain(out)
    position = [entry.uri for entry in entries].index(record_uri)
    history = [entry.record() for entry in entries[:position + 1]]
    record = history[-1]
    uri = location(out, RECEIPTS_DIR, record["request_id"], ".html")
    storage.write_text(uri, render_receipt(record, history, record_uri, entries[position].sha256, out))
    return uri


def report(record: dict, record_uri: str, receipt_uri: str) -> None:
    for check in record["gate"]["checks"]:
        log("  gate " + check_line(check))
    verdict = record["verdict"]
    if verdict == ACCEPTED:
        log(f"request {record['request_id']} ACCEPTED: new model {record['output_model']['uri']}")
        data = record["data"]
        log(f"removed {data['rows_removed']} sample(s) from {data['uri']}: its new version (_meta.json sha256 "
            f"{data['version_after']}) no longer holds them, and the shard files that did are deleted")
    elif verdict == NOT_VERIFIABLE:
        log(f"request {record['request_id']} NOT VERIFIABLE: {record['reason']}. Nothing changed: the model given stays "
            f"current, the samples stay in the data, the unlearned model is kept at {record['output_model']['uri']}. "
            "Ask again with --bank (a U-LiRA shadow bank for this data judges every sample), or include these ids in a "
            "larger request")
    else:
        log(f"request {record['request_id']} REJECTED: {record['reason']}")
    log(f"audit record {record_uri}; receipt {receipt_uri}")
    log(f"chain head sha256 {sha256_hex(storage.read_bytes(record_uri))} (`unlearn audit --expect-head` checks it)")


def check_line(check: dict) -> str:
    def shown(value):
        return "—" if value is None else f"{value:.4g}"

    if check.get("kind") == FORGETTING:
        needed = (f"at least {shown(check['limit'])}" if check["limit"] is not None else
                  f"not counted: cannot reach its share of alpha on {check['samples']} sample(s)")
        return (f"{check['check']:<11} request {shown(check['request_value']):>7} vs never-seen "
                f"{shown(check['reference_value']):>7}  p {shown(check['p_value'])} ({needed}; "
                f"input model p {shown(check['input_p_value'])}) {check['outcome'].upper().replace('_', ' ')}")
    return (f"{check['check']:<11} {shown(check['measured']):>9}  ({check['direction']} {shown(check['limit'])}) "
            f"{'passed' if check['passed'] else 'FAILED'}")


if __name__ == "__main__":
    sys.exit(run_main(main))
