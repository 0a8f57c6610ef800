"""U-LiRA on Ray (pipeline/runs/shadows.py, pipeline/runs/audit_mia.py, `unlearn audit-mia`): a tiny shadow bank on
digits-hard shows the sanity anchors (the original is attackable, a model retrained without D_f is not), the
bank's reuse and resume, a failed shadow left out, and the refusals made before Ray starts.

The bank: K = 4 shadows trained for 8 epochs (the `retrain` recipe otherwise): 8 epochs already memorise their
half (accuracy 0.95-1.00 on it, 0.55-0.68 on the rest of the pool), 15 would double the time. The original and
the gold model train with the same recipe, as the tasks of the bank do.
"""

import json
import shutil
from dataclasses import asdict

import numpy as np
import pytest

from jobs.audit_mia import main as audit_mia_main
from pipeline.data.shards import read_index, read_meta
from pipeline.data.splits import make_splits
from pipeline.errors import ConfigError, UnlearnError
from pipeline.metrics.ulira import OFFLINE, ONLINE
from pipeline.runs.audit_mia import AuditSpec, audit, check_before_compute
from pipeline.runs.shadows import (DataAccess, Membership, TrainJob, bank_manifest, open_bank, run_tasks,
                                   shadow_seed, train_model)
from pipeline.runs.spec import DataSpec
from pipeline.runs.train import training_recipe
from tests.conftest import FORGET_SPEC, SEED, model_spec

RECIPE = {"epochs": 8}
SHADOWS = 4


@pytest.fixture(scope="module")
def tiny_bank(ray_session, digits_hard_uri, tmp_path_factory):
    """The original (all of train), the gold model (D_r) and shadows 0-1 of a 4-shadow bank, trained as parallel Ray
    tasks: a bank half built, which the first audit completes."""
    work = tmp_path_factory.mktemp("ulira")
    meta = read_meta(digits_hard_uri)
    index = read_index(digits_hard_uri, meta)
    splits = make_splits(index, FORGET_SPEC, SEED, meta.num_classes)
    ids = np.asarray(index.column("sample_id").to_pylist(), dtype=object)
    recipe, spec = training_recipe(RECIPE), asdict(model_spec())
    bank = open_bank(str(work / "bank"), bank_manifest(meta, recipe, spec, bank_seed=0))
    access = DataAccess(digits_hard_uri, meta, spec["image_size"])
    jobs = {name: (train_model, TrainJob(access, spec, recipe, 1, Membership(sample_ids=frozenset(ids[mask])),
                                         str(work / f"{name}.pt")))
            for name, mask in (("original", splits.select(index, "train")), ("gold", splits.select(index, "retain")))}
    for shadow in (0, 1):
        jobs[shadow] = (train_model, TrainJob(access, spec, recipe, shadow_seed(0, shadow), bank.membership(shadow),
                                              bank.checkpoint(shadow)))
    results = run_tasks(jobs)
    assert not [key for key, result in results.items() if "failed" in result], results
    return {"work": work, "bank": bank.uri, "original": str(work / "original.pt"), "gold": str(work / "gold.pt"),
            "data": digits_hard_uri}


def audit_flags(bank: dict, out, *extra: str) -> list[str]:
    return ["--data", bank["data"], "--forget", FORGET_SPEC, "--seed", str(SEED), "--recipe", "epochs=8",
            "--shadows", str(SHADOWS), "--fpr", "0.01", "--bank", bank["bank"], "--out", str(out), "--resamples", "500",
            *extra]


