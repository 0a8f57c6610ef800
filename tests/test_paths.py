"""Every local path a user types is made absolute once, at the job's edge (jobs/paths.py; issue 34: a relative
`forget --out` wrote the model under Ray's session folder and the driver stopped after all the compute). Checked
at the argument-resolution level, without Ray, from a folder other than the repository; URIs stay as they are.
The end-to-end check (a deletion request typed with relative paths, audited from another folder) is
tests/test_forget.py's."""

import os

import pytest
import yaml

from jobs import bench, diffusion, evaluate, forget, train, unlearn
from jobs.paths import absolute, absolute_args, absolute_spec


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """A working folder that is not the repository: relative paths typed here must resolve here."""
    folder = tmp_path / "typed-here"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return str(folder)


def test_local_paths_become_absolute_and_uris_stay(elsewhere):
    assert absolute("runs/x") == os.path.join(elsewhere, "runs", "x")
    assert absolute("./a/../b.pt") == os.path.join(elsewhere, "b.pt")
    assert absolute("~/m.pt") == os.path.join(os.path.expanduser("~"), "m.pt")
    for uri in ("s3://bucket/runs/x", "http://mlflow:5000", "file:///tmp/x", "/already/absolute"):
        assert absolute(uri) == uri
    assert absolute(None) is None and absolute("") == ""
    assert absolute_spec("ids:request.txt") == f"ids:{elsewhere}/request.txt"
    assert absolute_spec("imagefolder:photos") == f"imagefolder:{elsewhere}/photos"
    assert absolute_spec("ids:s3://b/r.txt") == "ids:s3://b/r.txt"
    for spec in ("random:0.1", "class:3,7", "limited:5/45", "digits-hard", "ids:", None):
        assert absolute_spec(spec) == spec


def test_absolute_args_handles_lists_and_skips_flags_a_parser_lacks(elsewhere):
    import argparse

    args = absolute_args(argparse.Namespace(runs=["a", "s3://b/c"], out=None, forget="ids:f.txt"),
                         paths=("runs", "out", "missing"), specs=("forget",))
    assert args.runs == [f"{elsewhere}/a", "s3://b/c"] and args.out is None and args.forget == f"ids:{elsewhere}/f.txt"


def test_train_resolves_data_out_weights_and_an_ids_file(elsewhere):
    spec = train.train_spec(train.arguments(["--data", "data", "--out", "runs/original", "--weights", "w/init.pth",
                                             "--retain-only", "--forget", "ids:request.txt"]))
    assert (spec.data.uri, spec.out, spec.weights, spec.forget) == (
        f"{elsewhere}/data", f"{elsewhere}/runs/original", f"{elsewhere}/w/init.pth", f"ids:{elsewhere}/request.txt")


def test_run_resolves_data_original_gold_out_and_an_ids_file(elsewhere):
    spec = unlearn.run_spec(unlearn.arguments(["--data", "s3://bucket/data", "--original", "models/original.pt",
                                               "--gold", "models/gold.pt", "--method", "lotus", "--out", "runs/lotus",
                                               "--forget", "ids:request.txt"]))
    assert spec.data.uri == "s3://bucket/data"  # a URI stays as it is
    assert (spec.original, spec.gold, spec.out, spec.forget) == (
        f"{elsewhere}/models/original.pt", f"{elsewhere}/models/gold.pt", f"{elsewhere}/runs/lotus",
        f"ids:{elsewhere}/request.txt")


def test_eval_resolves_every_model_and_the_out(elsewhere):
    spec = evaluate.eval_spec(evaluate.arguments(["--data", "data", "--model", "m.pt", "--original", "o.pt",
                                                  "--gold", "g.pt", "--out", "runs/eval"]))
    assert [spec.data.uri, spec.model, spec.original, spec.gold, spec.out] == [
        f"{elsewhere}/{name}" for name in ("data", "m.pt", "o.pt", "g.pt", "runs/eval")]


def test_forget_resolves_every_path_it_records(elsewhere):
    args = forget.absolute_paths(forget.parser().parse_args([
        "--data", "data", "--model", "prod/model.pt", "--ids", "request.txt", "--out", "chains/prod",
        "--anchor", "anchors/prod", "--bank", "s3://bucket/bank"]))
    assert [args.data, args.model, args.ids, args.out, args.anchor] == [
        f"{elsewhere}/{name}" for name in ("data", "prod/model.pt", "request.txt", "chains/prod", "anchors/prod")]
    assert args.bank == "s3://bucket/bank"


def test_diffusion_resolves_its_models_and_the_inception_weights(elsewhere):
    args = diffusion.arguments(["--data", "data", "--method", "safemax", "--original", "ddpm.pt", "--classifier",
                                "classifier.pt", "--inception-weights", "inception.pth", "--out", "runs/d"])
    assert [args.data, args.original, args.classifier, args.inception_weights, args.out] == [
        f"{elsewhere}/{name}" for name in ("data", "ddpm.pt", "classifier.pt", "inception.pth", "runs/d")]
    config = diffusion.absolute_bench_paths({"out": "runs/bench", "data": {"uri": "data", "source": "digits"},
                                             "evaluation": {"inception_weights": "inception.pth"}})
    assert config == {"out": f"{elsewhere}/runs/bench", "data": {"uri": f"{elsewhere}/data", "source": "digits"},
                      "evaluation": {"inception_weights": f"{elsewhere}/inception.pth"}}


def test_a_bench_configs_paths_resolve_from_the_folder_the_bench_starts_in(elsewhere):
    with open("bench.yaml", "w") as handle:
        yaml.safe_dump({"out": "runs/bench", "models": "runs/models", "methods": ["lotus"],
                        "data": {"uri": "data", "source": "imagefolder:photos"},
                        "model": {"weights": "weights/init.pth"},
                        "original": {"weights": "weights/vit_b_16.pth"},
                        "forget": "ids:request.txt", "u_lira": {"bank": "s3://bucket/bank"}}, handle)
    config = bench.load_config("bench.yaml")
    assert config["out"] == f"{elsewhere}/runs/bench" and config["models"] == f"{elsewhere}/runs/models"
    assert config["data"] == {**config["data"], "uri": f"{elsewhere}/data", "source": f"imagefolder:{elsewhere}/photos"}
    assert config["model"]["weights"] == f"{elsewhere}/weights/init.pth"
    assert config["original"]["weights"] == f"{elsewhere}/weights/vit_b_16.pth"
    assert config["forget"] == f"ids:{elsewhere}/request.txt" and config["u_lira"]["bank"] == "s3://bucket/bank"
    assert bench.default_run_uri(config).startswith(f"{elsewhere}/runs/bench/")


def test_models_a_bench_made_before_paths_were_absolute_stay_reusable(elsewhere):
    """made.json of an earlier bench recorded `data: runs/data` as typed; from the same folder it is the same model."""
    import json

    os.makedirs("models/original")
    open("models/original/model.pt", "wb").close()
    with open("models/original/made.json", "w") as handle:
        json.dump({"fingerprint": {"data": "runs/data", "model": {"name": "cnn", "weights": "w.pth"}}}, handle)
    wanted = {"data": f"{elsewhere}/runs/data", "model": {"name": "cnn", "weights": f"{elsewhere}/w.pth"}}
    assert bench._reusable(f"{elsewhere}/models/original", wanted) is not None
    with pytest.raises(bench.ConfigError, match="made from other settings"):
        bench._reusable(f"{elsewhere}/models/original", {**wanted, "data": "/another/data"})
