"""`unlearn forget --bank`: a one-sample deletion request judged per sample against a U-LiRA shadow bank, end to end
through Ray on a private copy of digits-hard (an accepted request removes its sample from the data).

The production model and 4 shadows train for 8 epochs (tests/test_ulira_bank.py's recipe: 8 epochs already
memorise their half), as parallel Ray tasks. The requested sample is the one the bank shows the production model
remembers most (its margin furthest above what the shadows that never saw it give): the unchanged model is then
rejected by the per-sample check and a model retrained without the sample accepted, while the class-matched checks
cannot tell on one sample. A bank built for another recipe is refused before any compute.
"""

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from jobs import forget
from jobs.common import run_main
from pipeline.data.converters import prepare
from pipeline.data.shards import read_index, read_meta
from pipeline.deletion.chain import read_chain, schema_errors
from pipeline.deletion.evidence import SampleJob, score_samples
from pipeline.deletion.keys import KEY_ENV
from pipeline.metrics.ulira import fit_gaussians, offline_score
from pipeline.runs.shadows import (DataAccess, Membership, ScoreJob, TrainJob, bank_manifest, in_shadow_half,
                                   open_bank, run_tasks, score_model, shadow_seed, train_model)
from pipeline.runs.train import training_recipe
from tests.conftest import SEED, model_spec
from tests.test_bench import run_job

RECIPE, SHADOWS = {"epochs": 8}, 4


@pytest.fixture(scope="module")
def banked(ray_session, tmp_path_factory):
    """Data, the production model, a full bank, and the training sample the production model remembers most."""
    work = tmp_path_factory.mktemp("gate-bank")
    data = str(work / "digits-hard")
    prepare("digits-hard", data, seed=0)
    meta = read_meta(data)
    index = read_index(data, meta)
    ids = np.asarray(index.column("sample_id").to_pylist(), dtype=object)
    split = np.asarray(index.column("split").to_pylist(), dtype=object)
    recipe, spec = training_recipe(RECIPE), asdict(model_spec())
    bank = open_bank(str(work / "bank"), bank_manifest(meta, recipe, spec, bank_seed=0))
    access = DataAccess(data, meta, spec["image_size"])
    model = str(work / "production.pt")
    jobs = {"production": (train_model, TrainJob(access, spec, recipe, 1, Membership(sample_ids=frozenset(
        ids[split == "train"])), model))}
    jobs.update({i: (train_model, TrainJob(access, spec, recipe, shadow_seed(0, i), bank.membership(i),
                                           bank.checkpoint(i))) for i in range(SHADOWS)})
    assert not [key for key, result in run_tasks(jobs).items() if "failed" in result]
    train = tuple(ids[split == "train"])
    scored = run_tasks({"production": (score_samples, SampleJob(access, model, train)),
                        **{i: (score_model, ScoreJob(access, bank.checkpoint(i), train)) for i in range(SHADOWS)}})
    never_seen = np.stack([~in_shadow_half(train, 0, i) for i in range(SHADOWS)])
    fit = fit_gaussians(np.stack([scored[i]["phi"] for i in range(SHADOWS)]), never_seen)
    exposure = offline_score(scored["production"]["phi"], fit)
    exposed = train[int(np.nanargmax(exposure))]
    (work / "request.txt").write_text(exposed + "\n")
    (work / "other.txt").write_text(next(i for i in train if i != exposed) + "\n")  # for the refusals
    return {"work": work, "data": data, "model": model, "bank": bank.uri, "ids": str(work / "request.txt"),
            "other_ids": str(work / "other.txt")}


def argv_for(banked: dict, name: str, *extra: str, ids: str = "ids") -> list[str]:
    """A request of the exposed sample (`ids`="other_ids": another one) on a chain of its own, the production model
    vouched for by its sha256."""
    sha = hashlib.sha256(Path(banked["model"]).read_bytes()).hexdigest()
    return ["--data", banked["data"], "--model", banked["model"], "--model-sha256", sha, "--ids", banked[ids],
            "--out", str(banked["work"] / f"chain-{name}"), "--request-id", name, "--seed", str(SEED),
            "--max-failures", "0", "--bank", banked["bank"], *extra]


def request(banked: dict, name: str, *extra: str) -> tuple[int, str]:
    return run_job(forget.main, argv_for(banked, name, "--shadows", str(SHADOWS), "--recipe", "epochs=8", *extra))


@pytest.fixture(autouse=True)
def operator_secret(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "gate-bank-test-operator-secret-" + "9" * 32)


def test_a_bank_for_another_recipe_is_refused_before_any_compute(banked, capsys):
    assert run_main(forget.main, argv_for(banked, "refused", "--shadows", str(SHADOWS), ids="other_ids")) == 2
    assert "another recipe (epochs: 8 in the bank, 15 here)" in capsys.readouterr().err
    assert run_main(forget.main, argv_for(banked, "refused", "--shadows", "5", "--recipe", "epochs=8",
                                          ids="other_ids")) == 2
    assert "even number" in capsys.readouterr().err
    assert not (banked["work"] / "chain-refused" / "chain").exists()
    assert json.loads((Path(banked["bank"]) / "manifest.json").read_text())["recipe"]["epochs"] == 8


def test_one_id_is_judged_per_sample_with_a_bank(banked, capsys):
    unchanged_status, unchanged_printed = request(banked, "unchanged", "--method", "original")
    retrained_status, retrained_printed = request(banked, "retrained", "--method", "retrain", "--set",
                                                  "retrain.epochs=8")
    unchanged = read_chain(str(banked["work"] / "chain-unchanged"))[0].record()
    retrained = read_chain(str(banked["work"] / "chain-retrained"))[0].record()
    for record in (unchanged, retrained):
        assert schema_errors(record) == []
        assert record["gate"]["bank"]["shadows"] == SHADOWS and record["gate"]["bank"]["trained_now"] == []
    checks = {record["request_id"]: {c["check"]: c for c in record["gate"]["checks"]} for record in (unchanged,
                                                                                                      retrained)}
    # The bank sees the memory the class-matched checks cannot: one sample against 50 never-seen ones of its class.
    assert unchanged_status == 1 and unchanged["verdict"] == "rejected", unchanged_printed
    assert checks["unchanged"]["per_sample"]["outcome"] == "failed"
    assert checks["unchanged"]["per_sample"]["request_value"] > 3  # standard deviations above never-seen shadows
    assert {checks["unchanged"][name]["outcome"] for name in ("accuracy", "confidence")} == {"no_power"}
    assert retrained_status == 0 and retrained["verdict"] == "accepted", retrained_printed
    per_sample = checks["retrained"]["per_sample"]
    assert per_sample["outcome"] == "passed" and per_sample["has_power"] and per_sample["reference_samples"] >= 400
    assert abs(per_sample["request_value"]) < abs(per_sample["input_request_value"]) / 2
    page = (banked["work"] / "chain-retrained" / "receipts" / "retrained.html").read_text()
    assert "Accepted." in page and "Sample by sample, against 4 reference models" in page
    # The accepted request removed the sample from the data: the bank, built on the data with it, serves no more.
    assert run_main(forget.main, argv_for(banked, "after", "--shadows", str(SHADOWS), "--recipe", "epochs=8",
                                          ids="other_ids")) == 2
    assert "other data (shards whose sha256 differ" in capsys.readouterr().err