def test_sanity_anchors_on_a_tiny_bank(tiny_bank):
    """Method `original` (nothing unlearned): the attack is plain LiRA. The original model must be clearly attackable
    and the model retrained without D_f must not be; the half-built bank is completed, not retrained."""
    out = tiny_bank["work"] / "anchors"
    assert audit_mia_main(audit_flags(tiny_bank, out, "--model", tiny_bank["original"], "--method", "original",
                                      "--original", tiny_bank["original"], "--gold", tiny_bank["gold"])) == 0
    result = json.loads((out / "ulira.json").read_text())
    assert result["variant"] == ONLINE and result["bank"]["trained_now"] == [2, 3]
    assert result["bank"]["shadows_served"] == SHADOWS and not result["bank"]["failed"]
    original, gold = result["anchors"]["original"]["auc"], result["anchors"]["gold"]["auc"]
    assert original["value"] > 0.7 and original["low"] > 0.55, original
    assert gold["low"] <= 0.5 <= gold["high"], gold
    assert result["trusted"] is True and result["anchors"]["original"]["passed"] and result["anchors"]["gold"]["passed"]
    # The target here is the original itself: its online figures are the online ratio reported on the anchor.
    assert result["target"]["auc"] == result["anchors"]["original"]["online_auc"]
    assert result["anchors"]["original"]["statistic"] == "offline" and result["anchors"]["gold"]["statistic"] == ONLINE
    scores = np.load(out / "ulira-scores.npz")
    assert scores["shadow_phi"].shape == (SHADOWS, 160) and (scores["never_seen"].sum(axis=0) == SHADOWS // 2).all()
    # 80 negatives cannot resolve 1 % FPR on one model; the pooled shadow trials can.
    assert result["target"]["tpr_at_fpr"]["0.01"] is None and result["shadow_trials"]["tpr_at_fpr"]["0.01"] is not None
    assert result["counts"]["never_seen"] == {"min": 2, "median": 2.0, "max": 2}  # complementary pairs: K/2 each
    assert len(result["samples"]) == result["positives"] + result["negatives"] == 160
    assert 0 <= result["entropy_mia"]["mia"] <= 1


def test_an_offline_audit_trains_and_unlearns_nothing(tiny_bank):
    """A later offline audit on the same bank only scores: no shadow trains, none unlearns (the online one, which
    pays for the unlearning only, is the bench's test below)."""
    offline = audit(spec(tiny_bank, tiny_bank["work"] / "offline", variant=OFFLINE, method="finetune"))
    assert offline["bank"]["trained_now"] == [] and "shadow_trials" not in offline
    assert offline["seconds"]["unlearn_per_shadow"] == [None] * SHADOWS
    assert offline["variant"] == OFFLINE and offline["anchors"] == {} and offline["trusted"] is None
    assert "sanity anchors not checked: pass --original and --gold" in offline["warnings"][0]


def test_a_failed_shadow_is_left_out_and_counted(tiny_bank, tmp_path):
    """A shadow whose weights are gone fails alone: the audit goes on with the others and says how many served."""
    bank = tmp_path / "bank"
    shutil.copytree(tiny_bank["bank"], bank)
    (bank / "shadows" / "shadow-0003.pt").unlink()
    result = audit(spec(tiny_bank, tmp_path / "out", variant=OFFLINE, bank=str(bank)))
    assert result["bank"]["shadows_served"] == 3 and list(result["bank"]["failed"]) == ["3"]
    assert result["warnings"][0].startswith("1 of 4 shadows failed")


def test_diverging_shadows_end_the_audit_naming_the_failure(tiny_bank):
    with pytest.raises(UnlearnError, match=r"only 0 of 4 shadows served .*diverged"):
        audit(spec(tiny_bank, tiny_bank["work"] / "diverged", method="finetune",
                   settings={"lr": 1e30, "epochs": 1}))


def spec(made: dict, out, **changes) -> AuditSpec:
    """An audit of the tiny bank (`made`: the fixture's paths) with `changes`."""
    fields = {"data": DataSpec(uri=made["data"]), "model": made["original"], "forget": FORGET_SPEC, "method": "original",
              "bank": made["bank"], "out": str(out), "shadows": SHADOWS, "recipe": RECIPE, "seed": SEED,
              "fprs": (0.01,), "resamples": 200}
    return AuditSpec(**{**fields, **changes})


# ---- refused before Ray starts ----------------------------------------------------------------------------------

def test_a_bank_for_another_recipe_or_data_is_refused_naming_what_differs(tiny_bank, tmp_path):
    with pytest.raises(ConfigError, match=r"another recipe \(epochs: 8 in the bank, 9 here\)"):
        check_before_compute(spec(tiny_bank, tmp_path, recipe={"epochs": 9}))
    manifest_uri = tmp_path / "bank" / "manifest.json"
    shutil.copytree(tiny_bank["bank"], tmp_path / "bank")
    manifest = json.loads(manifest_uri.read_text())
    manifest["data"]["shards"][0]["sha256"] = "0" * 64
    manifest_uri.write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match=r"other data \(shards whose sha256 differ or are missing: "):
        check_before_compute(spec(tiny_bank, tmp_path, bank=str(tmp_path / "bank")))


@pytest.mark.parametrize("flags, message", [
    (["--shadows", "8", "--fpr", "0.01", "0.001"], "--shadows 8 is too few for a TPR at 0.001 FPR"),
    (["--shadows", "5"], "even number"),
    (["--method", "nosuch"], "unknown method 'nosuch'"),
    (["--set", "lotus.alpha=2"], "--set names method(s) ['lotus'] but the audited method is 'finetune'"),
    (["--forget", "class:3"], "U-LiRA audits sample unlearning"),
    (["--recipe", "epochz=3"], "has no setting(s) ['epochz']"),
])
def test_bad_input_exits_2_before_ray(flags, message, digits_hard_uri, tmp_path, capsys, monkeypatch):
    """Refused with a message and exit 2 through the `unlearn` command, before Ray would start."""
    import pipeline.train.runner

    from jobs.cli import main as unlearn
    from pipeline.models import build_model, save_checkpoint

    model = tmp_path / "model.pt"
    save_checkpoint(build_model(model_spec()), model_spec(), str(model))
    base = {"--data": digits_hard_uri, "--model": str(model), "--method": "finetune", "--shadows": "4",
            "--fpr": "0.01", "--bank": str(tmp_path / "bank"), "--out": str(tmp_path / "out")}
    argv = ["audit-mia"]
    for flag, value in base.items():
        if flag not in flags:
            argv += [flag, value]

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started for input that should have been refused")

    monkeypatch.setattr(pipeline.train.runner, "init_ray", no_ray)
    assert unlearn([*argv, *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "ulira.json").exists()


# ---- the bench --------------------------------------------------------------------------------------------------

def bench_config(tiny_bank, tmp_path, **u_lira) -> dict:
    import yaml

    from jobs.bench import load_config

    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump({
        "data": {"uri": tiny_bank["data"]}, "methods": ["finetune"], "train": RECIPE, "forget": FORGET_SPEC,
        "seeds": [SEED], "settings": {"finetune": {"epochs": 1}},
        "u_lira": {"shadows": SHADOWS, "bank": tiny_bank["bank"], "fpr": [0.01], "resamples": 200, **u_lira}}))
    return load_config(str(path))


def test_the_bench_audits_each_method_into_its_record(tiny_bank, tmp_path):
    """A bench with a u_lira block: a method's record gets the U-LiRA metrics (the bank reused), the reference rows
    none; a K too small for the config's FPRs is refused before any training."""
    import dataclasses

    from jobs.bench import check_ulira_shadows, ulira_audits
    from tests.test_results import make_record

    config = bench_config(tiny_bank, tmp_path)
    audits = ulira_audits(config, tiny_bank["data"], tiny_bank["original"], tiny_bank["gold"], SEED, str(tmp_path))
    record = dataclasses.replace(make_record("finetune", SEED), checkpoint_uri=tiny_bank["gold"])
    audited = audits("finetune")(record)
    assert 0 <= audited.metrics["ulira_auc"] <= 1 and audited.metrics["ulira_trusted"] in (0.0, 1.0)
    assert audited.metrics["ulira_shadow_tpr_1pct"] is not None and audited.metrics["mia"] == record.metrics["mia"]
    assert audited.config["u_lira"]["bank"]["trained_now"] == []  # a second audit pays for the unlearning only
    assert all(seconds > 0 for seconds in audited.config["u_lira"]["seconds"]["unlearn_per_shadow"])
    assert (tmp_path / "ulira" / f"finetune-s{SEED}" / "ulira.json").exists()
    with pytest.raises(ConfigError, match="u_lira.shadows: --shadows 4 is too few for a TPR at 0.001 FPR"):
        check_ulira_shadows(bench_config(tiny_bank, tmp_path, fpr=[0.01, 0.001]), tiny_bank["data"])
